//! One interface over the three kinds of target: S3 and Azure Blob through
//! `object_store`, a mounted path through [`super::local`]. Keys are
//! relative to the target's prefix and mirror the backup folder
//! (`database/<id>`, `database/<id>.json`, `ignition/<id>`), so rclone or a
//! cloud console shows the same names.
//!
//! Every upload is all or nothing: a single PUT, a multipart upload that
//! only becomes the object at its completion (aborted on failure), or a
//! hidden file renamed into place. Memory stays flat: at most
//! [`CONCURRENT_PARTS`] parts of [`PART_SIZE`] are held at once.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{BoxStream, FuturesUnordered};
use futures_util::{StreamExt, TryStreamExt};
use mesbak_interface::Error;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use openssl::sha::Sha256;

use super::config::{Credentials, Location, TargetConfig};
use super::local::LocalDir;
use crate::config::Environment;

/// Bytes per multipart part (and per read of the local file); with
/// [`CONCURRENT_PARTS`] as rclone's defaults, which keeps the agent's peak
/// memory under 64 MiB while the store, not the agent, sets the pace.
pub const PART_SIZE: usize = 5 << 20;
/// Parts uploaded at once.
pub const CONCURRENT_PARTS: usize = 4;
/// S3 allows at most 10,000 parts; stay below.
const MAX_PARTS: u64 = 9_000;
/// The smallest part S3 accepts (but for the last).
const S3_MIN_PART: usize = 5 << 20;
/// Blocks of an Azure block blob may be small; used when the bandwidth is limited.
const AZURE_MIN_PART: usize = 1 << 20;

/// One object a target holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative key (`database/<id>`).
    pub key: String,
    pub size: u64,
}

/// What passed through: its size and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

enum Backend {
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
    Local(LocalDir),
}

/// A configured target, opened with its credentials.
pub struct Target {
    pub name: String,
    /// As configured, for messages (holds no secret).
    pub url: String,
    pub location: Location,
    /// Average bytes per second, when limited.
    pub limit: Option<u64>,
    /// Where the credentials came from, for messages.
    credentials_origin: String,
    endpoint: String,
    backend: Backend,
}

impl Target {
    /// Builds the client; fails (naming the target) on missing or
    /// unreadable credentials. Sends nothing yet.
    pub fn open(config: &TargetConfig, env: &dyn Environment) -> Result<Target, Error> {
        let location = config.location().map_err(|message| {
            Error::Config(format!("off-site target '{}': {message}", config.name))
        })?;
        let refuse = |message: String| {
            Error::Config(format!(
                "off-site target '{}' ({}): {message}",
                config.name, config.url
            ))
        };
        let mut credentials_origin = String::new();
        let backend = match &location {
            Location::Path(path) => Backend::Local(LocalDir::new(
                &config.name,
                path.clone(),
                config.require_mount,
            )),
            Location::S3 { bucket, prefix } => {
                let (credentials, origin) = Credentials::load(config, env).map_err(refuse)?;
                credentials
                    .require(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], &origin)
                    .map_err(refuse)?;
                let mut builder = AmazonS3Builder::new()
                    .with_client_options(client_options(config))
                    .with_retry(retry_config())
                    .with_bucket_name(bucket)
                    .with_region(&config.region)
                    .with_access_key_id(credentials.get("AWS_ACCESS_KEY_ID").unwrap_or_default())
                    .with_secret_access_key(
                        credentials.get("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
                    )
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(config.allow_http);
                if let Some(token) = credentials.get("AWS_SESSION_TOKEN") {
                    builder = builder.with_token(token);
                }
                if !config.endpoint.is_empty() {
                    builder = builder.with_endpoint(&config.endpoint);
                }
                credentials_origin = origin;
                Backend::Object {
                    store: Arc::new(builder.build().map_err(|err| refuse(one_line(&err)))?),
                    prefix: prefix.clone(),
                }
            }
            Location::Azure { container, prefix } => {
                let (credentials, origin) = Credentials::load(config, env).map_err(refuse)?;
                credentials
                    .require(
                        &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"],
                        &origin,
                    )
                    .map_err(refuse)?;
                let mut builder = MicrosoftAzureBuilder::new()
                    .with_client_options(client_options(config))
                    .with_retry(retry_config())
                    .with_account(
                        credentials
                            .get("AZURE_STORAGE_ACCOUNT_NAME")
                            .unwrap_or_default(),
                    )
                    .with_access_key(
                        credentials
                            .get("AZURE_STORAGE_ACCOUNT_KEY")
                            .unwrap_or_default(),
                    )
                    .with_container_name(container)
                    .with_allow_http(config.allow_http);
                if !config.endpoint.is_empty() {
                    builder = builder.with_endpoint(config.endpoint.clone());
                }
                credentials_origin = origin;
                Backend::Object {
                    store: Arc::new(builder.build().map_err(|err| refuse(one_line(&err)))?),
                    prefix: prefix.clone(),
                }
            }
        };
        Ok(Target {
            name: config.name.clone(),
            url: config.url.clone(),
            location,
            limit: config.bandwidth_limit,
            credentials_origin,
            endpoint: config.endpoint.clone(),
            backend,
        })
    }

