//! `[[offsite]]` targets as configured: where (`url`), how to reach it
//! (`endpoint`, `region`, `allow_http`), with what (`credentials_file` or
//! the environment), and the path target's `require_mount`; plus
//! `bandwidth_limit`. Checked when the configuration loads so a typo is a
//! clear error naming the key; credentials are read only when a target is
//! used, so a broken credentials file never stops local backups.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::config::Environment;

/// One `[[offsite]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Used by `--from NAME`, metrics and messages.
    pub name: String,
    /// `s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` or an absolute path.
    pub url: String,
    /// An S3-compatible store or the Azure emulator; "" = the cloud's own.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Plain http to `endpoint`, only on a trusted network.
    #[serde(default)]
    pub allow_http: bool,
    /// `KEY=value` lines, root-owned 0600; "" = the same names from the environment.
    #[serde(default)]
    pub credentials_file: PathBuf,
    /// Path targets: refuse to write unless the path is on its own mount.
    #[serde(default)]
    pub require_mount: bool,
    /// Average bytes per second; none = as fast as the link goes.
    #[serde(default, deserialize_with = "deserialize_bandwidth")]
    pub bandwidth_limit: Option<u64>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Where a target keeps its copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
    Path(PathBuf),
}

impl Location {
    pub fn kind(&self) -> &'static str {
        match self {
            Location::S3 { .. } => "s3",
            Location::Azure { .. } => "azure",
            Location::Path(_) => "path",
        }
    }
}

impl TargetConfig {
    /// The parsed `url` (valid once the configuration was validated).
    pub fn location(&self) -> Result<Location, String> {
        parse_url(&self.url)
    }
}

/// Checks every target; returns the failing key (relative to
/// `offsite[i]`) and the reason.
pub fn validate(targets: &[TargetConfig]) -> Result<(), (String, String)> {
    let mut seen = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let key = |field: &str| format!("offsite[{index}].{field}");
        if !is_target_name(&target.name) {
            return Err((
                key("name"),
                format!(
                    "'{}' is not a usable target name; use letters, digits, '-' and '_' (at most 64)",
                    target.name
                ),
            ));
        }
        if seen.contains(&target.name.as_str()) {
            return Err((
                key("name"),
                format!("two targets are named '{}'; names must differ", target.name),
            ));
        }
        seen.push(target.name.as_str());
        let location = parse_url(&target.url).map_err(|message| (key("url"), message))?;
        if !target.endpoint.is_empty() {
            check_endpoint(&target.endpoint, target.allow_http)
                .map_err(|message| (key("endpoint"), message))?;
        }
        if matches!(location, Location::Path(_)) && !target.endpoint.is_empty() {
            return Err((
                key("endpoint"),
                "a path target has no endpoint; remove the key".into(),
            ));
        }
        if target.require_mount && !matches!(location, Location::Path(_)) {
            return Err((
                key("require_mount"),
                "applies to path targets only; remove it for s3:// and az:// targets".into(),
            ));
        }
        if !target.credentials_file.as_os_str().is_empty() && !target.credentials_file.is_absolute()
        {
            return Err((
                key("credentials_file"),
                format!(
                    "'{}' must be an absolute path",
                    target.credentials_file.display()
                ),
            ));
        }
        if target.region.is_empty() {
            return Err((key("region"), "must not be empty".into()));
        }
        if target.bandwidth_limit == Some(0) {
            return Err((
                key("bandwidth_limit"),
                "0 would never copy anything; leave the key out for no limit".into(),
            ));
        }
    }
    Ok(())
}

fn is_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// `s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` or an absolute path.
pub fn parse_url(url: &str) -> Result<Location, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest);
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
        if !valid {
            return Err(format!(
                "'{bucket}' is not an S3 bucket name (3-63 lower-case letters, digits, '.' and '-'): use s3://BUCKET/PREFIX"
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_owned(),
            prefix: check_prefix(prefix)?,
        });
    }
    if let Some(rest) = url.strip_prefix("az://") {
        let (container, prefix) = split_bucket(rest);
        let valid = (3..=63).contains(&container.len())
            && container
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!(
                "'{container}' is not an Azure container name (3-63 lower-case letters, digits and '-'): use az://CONTAINER/PREFIX"
            ));
        }
        return Ok(Location::Azure {
            container: container.to_owned(),
            prefix: check_prefix(prefix)?,
        });
    }
    let path = Path::new(url);
    if path.is_absolute() {
        let plain = path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain || path.parent().is_none() {
            return Err(format!(
                "'{url}' is not a usable folder: give the absolute path of the folder on the mounted share, without '..'"
            ));
        }
        return Ok(Location::Path(path.to_owned()));
    }
    Err(format!(
        "'{url}' is not an off-site location; use s3://BUCKET/PREFIX, az://CONTAINER/PREFIX or the absolute path of a mounted share"
    ))
}

