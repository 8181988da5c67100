//! Off-site stores on loopback, one set per test: [`S3Server`] (s3s-fs, an
//! S3-compatible server that checks multipart uploads), [`Azurite`]
//! (Microsoft's Azure Blob emulator, always with `--disableTelemetry`) and
//! [`rclone`] as an independent client that looks at what the agent wrote.
//! `dev/test` installs both servers under `/var/lib/mesbak-dev/tools`
//! (`MESBAK_TOOLS` overrides); a missing one is a panic that says so.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::agent::{AgentConfig, write_private};
use crate::util::{free_port, random_hex, run, tail_file};

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn tools_dir() -> PathBuf {
    std::env::var_os("MESBAK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/mesbak-dev/tools"))
}

fn tool(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} is not installed at {}; run dev/test (it installs it with ensure_offsite_servers in dev/lib.sh)",
        path.display()
    );
    path
}

/// Waits until something listens on `port` (or the child died).
fn wait_listening(child: &mut Child, port: u16, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {port}:\n{}",
                tail_file(log, 40)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within 30 s:\n{}",
            tail_file(log, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open server log");
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {cmd:?}: {err}"))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// An s3s-fs server on a free loopback port, its data in a temporary folder
/// (buckets are folders there, objects files).
pub struct S3Server {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-s3-")
            .tempdir()
            .expect("temporary folder for s3s-fs");
        std::fs::create_dir(dir.path().join("data")).expect("s3s-fs data folder");
        let mut server = S3Server {
            child: None,
            dir,
            port: free_port(),
            access_key: format!("AK{}", random_hex(8)),
            secret_key: random_hex(20),
        };
        server.start_again();
        server
    }

    /// Starts the server (again) on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already runs");
        let binary = tool(tools_dir().join("bin/s3s-fs"), "s3s-fs");
        let log = self.log_path();
        let mut child = spawn_logged(
            Command::new(binary)
                .args(["--host", "127.0.0.1", "--port"])
                .arg(self.port.to_string())
                .args([
                    "--access-key",
                    &self.access_key,
                    "--secret-key",
                    &self.secret_key,
                ])
                .arg(self.dir.path().join("data")),
            &log,
        );
        wait_listening(&mut child, self.port, &log, "s3s-fs");
        self.child = Some(child);
    }

    /// Kills the server (the store goes down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }

    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.dir.path().join("data").join(bucket)).expect("create bucket");
    }

    /// Where s3s-fs keeps the object `key` of `bucket`.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join("data").join(bucket).join(key)
    }

    /// Every file under `bucket` (relative paths), including s3s-fs's own
    /// bookkeeping of unfinished uploads if any.
    pub fn files(&self, bucket: &str) -> Vec<String> {
        let root = self.dir.path().join("data").join(bucket);
        let mut found = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(
                        path.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        found.sort();
        found
    }

    /// A 0600 credentials file for the agent in `dir`.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        credentials_file(
            dir,
            "s3",
            &format!(
                "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\n",
                self.access_key, self.secret_key
            ),
        )
    }

    /// An `[[offsite]]` table for this server.
    pub fn target(
        &self,
        name: &str,
        bucket: &str,
        prefix: &str,
        credentials: &Path,
    ) -> toml::Table {
        target_table(
            name,
            &format!("s3://{bucket}/{prefix}"),
            &self.endpoint(),
            credentials,
        )
    }

    /// rclone's remote section for this server.
    pub fn rclone_section(&self, remote: &str) -> String {
        format!(
            "[{remote}]\ntype = s3\nprovider = Other\nenv_auth = false\naccess_key_id = {}\nsecret_access_key = {}\nendpoint = {}\nregion = us-east-1\n\n",
            self.access_key,
            self.secret_key,
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- s3s-fs log ---\n{}\n---",
                tail_file(&self.log_path(), 30)
            );
        }
        self.stop();
    }
}

