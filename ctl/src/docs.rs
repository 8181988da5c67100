//! Man pages and shell completions, generated from the clap definition so
//! they never drift from the real command line. The man page gets the
//! sections clap does not know (FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES);
//! completions leave hidden commands out and complete backup ids (asking
//! the agent with `mesbakctl list --ids`) where a backup is expected.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Subcommands whose first argument is a backup id (or a file).
const TAKES_BACKUP: &[&str] = &["verify", "restore", "test-restore"];

pub fn generate(dir: &Path) -> Result<()> {
    let man_dir = dir.join("man");
    let completion_dir = dir.join("completions");
    for folder in [&man_dir, &completion_dir] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man_dir)
        .with_context(|| format!("cannot write man pages to {}", man_dir.display()))?;
    let page = man_dir.join("mesbakctl.1");
    let mut text = std::fs::read_to_string(&page)
        .with_context(|| format!("cannot read {}", page.display()))?;
    text.push_str(MAN_EXTRA);
    std::fs::write(&page, text).with_context(|| format!("cannot write {}", page.display()))?;

    let mut visible = visible_only(&command);
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut visible, "mesbakctl", &completion_dir)
            .with_context(|| format!("cannot write {shell} completions"))?;
        let script = std::fs::read_to_string(&path)?;
        let script = match shell {
            Shell::Bash => bash_ids(script),
            Shell::Zsh => zsh_ids(script),
            _ => fish_ids(script),
        };
        std::fs::write(&path, script)?;
    }
    Ok(())
}

/// The command without its hidden subcommands (clap_complete lists them).
fn visible_only(command: &clap::Command) -> clap::Command {
    let mut visible = clap::Command::new("mesbakctl")
        .about(command.get_about().cloned().unwrap_or_default())
        .version(env!("CARGO_PKG_VERSION"));
    for arg in command.get_arguments() {
        visible = visible.arg(arg.clone());
    }
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        visible = visible.subcommand(sub.clone());
    }
    visible
}

fn bash_ids(mut script: String) -> String {
    script.push_str(&format!(
        r#"
# Backup ids, as the agent lists them, where a backup is expected.
_mesbakctl_with_ids() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" sub="" word
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) sub="$word"; break ;; esac
    done
    case "$sub" in
        {subs})
            if [[ "$cur" != -* ]]; then
                COMPREPLY=( $(compgen -W "$(mesbakctl list --ids 2>/dev/null)" -- "$cur") $(compgen -f -- "$cur") )
                return 0
            fi
            ;;
    esac
    _mesbakctl "$@"
}}
complete -F _mesbakctl_with_ids -o nosort -o bashdefault -o default mesbakctl
"#,
        subs = TAKES_BACKUP.join("|")
    ));
    script
}

