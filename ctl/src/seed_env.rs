//! `mesbakctl config import-env PATH`: the seed stack's `.env` read and
//! turned into the `mesbak.toml` lines that say the same, so an operator
//! sees what the agent will use. Secrets (`POSTGRES_PASSWORD`,
//! `BACKUP_ENCRYPTION_KEY`) are never printed: the output says where they go.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cli::DEFAULT_KEY_FILE;
use crate::outln;

/// Where the agent reads the database password from, when one is needed.
const PASSWORD_FILE: &str = "/etc/mesbak/db.password";

/// The `.env` names mesbak maps; anything else is listed as not used.
const KNOWN: &[&str] = &[
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "BACKUP_ENCRYPTION_KEY",
    "SCHEDULE",
    "BACKUP_RETENTION_DAYS",
];

/// Reads `KEY=value` lines as Docker Compose does: `#` comments, blank
/// lines, an optional `export `, values in single or double quotes (double
/// quotes with backslash escapes), and ` #` comments after unquoted values.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            bail!(
                "line {} is not NAME=value; fix the .env file or leave the line out",
                number + 1
            );
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            bail!("line {} has no usable variable name", number + 1);
        }
        vars.insert(name.to_owned(), unquote(value.trim(), number + 1)?);
    }
    Ok(vars)
}

fn unquote(value: &str, line: usize) -> Result<String> {
    let unterminated =
        || anyhow::anyhow!("line {line} has a quoted value without its closing quote");
    if let Some(rest) = value.strip_prefix('\'') {
        let end = rest.find('\'').ok_or_else(unterminated)?;
        return Ok(rest[..end].to_owned());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next().ok_or_else(unterminated)? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    other => out.push(other),
                },
                other => out.push(other),
            }
        }
        return Err(unterminated());
    }
    let value = match value.find(" #") {
        Some(at) => &value[..at],
        None => value,
    };
    Ok(value.trim_end().to_owned())
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The result: the TOML text and which names were used or not.
#[derive(Debug, Serialize)]
pub struct Translation {
    pub toml: String,
    pub used: Vec<String>,
    /// Names mesbak does not use (their values are not shown).
    pub not_used: Vec<String>,
    /// Names whose value is not usable, with why.
    pub problems: Vec<String>,
}

/// The `mesbak.toml` lines for `vars` (read from `origin`).
pub fn translate(vars: &BTreeMap<String, String>, origin: &str) -> Translation {
    let get = |name: &str| vars.get(name).filter(|v| !v.is_empty());
    let mut problems = Vec::new();
    let mut sections: Vec<(&str, Vec<String>)> = Vec::new();

    let mut database = Vec::new();
    if let Some(name) = get("POSTGRES_DB") {
        database.push(format!("name = {}", toml_string(name)));
    }
    if let Some(user) = get("POSTGRES_USER") {
        database.push(format!("user = {}", toml_string(user)));
    }
    if let Some(host) = get("POSTGRES_HOST") {
        database.push(format!(
            "# POSTGRES_HOST is the server's name in the stack's network; mesbak reaches it\n# through its container (container = \"mes-database\" by default) over the Docker API,\n# and uses host/port only with container = \"\".\nhost = {}",
            toml_string(host)
        ));
    }
    if let Some(port) = get("POSTGRES_PORT") {
        match port.parse::<u16>() {
            Ok(port) => database.push(format!("port = {port}")),
            Err(_) => problems.push(format!("POSTGRES_PORT: '{port}' is not a port number")),
        }
    }
    if get("POSTGRES_PASSWORD").is_some() {
        database.push(format!(
            "# POSTGRES_PASSWORD is set (its value is not shown). The agent needs it only when the\n# server asks for one; put it in a root-only file:\n#   install -m 600 /dev/null {PASSWORD_FILE}; editor {PASSWORD_FILE}\npassword_file = {}",
            toml_string(PASSWORD_FILE)
        ));
    }
    sections.push(("database", database));

    let mut encryption = Vec::new();
    if get("BACKUP_ENCRYPTION_KEY").is_some() {
        encryption.push(format!(
            "# BACKUP_ENCRYPTION_KEY is set (its value is not shown). The key goes into the key\n# file, root-owned, mode 0600, and a copy off this machine:\n#   (umask 077; printf '%s' \"$BACKUP_ENCRYPTION_KEY\" > {DEFAULT_KEY_FILE})\n# (or generate a new one with `mesbakctl keygen`).\nkey_file = {}",
            toml_string(DEFAULT_KEY_FILE)
        ));
    }
    sections.push(("encryption", encryption));

    let mut retention = Vec::new();
    if let Some(days) = get("BACKUP_RETENTION_DAYS") {
        match days.parse::<u32>() {
            Ok(days) => retention.push(format!("days = {days}")),
            Err(_) => problems.push(format!(
                "BACKUP_RETENTION_DAYS: '{days}' is not a whole number of days"
            )),
        }
    }
    sections.push(("retention", retention));

    let mut schedule = Vec::new();
    if let Some(spec) = get("SCHEDULE") {
        schedule.push(format!(
            "# A cron line as the old backup container took it, or a systemd calendar\n# expression; `mesbak-agent --check-config` checks it.\nbackup = {}",
            toml_string(spec)
        ));
    }
    sections.push(("schedule", schedule));

    let mut toml = format!(
        "# mesbak.toml lines from {origin} (the seed stack's .env).\n# Paste them into /etc/mesbak/mesbak.toml, then:\n#   mesbak-agent --check-config && systemctl restart mesbak-agent\n"
    );
    for (section, lines) in sections.iter().filter(|(_, lines)| !lines.is_empty()) {
        toml.push_str(&format!("\n[{section}]\n"));
        for line in lines {
            toml.push_str(line);
            toml.push('\n');
        }
    }
    let not_used: Vec<String> = vars
        .keys()
        .filter(|name| !KNOWN.contains(&name.as_str()))
        .cloned()
        .collect();
    if !not_used.is_empty() {
        toml.push_str(&format!(
            "\n# Not used by mesbak: {}\n",
            not_used.join(", ")
        ));
    }
    Translation {
        toml,
        used: KNOWN
            .iter()
            .filter(|name| get(name).is_some())
            .map(|name| (*name).to_owned())
            .collect(),
        not_used,
        problems,
    }
}