    /// The full name of `key` there, as rclone or a console shows it.
    pub fn display_key(&self, key: &str) -> String {
        format!("{}/{key}", self.url.trim_end_matches('/'))
    }

    fn path(&self, key: &str) -> StorePath {
        match &self.backend {
            Backend::Object { prefix, .. } if !prefix.is_empty() => {
                StorePath::from(format!("{prefix}/{key}"))
            }
            _ => StorePath::from(key),
        }
    }

    /// Every object in `folder` (`database` or `ignition`), not recursive.
    pub async fn list(&self, folder: &str) -> Result<Vec<Entry>, Error> {
        match &self.backend {
            Backend::Local(dir) => dir.list(folder),
            Backend::Object { store, .. } => {
                let base = self.path(folder);
                let listed = store
                    .list_with_delimiter(Some(&base))
                    .await
                    .map_err(|err| self.explain("listing", &err))?;
                Ok(listed
                    .objects
                    .into_iter()
                    .filter_map(|meta| {
                        let name = meta.location.filename()?.to_owned();
                        Some(Entry {
                            key: format!("{folder}/{name}"),
                            size: meta.size,
                        })
                    })
                    .collect())
            }
        }
    }

    /// Uploads `file` (`size` bytes) as `key`, all or nothing; returns the
    /// digest of what was read from `file` and sent. `progress` counts
    /// bytes as their part is stored.
    pub async fn upload_file(
        &self,
        key: &str,
        file: File,
        size: u64,
        progress: &AtomicU64,
    ) -> Result<Digest, Error> {
        match &self.backend {
            Backend::Local(dir) => {
                let mut pacer = Pacer::new(self.limit);
                dir.upload(key, file, progress, &mut pacer).await
            }
            Backend::Object { store, .. } => {
                let part_size = self.part_size(size);
                let result = if size <= part_size as u64 {
                    self.put_whole(store, key, file, progress).await
                } else {
                    self.put_multipart(store, key, file, part_size, progress)
                        .await
                };
                result.map_err(|err| match err {
                    Failure::Store(err) => self.explain(&format!("uploading {key}"), &err),
                    Failure::Mesbak(err) => err,
                })
            }
        }
    }