fn split_bucket(rest: &str) -> (&str, &str) {
    match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix),
        None => (rest, ""),
    }
}

/// A prefix of plain segments (no `.`/`..`, no empty segment), without
/// leading or trailing slash.
fn check_prefix(prefix: &str) -> Result<String, String> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    for segment in prefix.split('/') {
        let plain = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(format!(
                "the prefix '{prefix}' has the segment '{segment}'; use letters, digits, '-', '_' and '.' between slashes"
            ));
        }
    }
    Ok(prefix.to_owned())
}

fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), String> {
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
        format!(
            "'{endpoint}' is not a URL; use https://HOST[:PORT] (http:// with allow_http = true)"
        )
    })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("'{endpoint}' has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(format!(
            "'{endpoint}' is plain http: credentials and data would cross the network unencrypted; use https, or set allow_http = true for a trusted network"
        )),
        other => Err(format!(
            "'{endpoint}' uses '{other}://'; use https:// (or http:// with allow_http = true)"
        )),
    }
}

/// `bandwidth_limit`: a number of bytes per second, or text such as
/// `"4 MiB/s"`, `"500KB"`, `"20 Mbit/s"`.
fn deserialize_bandwidth<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(de)? {
        Raw::Number(n) => Ok(Some(n)),
        Raw::Text(text) => parse_bandwidth(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let unit_less = compact.strip_suffix("/s").unwrap_or(&compact);
    let split = unit_less
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unit_less.len());
    let (number, unit) = unit_less.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("'{text}' is not a rate; write it like \"4 MiB/s\", \"500 KB/s\" or \"20 Mbit/s\"")
    })?;
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "KB" | "kB" => 1e3,
        "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        other => {
            return Err(format!(
                "'{text}' has the unit '{other}'; use B, KB, KiB, MB, MiB, GB, GiB (per second) or kbit, Mbit, Gbit"
            ));
        }
    };
    let bytes = (value * factor).round();
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("'{text}' is not a usable rate"));
    }
    Ok(bytes as u64)
}

/// The names a credentials file (or the environment) may give.
pub const CREDENTIAL_NAMES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
];

/// Secrets for one target. Debug shows which names are set, never a value.
#[derive(Clone, Default)]
pub struct Credentials {
    values: BTreeMap<&'static str, Zeroizing<String>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values.keys().map(|name| (name, "<redacted>")))
            .finish()
    }
}

impl Credentials {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|value| value.as_str())
    }

    /// The values `needed` for a kind of store, or which are missing.
    pub fn require(&self, needed: &[&str], origin: &str) -> Result<(), String> {
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|name| self.get(name).is_none_or(str::is_empty))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} {} not set in {origin}; add {} (the agent never falls back to instance or managed identities)",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                if missing.len() == 1 { "it" } else { "them" }
            ))
        }
    }

    /// From `target.credentials_file`, else the environment. The error
    /// names the file or variable, never a value.
    pub fn load(
        target: &TargetConfig,
        env: &dyn Environment,
    ) -> Result<(Credentials, String), String> {
        if target.credentials_file.as_os_str().is_empty() {
            let mut values = BTreeMap::new();
            for name in CREDENTIAL_NAMES {
                if let Some(value) = env.var(name) {
                    values.insert(*name, Zeroizing::new(value));
                }
            }
            return Ok((
                Credentials { values },
                "the agent's environment (credentials_file is not set)".into(),
            ));
        }
        let path = &target.credentials_file;
        let text = read_private_file(path)?;
        let mut values = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!(
                    "line {} of {} is not KEY=value",
                    number + 1,
                    path.display()
                ));
            };
            let name = name.trim();
            let Some(known) = CREDENTIAL_NAMES.iter().find(|known| **known == name) else {
                return Err(format!(
                    "line {} of {} sets '{name}', which mesbak does not use; known names: {}",
                    number + 1,
                    path.display(),
                    CREDENTIAL_NAMES.join(", ")
                ));
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            values.insert(*known, Zeroizing::new(value.to_owned()));
        }
        Ok((Credentials { values }, path.display().to_string()))
    }
}

