//! Man pages and completions as packaging generates them: the sections a
//! man page needs (FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES), no hidden
//! command in the completions, and backup ids completed by a real bash
//! from a running agent.

use std::path::Path;
use std::process::Command;

use mesbak_tests::*;

fn generate(dir: &Path) {
    let out = Command::new(binary("mesbakctl"))
        .arg("generate-docs")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary("mesbak-agent"))
        .arg("--generate-man")
        .arg(dir.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A man page as `man` shows it (man-db and groff render it; warnings fail).
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("GROFF_NO_SGR", "1")
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run man (Debian package man-db; dev/test installs it): {err}")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{}: {stderr}",
        page.display()
    );
    // Without a terminal man overstrikes bold and underline: "X\bX".
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

#[test]
fn man_pages_have_files_environment_exit_status_and_examples() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    for (page, must) in [
        (
            "mesbakctl.1",
            &[
                "141",
                "--json",
                "/etc/mesbak/backup.key",
                "mesbakctl restore --rollback",
                "DBUS_SYSTEM_BUS_ADDRESS",
            ][..],
        ),
        (
            "mesbak-agent.8",
            &[
                "--check-config",
                "SCHEDULE",
                "/var/lib/mesbak/",
                "--notify-failure",
                "SSL_CERT_FILE",
            ][..],
        ),
    ] {
        let text = render(&dir.path().join("man").join(page));
        for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"] {
            assert!(
                text.lines().any(|line| line.trim() == section),
                "{page} has no {section} section:\n{text}"
            );
        }
        for word in must {
            assert!(
                text.contains(word),
                "{page} does not mention {word}:\n{text}"
            );
        }
    }
    assert!(!dir.path().join("man/mesbakctl-generate-docs.1").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_leave_out_the_docs_command_and_complete_backup_ids() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let completions = dir.path().join("completions");
    for file in ["mesbakctl.bash", "_mesbakctl", "mesbakctl.fish"] {
        let text = std::fs::read_to_string(completions.join(file)).unwrap();
        assert!(
            !text.contains("generate-docs") && !text.contains("generate__subcmd"),
            "{file}"
        );
        assert!(
            text.contains("list --ids"),
            "{file} does not complete backup ids"
        );
    }
    let zsh = std::fs::read_to_string(completions.join("_mesbakctl")).unwrap();
    assert_eq!(
        zsh.matches(":_mesbakctl_backup_ids' \\").count(),
        3,
        "verify, restore and test-restore complete ids in zsh"
    );

    // A real bash, a running agent with one backup.
    let config = AgentConfig::new().with("ignition.volume", "");
    let id = "mes_2026-11-24_000312.sql.gz.enc";
    let db_dir = config.backup_dir().join("database");
    std::fs::create_dir_all(&db_dir).unwrap();
    write_private(&db_dir.join(id), b"x").unwrap();
    let bus = Bus::start();
    let _agent = Agent::spawn(&bus, &config).await;
    let bin_dir = binary("mesbakctl").parent().unwrap().to_owned();
    let complete = |words: &str, cword: usize| {
        let script = format!(
            "source '{}'\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\n_mesbakctl_with_ids mesbakctl \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            completions.join("mesbakctl.bash").display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(config.dir())
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let words = complete("mesbakctl verify ''", 2);
    assert!(words.lines().any(|w| w == id), "{words}");
    let words = complete("mesbakctl restore mes_2026", 2);
    assert!(words.lines().any(|w| w == id), "{words}");
    let words = complete("mesbakctl ''", 1);
    assert!(words.lines().any(|w| w == "verify"), "{words}");
    assert!(!words.contains("generate-docs"), "{words}");
}