    /// Stores a small object (metadata) in one request.
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), Error> {
        match &self.backend {
            Backend::Local(dir) => dir.put_bytes(key, &bytes).await,
            Backend::Object { store, .. } => store
                .put(&self.path(key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|err| self.explain(&format!("uploading {key}"), &err)),
        }
    }

    /// Reads `key` back, handing each block to `sink`; returns its digest.
    /// Paced like uploads.
    pub async fn read(
        &self,
        key: &str,
        progress: &AtomicU64,
        mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<Digest, Error> {
        let mut pacer = Pacer::new(self.limit);
        let mut stream: BoxStream<'static, Result<Bytes, Error>> = match &self.backend {
            Backend::Local(dir) => dir.read(key)?,
            Backend::Object { store, .. } => {
                let name = self.name.clone();
                let got = store
                    .get(&self.path(key))
                    .await
                    .map_err(|err| self.explain(&format!("reading {key}"), &err))?;
                let what = format!("reading {key}");
                let url = self.url.clone();
                got.into_stream()
                    .map_err(move |err| {
                        Error::Failed(format!(
                            "off-site target '{name}' ({url}): {what} broke off: {}",
                            one_line(&err)
                        ))
                    })
                    .boxed()
            }
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(block) = stream.next().await {
            let block = block?;
            pacer.pace(block.len() as u64).await;
            hasher.update(&block);
            size += block.len() as u64;
            progress.fetch_add(block.len() as u64, Ordering::Relaxed);
            sink(&block)?;
        }
        Ok(Digest {
            size,
            sha256: hex::encode(hasher.finish()),
        })
    }

    /// Reads a small object (metadata) whole.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        let progress = AtomicU64::new(0);
        self.read(key, &progress, |block| {
            if bytes.len() + block.len() > 16 << 20 {
                return Err(Error::Integrity(format!(
                    "{key} on off-site target '{}' is far too large for metadata",
                    self.name
                )));
            }
            bytes.extend_from_slice(block);
            Ok(())
        })
        .await?;
        Ok(bytes)
    }

    /// Deletes `key`; a key that is already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match &self.backend {
            Backend::Local(dir) => dir.delete(key),
            Backend::Object { store, .. } => match store.delete(&self.path(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) => Err(self.explain(&format!("deleting {key}"), &err)),
            },
        }
    }

    /// Removes what an interrupted upload left (path targets; object
    /// stores never show an unfinished upload). Returns what was removed.
    pub fn remove_partials(&self) -> Vec<String> {
        match &self.backend {
            Backend::Local(dir) => dir.remove_partials(),
            Backend::Object { .. } => Vec::new(),
        }
    }

    fn part_size(&self, size: u64) -> usize {
        let least = size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20) as usize;
        let smallest = match self.location {
            Location::Azure { .. } => AZURE_MIN_PART,
            _ => S3_MIN_PART,
        };
        let wanted = match self.limit {
            // About one part a second keeps a limited link evenly used.
            Some(limit) => (limit as usize).clamp(smallest, PART_SIZE),
            None => PART_SIZE,
        };
        wanted.max(least)
    }

    async fn put_whole(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        file: File,
        progress: &AtomicU64,
    ) -> Result<Digest, Failure> {
        let (bytes, hasher, _) = read_part(file, usize::MAX, Sha256::new()).await?;
        let digest = Digest {
            size: bytes.len() as u64,
            sha256: hex::encode(hasher.finish()),
        };
        Pacer::new(self.limit).pace(digest.size).await;
        store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map_err(Failure::Store)?;
        progress.fetch_add(digest.size, Ordering::Relaxed);
        Ok(digest)
    }

    async fn put_multipart(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        file: File,
        part_size: usize,
        progress: &AtomicU64,
    ) -> Result<Digest, Failure> {
        let mut upload = store
            .put_multipart(&self.path(key))
            .await
            .map_err(Failure::Store)?;
        let concurrent = if self.limit.is_some() {
            1
        } else {
            CONCURRENT_PARTS
        };
        let mut pacer = Pacer::new(self.limit);
        let sent = async {
            let mut in_flight = FuturesUnordered::new();
            let mut file = Some(file);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let (bytes, next_hasher, rest) =
                    read_part(file.take().expect("file"), part_size, hasher).await?;
                hasher = next_hasher;
                file = Some(rest);
                if bytes.is_empty() {
                    break;
                }
                let len = bytes.len() as u64;
                size += len;
                pacer.pace(len).await;
                while in_flight.len() >= concurrent {
                    if let Some(done) = in_flight.next().await {
                        done?;
                    }
                }
                let part = upload.put_part(PutPayload::from(bytes));
                in_flight.push(async move {
                    part.await.map_err(Failure::Store)?;
                    progress.fetch_add(len, Ordering::Relaxed);
                    Ok::<_, Failure>(())
                });
            }
            while let Some(done) = in_flight.next().await {
                done?;
            }
            Ok::<_, Failure>(Digest {
                size,
                sha256: hex::encode(hasher.finish()),
            })
        }
        .await;
        match sent {
            Ok(digest) => {
                upload.complete().await.map_err(Failure::Store)?;
                Ok(digest)
            }
            Err(err) => {
                // The parts never become an object; free them at once.
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(target_name = %self.name, error = %one_line(&abort), "could not abort an unfinished multipart upload; the store frees it by its own rules");
                }
                Err(err)
            }
        }
    }

    /// A failure of the store as a sentence a technician can act on.
    pub fn explain(&self, action: &str, err: &object_store::Error) -> Error {
        let detail = one_line(err);
        let name = &self.name;
        let url = &self.url;
        let at = if self.endpoint.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.endpoint)
        };
        let (status, connect) = classify(err);
        let container = match &self.location {
            Location::S3 { bucket, .. } => format!("bucket '{bucket}'"),
            Location::Azure { container, .. } => format!("container '{container}'"),
            Location::Path(path) => path.display().to_string(),
        };
        if detail.contains("NoSuchBucket") || detail.contains("ContainerNotFound") {
            return Error::NotFound(format!(
                "off-site target '{name}': the {container} does not exist{at}; create it, or correct url in the configuration (nothing was copied; the copy stays queued)"
            ));
        }
        match status {
            Some(401 | 403) => Error::NotAuthorized(format!(
                "off-site target '{name}' ({url}) refused the credentials from {} while {action} (HTTP {}); check the key id and secret there (the copy stays queued)",
                self.credentials_origin,
                status.unwrap_or_default()
            )),
            Some(404) => Error::NotFound(format!(
                "off-site target '{name}' ({url}) has no such object while {action}: {detail}"
            )),
            _ if connect => Error::Failed(format!(
                "cannot reach off-site target '{name}'{at} while {action}: {detail}; check that the store is up and reachable (the copy stays queued and is retried)"
            )),
            _ => Error::Failed(format!(
                "off-site target '{name}' ({url}) failed while {action}: {detail}"
            )),
        }
    }
}