pub fn import_env(path: &Path, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; name the stack's .env file (readable to you)",
            path.display()
        )
    })?;
    let vars = parse(&text).with_context(|| format!("cannot read {}", path.display()))?;
    let translation = translate(&vars, &path.display().to_string());
    if json {
        outln!("{}", serde_json::to_string_pretty(&translation)?)?;
    } else {
        outln!("{}", translation.toml.trim_end())?;
    }
    if !translation.problems.is_empty() {
        bail!(
            "{}; fix the .env or set these keys by hand",
            translation.problems.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = r#"
# MES stack
POSTGRES_DB=mes
POSTGRES_USER="admin"
POSTGRES_PASSWORD='pa ss#word'
export BACKUP_ENCRYPTION_KEY=very-secret-key # rotated 2024
SCHEDULE="0 2 * * *"
BACKUP_RETENTION_DAYS=14
IGNITION_EDITION=standard
"#;

    #[test]
    fn env_files_are_read_as_compose_does() {
        let vars = parse(ENV).unwrap();
        assert_eq!(vars["POSTGRES_USER"], "admin");
        assert_eq!(vars["POSTGRES_PASSWORD"], "pa ss#word");
        assert_eq!(vars["BACKUP_ENCRYPTION_KEY"], "very-secret-key");
        assert_eq!(vars["SCHEDULE"], "0 2 * * *");
        assert!(parse("NOEQUALS\n").is_err());
        assert!(parse("A=\"open\n").is_err());
    }

    #[test]
    fn the_toml_says_the_same_without_the_secrets() {
        let out = translate(&parse(ENV).unwrap(), ".env");
        for line in [
            "[database]\nname = \"mes\"\nuser = \"admin\"",
            "password_file = \"/etc/mesbak/db.password\"",
            "[encryption]",
            "key_file = \"/etc/mesbak/backup.key\"",
            "[retention]\ndays = 14",
            "backup = \"0 2 * * *\"",
            "# Not used by mesbak: IGNITION_EDITION",
        ] {
            assert!(
                out.toml.contains(line),
                "{line:?} missing in:\n{}",
                out.toml
            );
        }
        assert!(!out.toml.contains("very-secret-key"), "{}", out.toml);
        assert!(!out.toml.contains("pa ss"), "{}", out.toml);
        assert!(out.problems.is_empty());
        assert!(out.used.contains(&"BACKUP_ENCRYPTION_KEY".to_owned()));
        // What it prints parses as TOML with the same values.
        let parsed: toml::Table = out.toml.parse().unwrap();
        assert_eq!(parsed["retention"]["days"].as_integer(), Some(14));
    }

    #[test]
    fn unusable_values_are_named() {
        let out = translate(&parse("BACKUP_RETENTION_DAYS=thirty\n").unwrap(), ".env");
        assert!(out.problems[0].contains("BACKUP_RETENTION_DAYS"));
        assert!(!out.toml.contains("[retention]"));
    }
}