/// Azurite's Blob service on a free loopback port, its data in a temporary
/// folder; started with `--disableTelemetry`, always.
pub struct Azurite {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-azurite-")
            .tempdir()
            .expect("temporary folder for azurite");
        let mut server = Azurite {
            child: None,
            dir,
            port: free_port(),
        };
        server.start_again();
        server
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "azurite already runs");
        let binary = tool(
            tools_dir().join("azurite/node_modules/.bin/azurite-blob"),
            "azurite",
        );
        let log = self.dir.path().join("azurite.log");
        let mut child = spawn_logged(
            Command::new(binary)
                .args(["--blobHost", "127.0.0.1", "--blobPort"])
                .arg(self.port.to_string())
                .arg("--location")
                .arg(self.dir.path().join("data"))
                .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
                .arg("--debug")
                .arg(self.dir.path().join("debug.log")),
            &log,
        );
        wait_listening(&mut child, self.port, &log, "azurite-blob");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// The account's blob endpoint (path style, as the emulator serves it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        credentials_file(
            dir,
            "azure",
            &format!(
                "AZURE_STORAGE_ACCOUNT_NAME={AZURITE_ACCOUNT}\nAZURE_STORAGE_ACCOUNT_KEY={AZURITE_KEY}\n"
            ),
        )
    }

    pub fn target(
        &self,
        name: &str,
        container: &str,
        prefix: &str,
        credentials: &Path,
    ) -> toml::Table {
        target_table(
            name,
            &format!("az://{container}/{prefix}"),
            &self.endpoint(),
            credentials,
        )
    }

    /// Creates `container` (a signed REST call through curl: Debian's
    /// rclone 1.60 reaches the emulator only on its fixed port).
    pub fn create_container(&self, container: &str) {
        self.request("PUT", container, &[("restype", "container")]);
    }

    /// Blob names in `container` below `prefix/`, without the prefix, sorted.
    pub fn names(&self, container: &str, prefix: &str) -> Vec<String> {
        let listing = self.request(
            "GET",
            container,
            &[
                ("comp", "list"),
                ("prefix", &format!("{prefix}/")),
                ("restype", "container"),
            ],
        );
        let mut names: Vec<String> = listing
            .split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Name>"))
            .map(|(name, _)| {
                name.strip_prefix(&format!("{prefix}/"))
                    .unwrap_or(name)
                    .to_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// A Shared Key signed request (query parameters sorted by name).
    fn request(&self, method: &str, container: &str, query: &[(&str, &str)]) -> String {
        use base64::Engine as _;
        let date = httpdate_now();
        let version = "2021-08-06";
        let mut resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}");
        for (name, value) in query {
            resource.push_str(&format!("\n{name}:{value}"));
        }
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .expect("the emulator key is base64");
        let pkey = openssl::pkey::PKey::hmac(&key).expect("hmac key");
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)
            .expect("signer");
        signer.update(to_sign.as_bytes()).expect("sign");
        let signature =
            base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().expect("sign"));
        let query_text: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={}", value.replace('/', "%2F")))
            .collect();
        let url = format!("{}/{container}?{}", self.endpoint(), query_text.join("&"));
        let output = run(
            Command::new("curl")
                .args(["-sS", "--fail-with-body", "-X", method, "-H"])
                .arg(format!("x-ms-date: {date}"))
                .arg("-H")
                .arg(format!("x-ms-version: {version}"))
                .arg("-H")
                .arg(format!(
                    "Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}"
                ))
                .args(["-H", "Content-Length: 0"])
                .arg(url),
            None,
        )
        .unwrap_or_else(|err| panic!("azurite {method} {container}: {err:#}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The time as HTTP dates write it (RFC 1123, GMT).
fn httpdate_now() -> String {
    let output = run(
        Command::new("date").args(["-u", "+%a, %d %b %Y %H:%M:%S GMT"]),
        None,
    )
    .expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- azurite log ---\n{}\n---",
                tail_file(&self.dir.path().join("debug.log"), 30)
            );
        }
        self.stop();
    }
}

/// An rclone with its own 0600 configuration file holding `sections`.
pub struct Rclone {
    config: PathBuf,
    _dir: TempDir,
}

impl Rclone {
    pub fn new(sections: &[String]) -> Rclone {
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-rclone-")
            .tempdir()
            .expect("temporary folder for rclone");
        let config = dir.path().join("rclone.conf");
        write_private(&config, sections.concat().as_bytes()).expect("write rclone.conf");
        Rclone { config, _dir: dir }
    }

    /// `rclone --config <file> ARGS...`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("rclone");
        cmd.arg("--config").arg(&self.config);
        // Only the configuration file speaks: no AWS_CA_BUNDLE, keys or
        // RCLONE_* from the shell.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("AWS_") || name.starts_with("RCLONE_") || name.starts_with("AZURE_")
            {
                cmd.env_remove(name.as_ref());
            }
        }
        cmd
    }

    /// Runs rclone with `args`; panics with its output when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let output = run(self.command().args(args), None)
            .unwrap_or_else(|err| panic!("rclone failed (is Debian's rclone installed?): {err:#}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The files of `bucket/prefix` (`remote:bucket`) as `database/<name>`
    /// and `ignition/<name>`, sorted. Lists each folder on its own: s3s-fs
    /// answers neither rclone's recursive listing (an empty delimiter) nor
    /// its look at a folder as if it were a file (hence one low-level try).
    pub fn names(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        for folder in ["database", "ignition"] {
            let path = format!("{bucket}/{prefix}/{folder}");
            names.extend(
                self.run(&["lsf", "--files-only", "--low-level-retries", "1", &path])
                    .lines()
                    .map(|name| format!("{folder}/{name}")),
            );
        }
        names.sort();
        names
    }
}

/// A 0600 credentials file `<what>-credentials-<random>` in `dir`.
fn credentials_file(dir: &Path, what: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{what}-credentials-{}", random_hex(3)));
    write_private(&path, text.as_bytes()).expect("write the credentials file");
    path
}

/// An `[[offsite]]` table for a store on plain http at `endpoint`.
fn target_table(name: &str, url: &str, endpoint: &str, credentials: &Path) -> toml::Table {
    let mut table = toml::Table::new();
    table.insert("name".into(), name.into());
    table.insert("url".into(), url.into());
    table.insert("endpoint".into(), endpoint.into());
    table.insert("allow_http".into(), true.into());
    table.insert(
        "credentials_file".into(),
        credentials.to_string_lossy().into_owned().into(),
    );
    table
}

/// Adds an `[[offsite]]` table to `config`.
pub fn add_offsite(config: &mut AgentConfig, table: toml::Table) {
    let mut targets = match config.get("offsite") {
        Some(toml::Value::Array(targets)) => targets.clone(),
        _ => Vec::new(),
    };
    targets.push(toml::Value::Table(table));
    config.set("offsite", toml::Value::Array(targets));
}

/// The file names under the backup folder (`database/<id>`, ...), as an
/// off-site target mirrors them.
pub fn backup_folder_names(backup_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for kind in ["database", "ignition"] {
        for entry in std::fs::read_dir(backup_dir.join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(format!("{kind}/{name}"));
            }
        }
    }
    names.sort();
    names
}
