# mesbak %postun ($1: 0 = erase, 1 = upgrade). Backups (/var/backups/mes),
# the key (/etc/mesbak/backup.key) and the state are never deleted; rpm keeps
# a changed mesbak.toml as mesbak.toml.rpmsave.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		# Upgrade: run the new agent.
		systemctl try-restart mesbak-agent.service >/dev/null 2>&1 || :
	fi
fi
exit 0
