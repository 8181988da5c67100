# mesbak %postun ($1: 0 = erase, 1 = upgrade). Backups (/var/backups/mes),
# the key (/etc/mesbak/backup.key) and the state are never deleted; rpm keeps
# a changed mesbak.toml as mesbak.toml.rpmsave.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		# Upgrade: run the new agent, once the running job has ended (a
		# restart would cancel it; `mesbakctl wait` follows it to its end).
		if systemctl --quiet is-active mesbak-agent.service 2>/dev/null &&
			mesbakctl --json jobs 2>/dev/null | grep -q '"state": *"running"'; then
			echo "mesbak: waiting for the running job to end before restarting the agent..." >&2
			timeout 12h mesbakctl wait >/dev/null 2>&1 || :
		fi
		systemctl try-restart mesbak-agent.service >/dev/null 2>&1 || :
	fi
fi
exit 0