/// Reads a root-owned file no one else may read, never through a symlink.
fn read_private_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => format!(
                "credentials file {} is a symbolic link; point credentials_file at the real file",
                path.display()
            ),
            _ => format!("cannot read credentials file {}: {err}", path.display()),
        })?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot read credentials file {}: {err}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "credentials file {} is not a regular file",
            path.display()
        ));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "credentials file {} is owned by uid {}; it must be root's: run `chown root:root {}`",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "credentials file {} has mode {:04o}; others must not read it: run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    if meta.len() > 64 * 1024 {
        return Err(format!(
            "credentials file {} is larger than 64 KiB, so it is not a credentials file",
            path.display()
        ));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|err| format!("cannot read credentials file {}: {err}", path.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn target(url: &str) -> TargetConfig {
        TargetConfig {
            name: "t".into(),
            url: url.into(),
            endpoint: String::new(),
            region: default_region(),
            allow_http: false,
            credentials_file: PathBuf::new(),
            require_mount: false,
            bandwidth_limit: None,
        }
    }

    #[test]
    fn urls_parse_into_locations() {
        assert_eq!(
            parse_url("s3://mes-backups/plant-7/").unwrap(),
            Location::S3 {
                bucket: "mes-backups".into(),
                prefix: "plant-7".into()
            }
        );
        assert_eq!(
            parse_url("az://backups").unwrap(),
            Location::Azure {
                container: "backups".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_url("/mnt/nas/mes").unwrap(),
            Location::Path("/mnt/nas/mes".into())
        );
        for bad in [
            "s3://Bad_Bucket/x",
            "s3://b/x",
            "s3://bucket/a/../b",
            "az://under_score",
            "relative/path",
            "/",
            "/mnt/../etc",
            "gs://bucket",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_are_checked_key_by_key() {
        let mut http = target("s3://bucket/p");
        http.endpoint = "http://127.0.0.1:9000".into();
        let (key, message) = validate(&[http.clone()]).unwrap_err();
        assert_eq!(key, "offsite[0].endpoint");
        assert!(message.contains("allow_http"), "{message}");
        http.allow_http = true;
        validate(&[http.clone()]).unwrap();

        let (key, _) = validate(&[http.clone(), http.clone()]).unwrap_err();
        assert_eq!(key, "offsite[1].name");

        let mut mount = target("s3://bucket/p");
        mount.require_mount = true;
        assert_eq!(
            validate(&[mount]).unwrap_err().0,
            "offsite[0].require_mount"
        );

        let mut name = target("/srv/x");
        name.name = "a b".into();
        assert_eq!(validate(&[name]).unwrap_err().0, "offsite[0].name");
    }

    #[test]
    fn bandwidth_takes_units() {
        assert_eq!(parse_bandwidth("4 MiB/s").unwrap(), 4 << 20);
        assert_eq!(parse_bandwidth("500KB").unwrap(), 500_000);
        assert_eq!(parse_bandwidth("20 Mbit/s").unwrap(), 2_500_000);
        assert_eq!(parse_bandwidth("1.5M").unwrap(), 1_572_864);
        assert!(parse_bandwidth("fast").is_err());
        assert!(parse_bandwidth("5 parsecs").is_err());
    }

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, name: &str) -> Option<String> {
            (name == "AWS_ACCESS_KEY_ID").then(|| "from-env".to_owned())
        }
    }

    #[test]
    fn credentials_come_from_a_private_file_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "# s3\nAWS_ACCESS_KEY_ID=abc\nexport AWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = target("s3://bucket/p");
        config.credentials_file = path.clone();
        let err = Credentials::load(&config, &NoEnv).unwrap_err();
        assert!(
            err.contains("chmod 600") && !err.contains("s3cr3t"),
            "{err}"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (creds, origin) = Credentials::load(&config, &NoEnv).unwrap();
        assert_eq!(creds.get("AWS_SECRET_ACCESS_KEY"), Some("s3cr3t"));
        assert_eq!(origin, path.display().to_string());
        let debug = format!("{creds:?}");
        assert!(
            !debug.contains("s3cr3t") && debug.contains("redacted"),
            "{debug}"
        );
        assert!(
            creds
                .require(&["AZURE_STORAGE_ACCOUNT_NAME"], &origin)
                .unwrap_err()
                .contains("AZURE_STORAGE_ACCOUNT_NAME")
        );

        std::fs::write(&path, "AWS_SECRET=hunter2\n").unwrap();
        let err = Credentials::load(&config, &NoEnv).unwrap_err();
        assert!(
            err.contains("AWS_SECRET") && !err.contains("hunter2"),
            "{err}"
        );

        let (env_creds, origin) = Credentials::load(&target("s3://bucket/p"), &NoEnv).unwrap();
        assert_eq!(env_creds.get("AWS_ACCESS_KEY_ID"), Some("from-env"));
        assert!(origin.contains("environment"));
    }
}
