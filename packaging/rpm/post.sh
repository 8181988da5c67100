# mesbak %post ($1: 1 = install, 2 = upgrade). Works without a running
# systemd (containers, image builds): then units are only enabled.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers mesbak.conf || :
fi
getent group mesbak >/dev/null || groupadd --system mesbak || :
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create mesbak.conf || :
fi
for dir in /var/backups/mes /var/backups/mes/database /var/backups/mes/ignition /var/lib/mesbak; do
	install -d -m 0700 -o root -g root "$dir" || :
done
install -d -m 0755 /etc/systemd/system/mesbak-backup.timer.d \
	/etc/systemd/system/mesbak-test-restore.timer.d \
	/etc/systemd/system/mesbak-pitr-base-backup.timer.d || :
if command -v systemctl >/dev/null 2>&1; then
	if [ "$1" -eq 1 ]; then
		# First install: enable (works offline too).
		systemctl --no-reload enable mesbak-agent.service mesbak-backup.timer \
			mesbak-test-restore.timer mesbak-pitr-base-backup.timer >/dev/null 2>&1 || :
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
		if [ "$1" -eq 1 ]; then
			systemctl start mesbak-agent.service mesbak-backup.timer \
				mesbak-test-restore.timer mesbak-pitr-base-backup.timer >/dev/null 2>&1 || :
		fi
	fi
fi
if [ ! -e /etc/mesbak/backup.key ]; then
	echo "mesbak: no encryption key yet; create one with 'mesbakctl keygen'" \
		"(and keep a copy off this machine), or set BACKUP_ENCRYPTION_KEY." >&2
fi
exit 0
