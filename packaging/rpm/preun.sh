# mesbak %preun ($1: 0 = erase, 1 = upgrade): stop and disable on erase only.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
	systemctl --no-reload disable mesbak-agent.service mesbak-backup.timer \
		mesbak-test-restore.timer mesbak-pitr-base-backup.timer >/dev/null 2>&1 || :
	if [ -d /run/systemd/system ]; then
		systemctl stop mesbak-backup.timer mesbak-test-restore.timer \
			mesbak-pitr-base-backup.timer mesbak-backup.service \
			mesbak-test-restore.service mesbak-pitr-base-backup.service \
			mesbak-agent.service >/dev/null 2>&1 || :
	fi
fi
exit 0
