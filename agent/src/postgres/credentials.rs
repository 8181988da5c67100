//! The database password, handed to client programs only when the server
//! asks for one, and then in a private password file (`PGPASSFILE`), never
//! in an environment variable or on a command line: an exec's environment is
//! readable in the container's `/proc` and in `docker inspect` of the exec.
//!
//! The standard stack trusts connections over the container's own socket,
//! so normally no password travels at all. The first program a job starts
//! probes that; only when the server answers "password required" is the
//! file written (into the container's `/tmp` through the archive API, or
//! into the agent's state folder for host programs), and it is removed when
//! the job ends.

use std::path::{Path, PathBuf};

use mesbak_interface::Error;
use tokio::sync::Mutex;

use super::{MAINTENANCE_DB, Server};
use crate::process::Runner;

/// Environment every client program gets.
const BASE_ENV: &[(&str, &str)] = &[("PGCONNECT_TIMEOUT", "15")];
/// Prefix of the password files in the state folder (host programs).
pub const HOST_FILE_PREFIX: &str = ".pgpass-";

pub(super) struct Credentials {
    password: Option<String>,
    state_dir: PathBuf,
    decided: Mutex<Option<Auth>>,
}

#[derive(Clone)]
enum Auth {
    /// The server lets the programs in without a password.
    Trusted,
    /// The password is in this file, as the programs see it.
    PassFile(String),
}

impl Credentials {
    pub(super) fn new(password: Option<String>, state_dir: &Path) -> Credentials {
        Credentials {
            password,
            state_dir: state_dir.to_owned(),
            decided: Mutex::new(None),
        }
    }

    /// The environment for the next client program: settled once per job
    /// by a probe (a failed probe is not remembered, so a server that was
    /// still starting is asked again).
    pub(super) async fn env(&self, server: &Server) -> Result<Vec<(String, String)>, Error> {
        let mut decided = self.decided.lock().await;
        let auth = match decided.as_ref() {
            Some(auth) => auth.clone(),
            None => {
                let auth = self.probe(server).await?;
                *decided = Some(auth.clone());
                auth
            }
        };
        let mut env: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Auth::PassFile(path) = auth {
            env.push(("PGPASSFILE".into(), path));
        }
        Ok(env)
    }

    async fn probe(&self, server: &Server) -> Result<Auth, Error> {
        let base: Vec<(String, String)> = BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let argv = server.argv(
            "psql",
            &["-X", "-At", "-d", MAINTENANCE_DB, "-c", "SELECT 1"],
        );
        let (_, outcome) = server
            .runner
            .spawn(&argv, &base, false)
            .await?
            .collect()
            .await?;
        if outcome.exit_code == 0 {
            return Ok(Auth::Trusted);
        }
        let asks_password = outcome.stderr.contains("no password supplied")
            || outcome.stderr.contains("password authentication failed");
        if !asks_password {
            return Err(Error::Database(format!(
                "cannot connect to the database server in {} as '{}': {}",
                server.runner.describe(),
                server.user,
                crate::process::last_lines(&outcome.stderr, 2)
            )));
        }
        let Some(password) = &self.password else {
            return Err(Error::Config(format!(
                "the database server in {} asks for a password for '{}'; set database.password_file (or POSTGRES_PASSWORD)",
                server.runner.describe(),
                server.user
            )));
        };
        let path = self.write_file(server, password).await?;
        let env = vec![
            BASE_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .next()
                .expect("one"),
            ("PGPASSFILE".to_owned(), path.clone()),
        ];
        let (_, outcome) = server
            .runner
            .spawn(&argv, &env, false)
            .await?
            .collect()
            .await?;
        if outcome.exit_code != 0 {
            self.remove_file(server, &path).await;
            return Err(Error::Config(format!(
                "the database server in {} refused the configured password for '{}': {}; check database.password_file (or POSTGRES_PASSWORD)",
                server.runner.describe(),
                server.user,
                crate::process::last_lines(&outcome.stderr, 1)
            )));
        }
        Ok(Auth::PassFile(path))
    }

    /// Writes a libpq password file (`*:*:*:*:password`, mode 0600) where
    /// the programs run; returns its path as they see it.
    async fn write_file(&self, server: &Server, password: &str) -> Result<String, Error> {
        let line = format!("*:*:*:*:{}\n", escape(password));
        let mut random = [0u8; 8];
        openssl::rand::rand_bytes(&mut random)
            .map_err(|err| Error::Failed(format!("no randomness for a file name: {err}")))?;
        let name = format!("{HOST_FILE_PREFIX}{}", hex::encode(random));
        match &server.runner {
            Runner::Container { docker, container } => {
                let mut header = tar::Header::new_gnu();
                header.set_size(line.len() as u64);
                header.set_mode(0o600);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                let mut archive = tar::Builder::new(Vec::new());
                archive
                    .append_data(&mut header, &name, line.as_bytes())
                    .and_then(|()| archive.finish())
                    .map_err(|err| {
                        Error::Failed(format!("cannot build the password file: {err}"))
                    })?;
                let tar = archive.into_inner().map_err(|err| {
                    Error::Failed(format!("cannot build the password file: {err}"))
                })?;
                let body = futures_util::stream::once(async move {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(tar))
                });
                docker.upload(container, "/tmp", body).await.map_err(|err| {
                    Error::Docker(format!(
                        "cannot hand the database password to the programs in container '{container}' (a private file in its /tmp): {}",
                        err.message()
                    ))
                })?;
                Ok(format!("/tmp/{name}"))
            }
            Runner::Host => {
                let path = self.state_dir.join(&name);
                let write = || -> std::io::Result<()> {
                    let mut file = crate::storage::create_private_file(&path)?;
                    std::io::Write::write_all(&mut file, line.as_bytes())
                };
                write().map_err(|err| {
                    Error::Failed(format!(
                        "cannot write the password file {}: {err}",
                        path.display()
                    ))
                })?;
                Ok(path.display().to_string())
            }
        }
    }

    async fn remove_file(&self, server: &Server, path: &str) {
        match &server.runner {
            Runner::Container { docker, container } => {
                let argv = ["rm".to_owned(), "-f".to_owned(), path.to_owned()];
                let removed = match docker.exec(container, &argv, &[], false).await {
                    Ok(spawned) => spawned.collect().await.map(|(_, o)| o.exit_code == 0),
                    Err(err) => Err(err),
                };
                if !matches!(removed, Ok(true)) {
                    tracing::warn!(container = %container, file = %path, "could not remove the password file from the database container; it goes with the container's next restart");
                }
            }
            Runner::Host => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    pub(super) async fn release(&self, server: &Server) {
        let mut decided = self.decided.lock().await;
        if let Some(Auth::PassFile(path)) = decided.take() {
            self.remove_file(server, &path).await;
        }
    }
}

/// Removes password files that a crashed agent left in the state folder.
pub fn remove_stale_host_files(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(HOST_FILE_PREFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `:` and `\` are escaped in a password file's fields.
fn escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_fields_are_escaped() {
        assert_eq!(escape(r"a:b\c"), r"a\:b\\c");
    }
}