/// Why an upload stopped: the store, or our side (reading the file).
enum Failure {
    Store(object_store::Error),
    Mesbak(Error),
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure::Mesbak(err)
    }
}

/// Reads up to `limit` bytes of `file` on a blocking thread, hashing them.
async fn read_part(
    mut file: File,
    limit: usize,
    mut hasher: Sha256,
) -> Result<(Bytes, Sha256, File), Error> {
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let want = if limit == usize::MAX {
            file.metadata().map(|m| m.len() as usize).unwrap_or(0)
        } else {
            limit
        };
        buf.reserve_exact(want);
        (&mut file)
            .take(limit as u64)
            .read_to_end(&mut buf)
            .map_err(|err| Error::Failed(format!("cannot read the backup to copy: {err}")))?;
        hasher.update(&buf);
        Ok((Bytes::from(buf), hasher, file))
    })
    .await
    .map_err(|err| Error::Failed(format!("internal error reading the backup: {err}")))?
}

/// HTTP status and whether the store could not be reached at all, from
/// the error and its chain (object_store keeps the status type private, so
/// the status is also read from its message).
fn classify(err: &object_store::Error) -> (Option<u16>, bool) {
    match err {
        object_store::Error::PermissionDenied { .. } => return (Some(403), false),
        object_store::Error::Unauthenticated { .. } => return (Some(401), false),
        object_store::Error::NotFound { .. } => return (Some(404), false),
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut connect = false;
    while let Some(current) = source {
        if let Some(http) = current.downcast_ref::<object_store::client::HttpError>() {
            connect |= matches!(
                http.kind(),
                object_store::client::HttpErrorKind::Connect
                    | object_store::client::HttpErrorKind::Timeout
                    | object_store::client::HttpErrorKind::Interrupted
                    | object_store::client::HttpErrorKind::Request
            );
        }
        source = current.source();
    }
    let text = err.to_string();
    let status = text
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, connect && status.is_none())
}

/// An error and its causes on one line, without repeats.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(current) = source {
        let text = current.to_string().replace('\n', " ");
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    let mut line = parts.join(": ");
    if line.len() > 600 {
        let mut cut = 600;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

fn client_options(config: &TargetConfig) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        // A part on a slow uplink may take minutes.
        .with_timeout(Duration::from_secs(600))
        .with_allow_http(config.allow_http)
}

/// A few quick retries inside one attempt; the queue retries later with
/// its own backoff, so a store that is down fails fast.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
    }
}

/// Keeps the average rate at or below a limit by waiting before each block.
pub struct Pacer {
    limit: Option<u64>,
    started: Instant,
    sent: u64,
}

impl Pacer {
    pub fn new(limit: Option<u64>) -> Pacer {
        Pacer {
            limit,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Waits until sending `bytes` more keeps the average within the limit.
    pub async fn pace(&mut self, bytes: u64) {
        let Some(limit) = self.limit else {
            return;
        };
        let due = Duration::from_secs_f64(self.sent as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        self.sent += bytes;
    }
}