fn zsh_ids(script: String) -> String {
    let helper = r#"(( $+functions[_mesbakctl_backup_ids] )) ||
_mesbakctl_backup_ids() {
    local -a ids
    ids=(${(f)"$(mesbakctl list --ids 2>/dev/null)"})
    _alternative 'ids:backup id:compadd -a ids' 'files:backup file:_files'
}

"#;
    let script = script
        .lines()
        .map(|line| {
            if line.contains("backup -- ") && line.ends_with(":_default' \\") {
                line.replace(":_default' \\", ":_mesbakctl_backup_ids' \\")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    match script.find("if [ \"$funcstack[1]\" = \"_mesbakctl\" ]") {
        Some(at) => format!("{}{helper}{}", &script[..at], &script[at..]),
        None => script + helper,
    }
}

fn fish_ids(mut script: String) -> String {
    script.push_str("# Backup ids, as the agent lists them, where a backup is expected.\n");
    for sub in TAKES_BACKUP {
        script.push_str(&format!(
            "complete -c mesbakctl -n \"__fish_mesbakctl_using_subcommand {sub}\" -a \"(mesbakctl list --ids 2>/dev/null)\" -d 'backup'\n"
        ));
    }
    script
}

/// The sections of mesbakctl(1) that clap does not write.
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success (for \fBstatus\fR: the agent is healthy).
.TP
.B 1
The operation failed, was refused or not confirmed, or (\fBstatus\fR) the agent is degraded or unhealthy. With \fB\-\-json\fR the error is also printed on standard output as \fB{"error": {"name": \fR\fINAME\fR\fB, "message": \fR\fITEXT\fR\fB}}\fR; \fINAME\fR is the agent's error (\fBBusy\fR, \fBNotAuthorized\fR, \fBNotFound\fR, \fBNoSpace\fR, \fBIntegrity\fR, \fBDocker\fR, \fBDatabase\fR, \fBConfig\fR, \fBCancelled\fR, \fBFailed\fR) or the client's (\fBAgentNotRunning\fR, \fBAccessDenied\fR, \fBBusUnavailable\fR, \fBKeyMissing\fR, \fBRefused\fR).
.TP
.B 2
Usage error (an unknown command or option).
.TP
.B 130
Ctrl\-C left a job running in the agent (follow it with \fBmesbakctl wait\fR).
.TP
.B 141
Standard output was closed (as for a program ended by SIGPIPE), e.g. \fBmesbakctl list | head \-1\fR.
.SH ENVIRONMENT
.TP
.B DBUS_SYSTEM_BUS_ADDRESS
The D\-Bus system bus to find the agent on (default: the system bus).
.TP
.B BACKUP_ENCRYPTION_KEY
The key for \fBdecrypt\fR when no \fB\-\-key\-file\fR is given (the seed stack's name).
.SH FILES
.TP
.I /etc/mesbak/mesbak.toml
The agent's configuration (see \fBmesbak\-agent\fR(8)).
.TP
.I /etc/mesbak/backup.key
The encryption key; \fBdecrypt\fR's default key file. Keep a copy away from the server: no backup can be read without the key it was made with.
.TP
.I /var/backups/mes/database/, /var/backups/mes/ignition/
The backups (\fBmes_YYYY\-MM\-DD_HHMMSS.sql.gz.enc\fR, \fBignition_YYYY\-MM\-DD_HHMMSS.tar.gz.enc\fR; \fB.sql.zst.enc\fR, \fB.tar.zst.enc\fR with \fBbackup.compression = "zstd"\fR), each with its metadata (\fB.json\fR).
.TP
.I /usr/share/mesbak/prometheus/mesbak.rules.yml, /usr/share/mesbak/grafana/mesbak\-dashboard.json
Alert rules and a dashboard for the agent's metrics.
.TP
.I /usr/share/doc/mesbak/FORMAT.md
The file format, to decrypt without mesbak.
.SH EXAMPLES
.TP
.B mesbakctl backup
Back up the database and the Ignition volume as one restore point.
.TP
.B mesbakctl list; mesbakctl status
What backups there are; whether they are fresh, tested, and what runs now.
.TP
.B mesbakctl restore mes_2026\-11\-24_000312.sql.gz.enc
Restore (as root, after a prompt that names what changes); the previous database is kept: \fBmesbakctl restore \-\-rollback\fR puts it back once, \fBmesbakctl restore \-\-drop\-previous NAME\fR deletes it.
.TP
.B mesbakctl jobs; mesbakctl wait; mesbakctl cancel 7
Follow the running job again, or cancel job 7 (it puts back what it changed).
.TP
.B mesbakctl status \-\-json | jq \-r .status
Health for scripts; the exit status is 0 only when healthy.
.TP
.B mesbakctl decrypt FILE \-\-key\-file backup.key | gunzip | psql \-v ON_ERROR_STOP=1 \-d mes
Recover without the agent, on any machine with the file and its key.
.SH "SEE ALSO"
\fBmesbak\-agent\fR(8), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;
