//! `mesbak-agent --check-config` tells the truth: it checks what the next
//! backup would trip over (key, Docker, the database server, volume,
//! containers, schedule, backup folder), lists warnings apart from errors,
//! and exits non-zero on any error.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use mesbak_tests::*;

fn check(config: &AgentConfig, env: &[(&str, &str)]) -> (bool, String) {
    let path = config.write();
    let mut cmd = Command::new(binary("mesbak-agent"));
    cmd.arg("--config").arg(&path).arg("--check-config");
    for name in [
        "SCHEDULE",
        "BACKUP_ENCRYPTION_KEY",
        "BACKUP_RETENTION_DAYS",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_HOST",
    ] {
        cmd.env_remove(name);
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out: Output = cmd.stdin(Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

/// The section of the report that starts with `title`.
fn section<'a>(report: &'a str, title: &str) -> &'a str {
    let start = report
        .find(title)
        .unwrap_or_else(|| panic!("no {title} in\n{report}"));
    let rest = &report[start + title.len()..];
    let end = ["Warnings:", "Errors:", "The configuration", "error(s)"]
        .iter()
        .filter_map(|t| rest.find(t))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_working_setup_passes_and_says_what_it_checked() {
    let pg = Postgres::start_with_fixture();
    let volume = Volume::create();
    let mut config = AgentConfig::for_postgres(&pg);
    config.set("ignition.volume", volume.name());
    let (ok, report) = check(&config, &[]);
    assert!(ok, "{report}");
    for expected in [
        "the file parses",
        "encryption key:",
        "Docker answers",
        "answers as 'admin'",
        "database 'mes' exists",
        &format!("ignition.volume '{}' exists", volume.name()),
        "runs at OnCalendar=",
        "is writable",
    ] {
        assert!(report.contains(expected), "{expected} in\n{report}");
    }
    // An empty notify list is worth a warning, not an error.
    assert!(
        section(&report, "Warnings:").contains("notify.urls is empty"),
        "{report}"
    );
    assert!(!report.contains("Errors:"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_would_fail_is_an_error_naming_it() {
    let mut config = AgentConfig::new();
    config
        .set("ignition.stop_containers", vec!["mesbak-test-no-gateway"])
        .set("backup.min_free_bytes", 1i64 << 60);
    std::fs::set_permissions(config.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, report) = check(&config, &[("SCHEDULE", "every day at 2")]);
    assert!(!ok, "{report}");
    let errors = section(&report, "Errors:");
    for expected in [
        "mode 0644",
        "database.container 'mesbak-test-no-db-",
        "ignition.volume 'mesbak-test-ign-",
        "ignition.stop_containers: container 'mesbak-test-no-gateway' does not exist",
        "'every day at 2' is neither a cron line",
        "backup.min_free_bytes",
    ] {
        assert!(
            errors.contains(expected),
            "{expected} in the errors of\n{report}"
        );
    }
    assert!(
        report.contains("error(s): the agent or its next backup would fail"),
        "{report}"
    );

    // A missing key, and the file is no TOML.
    std::fs::remove_file(config.key_file()).unwrap();
    let (ok, report) = check(&config, &[]);
    assert!(!ok);
    assert!(
        section(&report, "Errors:").contains("does not exist"),
        "{report}"
    );
    config.raw("[database]\nport = \"five thousand\"\n");
    let (ok, report) = check(&config, &[]);
    assert!(!ok);
    assert!(
        report.contains("mesbak.toml line 2: key `database.port`:")
            && report.contains("expected a whole number from 0 to 65535")
            && report.lines().count() == 1,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_cannot_read_the_backups_is_an_error() {
    let bus = Bus::start();
    let pg = Postgres::start_with_fixture();
    let config = AgentConfig::for_postgres(&pg).with("ignition.volume", "");
    let agent = Agent::spawn(&bus, &config).await;
    let job = agent.proxy().await.backup("database").await.unwrap();
    let (ok, message) = wait_job(agent.connection(), &job).await;
    assert!(ok, "{message}");
    let (ok, report) = check(&config, &[]);
    assert!(ok, "{report}");
    assert!(
        report.contains("the key opens the newest database backup"),
        "{report}"
    );
    write_private(&config.key_file(), b"a brand new key\n").unwrap();
    let (ok, report) = check(&config, &[]);
    assert!(!ok, "{report}");
    let errors = section(&report, "Errors:");
    assert!(
        errors.contains("put back the key they were made with"),
        "{report}"
    );
}
