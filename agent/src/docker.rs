//! The Docker engine, through bollard: container state, start/stop, exec with
//! streamed output, volumes and archives. Docker is found as the CLI finds it
//! (`DOCKER_HOST`, else the local socket) and the API version negotiated, so
//! Docker 20.10 through current work.

use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, ExecConfig};
use bollard::query_parameters::{StartContainerOptions, StopContainerOptionsBuilder};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use mesbak_interface::Error;
use tokio::sync::mpsc;

use crate::process::{Outcome, Spawned, StderrTail};

/// Generous: archive downloads and long execs are single requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The most of an exec's output handed on as one block.
const COALESCE: usize = 64 * 1024;

/// Where a tar stream for [`Docker::upload_from`] is sent.
pub type TarSender = mpsc::Sender<Result<Bytes, std::io::Error>>;

#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
}

impl Docker {
    pub async fn connect() -> Result<Docker, Error> {
        let api = bollard::Docker::connect_with_defaults()
            .map_err(unreachable)?
            .with_timeout(REQUEST_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        Ok(Docker { api })
    }

    pub fn api(&self) -> &bollard::Docker {
        &self.api
    }

    /// Whether a bind mount of this host's folder can be the same folder
    /// in a container: the engine on the local socket, not rootless (it
    /// could not enter the agent's private folders). A container still
    /// proves it ([`crate::fifo::SharedDir`]).
    pub async fn shares_host_folders(&self) -> bool {
        let local = std::env::var("DOCKER_HOST")
            .map_or(true, |host| host.is_empty() || host.starts_with("unix://"));
        local
            && self.api.info().await.is_ok_and(|info| {
                !info
                    .security_options
                    .unwrap_or_default()
                    .iter()
                    .any(|option| option.contains("name=rootless"))
            })
    }

    /// The engine's version, for the journal.
    pub async fn version(&self) -> Result<String, Error> {
        let version = self.api.version().await.map_err(unreachable)?;
        Ok(format!(
            "Docker {} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    /// Whether `container` runs now; `NotFound` when it does not exist.
    pub async fn is_running(&self, container: &str) -> Result<bool, Error> {
        let info = self
            .api
            .inspect_container(container, None)
            .await
            .map_err(|err| container_error(container, err))?;
        Ok(matches!(
            info.state.and_then(|state| state.status),
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING)
        ))
    }

    /// The image a container was created from.
    pub async fn image_of(&self, container: &str) -> Result<String, Error> {
        let info = self
            .api
            .inspect_container(container, None)
            .await
            .map_err(|err| container_error(container, err))?;
        info.image.ok_or_else(|| {
            Error::Docker(format!(
                "Docker did not report the image of container '{container}'"
            ))
        })
    }

    pub async fn start(&self, container: &str) -> Result<(), Error> {
        match self
            .api
            .start_container(container, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(err) => Err(container_error(container, err)),
        }
    }

    pub async fn stop(&self, container: &str, timeout_secs: u32) -> Result<(), Error> {
        let options = StopContainerOptionsBuilder::default()
            .t(timeout_secs as i32)
            .build();
        match self.api.stop_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(err) => Err(container_error(container, err)),
        }
    }

    /// Runs `argv` in a running container to its end: its whole stdout (a
    /// small output), or the error `fail` makes of its stderr's last lines.
    pub async fn exec_output(
        &self,
        container: &str,
        argv: &[String],
        fail: impl FnOnce(String) -> Error,
    ) -> Result<Vec<u8>, Error> {
        let (out, outcome) = self
            .exec(container, argv, &[], false)
            .await?
            .collect()
            .await?;
        outcome.check(fail)?;
        Ok(out)
    }

    /// Runs `argv` in a running container, streaming stdout; stderr is kept
    /// (its tail) for the error message and the exit code read at the end.
    pub async fn exec(
        &self,
        container: &str,
        argv: &[String],
        env: &[(String, String)],
        with_stdin: bool,
    ) -> Result<Spawned, Error> {
        let config = ExecConfig {
            cmd: Some(argv.to_vec()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            attach_stdin: Some(with_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        };
        let created = self
            .api
            .create_exec(container, config)
            .await
            .map_err(|err| container_error(container, err))?;
        let started = self
            .api
            .start_exec(
                &created.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(256 * 1024),
                }),
            )
            .await
            .map_err(|err| container_error(container, err))?;
        let bollard::exec::StartExecResults::Attached { mut output, input } = started else {
            return Err(Error::Docker("Docker detached an attached exec".into()));
        };
        // Blocks of up to COALESCE bytes: at most 1 MiB waits here.
        let (stdout_tx, stdout_rx) = mpsc::channel::<Bytes>(16);
        let api = self.api.clone();
        let exec_id = created.id.clone();
        let program = argv.first().cloned().unwrap_or_default();
        let done = tokio::spawn(async move {
            let mut stderr = StderrTail::default();
            let mut reader_gone = false;
            // Docker keeps an exec's output open while its input is, even
            // after the process exited (psql stopped at an error): with
            // input attached, ask every second, and once it has exited end
            // the output after what is still in flight, so the caller stops
            // feeding a process that is gone.
            let mut check = tokio::time::interval(Duration::from_secs(1));
            let mut exited = false;
            // A frame read while gathering a block that is not its data.
            let mut held: Option<Option<Result<bollard::container::LogOutput, BollardError>>> =
                None;
            loop {
                let frame = if let Some(frame) = held.take() {
                    frame
                } else if exited {
                    tokio::time::timeout(Duration::from_millis(500), output.next())
                        .await
                        .unwrap_or(None)
                } else {
                    tokio::select! {
                        frame = output.next() => frame,
                        _ = check.tick(), if with_stdin => {
                            // Only an exit code says it ended: the first ask
                            // comes as the start call returns, and an exec
                            // the engine has not started yet is not running
                            // either. Taken for ended, a psql loading a big
                            // table (silent for seconds) lost its input.
                            exited = api
                                .inspect_exec(&exec_id)
                                .await
                                .is_ok_and(|inspect| {
                                    inspect.running == Some(false) && inspect.exit_code.is_some()
                                });
                            continue;
                        }
                    }
                };
                let Some(frame) = frame else { break };
                match frame {
                    Ok(bollard::container::LogOutput::StdOut { message }) => {
                        // The engine frames what it reads from the process
                        // (about 28 KiB at a time from pg_dump): what has
                        // already arrived goes on as one block, not a send and
                        // a write each.
                        let mut block = bytes::BytesMut::new();
                        let mut message = message;
                        while block.len() + message.len() < COALESCE {
                            let next = match output.next().now_or_never() {
                                Some(Some(Ok(bollard::container::LogOutput::StdOut {
                                    message: more,
                                }))) => more,
                                Some(Some(Ok(bollard::container::LogOutput::StdErr {
                                    message: err,
                                }))) => {
                                    stderr.push(&err);
                                    continue;
                                }
                                other => {
                                    held = other;
                                    break;
                                }
                            };
                            block.extend_from_slice(&message);
                            message = next;
                        }
                        let message = if block.is_empty() {
                            message
                        } else {
                            block.extend_from_slice(&message);
                            block.freeze()
                        };
                        if !reader_gone && stdout_tx.send(message).await.is_err() {
                            // The consumer failed; drain so the process ends.
                            reader_gone = true;
                        }
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => stderr.push(&message),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, program, "the output of an exec broke off");
                        return Err(Error::Docker(format!(
                            "the output of {program} in the container broke off ({}); check that the Docker engine runs (`systemctl status docker`), then retry",
                            transport_failure(&err.to_string())
                        )));
                    }
                }
            }
            drop(stdout_tx);
            // The stream ending is not success: ask for the exit code. The
            // engine marks the exec ended a moment after its output closes;
            // most execs are short queries, so ask again soon, then less often.
            let mut exit_code = None;
            let mut pause = Duration::from_millis(2);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let inspect = api.inspect_exec(&exec_id).await.map_err(unreachable)?;
                if inspect.running != Some(true) {
                    exit_code = inspect.exit_code;
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Ok(Outcome {
                exit_code: exit_code.unwrap_or(-1),
                stderr: stderr.into_string(),
            })
        });
        Ok(Spawned {
            stdout: stdout_rx,
            stdin: with_stdin.then_some(input),
            done,
        })
    }
}

/// Maps an engine error about `container` to a sentence with what to do.
pub fn container_error(container: &str, err: BollardError) -> Error {
    match err {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => Error::NotFound(format!(
            "container '{container}' does not exist; check `docker ps -a` and the container names in the mesbak configuration"
        )),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => Error::Docker(format!(
            "container '{container}' is not usable now: {message}"
        )),
        BollardError::DockerResponseServerError { message, .. } => Error::Docker(format!(
            "Docker refused an operation on '{container}': {message}"
        )),
        other => unreachable(other),
    }
}

/// The engine could not be reached or answered nonsense.
pub fn unreachable(err: BollardError) -> Error {
    match err {
        BollardError::DockerResponseServerError { message, .. } => {
            Error::Docker(format!("Docker refused the request: {message}"))
        }
        other => {
            // The transport's own words (hyper's, the socket's) go to the
            // log; the sentence says what happened in plain terms.
            tracing::warn!(error = %other, "a request to the Docker engine failed");
            Error::Docker(format!(
                "cannot talk to the Docker engine ({}); check that it runs (`systemctl status docker`) and that DOCKER_HOST, if set, is right, then retry",
                transport_failure(&other.to_string())
            ))
        }
    }
}

/// What went wrong between the agent and the engine, from the transport
/// error's text: the socket missing or refusing (engine stopped), no
/// permission, or a connection that broke off (engine restarted mid-job).
fn transport_failure(text: &str) -> &'static str {
    if text.contains("No such file or directory") {
        "its socket is missing: it is not running"
    } else if text.contains("Connection refused") {
        "its socket refuses connections: it is not running"
    } else if text.contains("Permission denied") {
        "permission denied on its socket"
    } else if text.contains("timed out") || text.contains("Timeout") {
        "it did not answer in time"
    } else {
        "the connection broke off: it was stopped or restarted"
    }
}

/// A container that mounts a volume, as [`Docker::containers_using_volume`]
/// lists it.
#[derive(Debug, Clone)]
pub struct VolumeUser {
    pub name: String,
    pub running: bool,
    pub labels: std::collections::HashMap<String, String>,
}

// Volumes, images and short-lived helper containers (the Ignition volume's
// snapshots and restores).
impl Docker {
    /// Whether the volume `name` exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, Error> {
        found(self.api.inspect_volume(name).await)
    }

    /// Whether the image `image` (name or id) is on this host.
    pub async fn image_exists(&self, image: &str) -> Result<bool, Error> {
        found(self.api.inspect_image(image).await)
    }

    /// Every container, running or not, that mounts `volume`.
    pub async fn containers_using_volume(&self, volume: &str) -> Result<Vec<VolumeUser>, Error> {
        self.list_containers("volume", volume).await
    }

    /// Every container, running or not, labelled `label` (`key` or `key=value`).
    pub async fn containers_with_label(&self, label: &str) -> Result<Vec<VolumeUser>, Error> {
        self.list_containers("label", label).await
    }

    async fn list_containers(&self, filter: &str, value: &str) -> Result<Vec<VolumeUser>, Error> {
        let options = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some([(filter.to_owned(), vec![value.to_owned()])].into()),
            ..Default::default()
        };
        let list = self
            .api
            .list_containers(Some(options))
            .await
            .map_err(unreachable)?;
        Ok(list
            .into_iter()
            .map(|summary| VolumeUser {
                name: summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .or(summary.id)
                    .unwrap_or_default(),
                running: matches!(
                    summary.state,
                    Some(
                        bollard::models::ContainerSummaryStateEnum::RUNNING
                            | bollard::models::ContainerSummaryStateEnum::RESTARTING
                            | bollard::models::ContainerSummaryStateEnum::PAUSED
                    )
                ),
                labels: summary.labels.unwrap_or_default(),
            })
            .collect())
    }

    /// Creates (does not start) the container `name`; returns its id.
    pub async fn create_container(
        &self,
        name: &str,
        config: bollard::models::ContainerCreateBody,
    ) -> Result<String, Error> {
        let options = bollard::query_parameters::CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        let created = self
            .api
            .create_container(Some(options), config)
            .await
            .map_err(|err| container_error(name, err))?;
        Ok(created.id)
    }

    /// Removes `container` whatever its state, with its anonymous volumes;
    /// one that is already gone is fine.
    pub async fn remove_container(&self, container: &str) -> Result<(), Error> {
        // `v`: anonymous volumes the image declares go too (named ones stay).
        let options = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.api.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(err) => Err(container_error(container, err)),
        }
    }

    /// `path` in `container` as a tar stream (the archive API; works on a
    /// container that was never started).
    pub fn download(
        &self,
        container: &str,
        path: &str,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let options = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_owned(),
        };
        let container = container.to_owned();
        self.api
            .download_from_container(&container, Some(options))
            .map(move |block| block.map_err(|err| container_error(&container, err)))
    }

    /// Extracts the tar stream `tar` into `path` in `container` (the archive
    /// API, as root, keeping the archive's owners, modes and times). An
    /// error item in the stream aborts the request.
    pub async fn upload(
        &self,
        container: &str,
        path: &str,
        tar: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), Error> {
        let options = bollard::query_parameters::UploadToContainerOptions {
            path: path.to_owned(),
            no_overwrite_dir_non_dir: Some("true".into()),
            copy_uidgid: None,
        };
        self.api
            .upload_to_container(container, Some(options), bollard::body_try_stream(tar))
            .await
            .map_err(|err| container_error(container, err))
    }

    /// Uploads into `path` in `container` the tar stream that `produce`
    /// sends, `produce` running in a task of its own; a producer that meets
    /// an error sends it into the stream, so the engine refuses the archive.
    /// Returns what the producer returned and the upload's result.
    pub async fn upload_from<T, Fut>(
        &self,
        container: &str,
        path: &str,
        produce: impl FnOnce(TarSender) -> Fut,
    ) -> (Result<T, Error>, Result<(), Error>)
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let producer = tokio::spawn(produce(sender));
        let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let uploaded = self.upload(container, path, body).await;
        let produced = producer
            .await
            .map_err(|err| Error::Failed(format!("internal error while restoring: {err}")));
        (produced, uploaded)
    }

    /// Creates the named volume `name` with `labels`.
    pub async fn create_volume(
        &self,
        name: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<(), Error> {
        let options = bollard::models::VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        self.api
            .create_volume(options)
            .await
            .map(|_| ())
            .map_err(unreachable)
    }

    /// Removes the volume `name`; one that is already gone is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        let options = bollard::query_parameters::RemoveVolumeOptions { force: true };
        match self.api.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(err) => Err(unreachable(err)),
        }
    }

    /// A container's read-only bind mounts (`host:container:ro`), e.g. the
    /// configuration files a stack mounts into its database container.
    pub async fn readonly_binds(&self, container: &str) -> Result<Vec<String>, Error> {
        let info = self
            .api
            .inspect_container(container, None)
            .await
            .map_err(|err| container_error(container, err))?;
        Ok(info
            .host_config
            .and_then(|h| h.binds)
            .unwrap_or_default()
            .into_iter()
            .filter(|bind| {
                bind.rsplit_once(':')
                    .is_some_and(|(_, options)| options.split(',').any(|o| o == "ro"))
            })
            .collect())
    }

    /// The environment an image sets (`NAME=value` lines) and its user (empty: root).
    pub async fn image_env_user(&self, image: &str) -> Result<(Vec<String>, String), Error> {
        let info = self.api.inspect_image(image).await.map_err(unreachable)?;
        let config = info.config.unwrap_or_default();
        Ok((
            config.env.unwrap_or_default(),
            config.user.unwrap_or_default(),
        ))
    }

    /// The last `lines` lines of a container's output (stdout and stderr).
    pub async fn logs_tail(&self, container: &str, lines: usize) -> String {
        let mut output = StderrTail::default();
        let mut logs = self.api.logs(
            container,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        while let Some(Ok(frame)) = logs.next().await {
            output.push(&frame.into_bytes());
        }
        output.into_string()
    }

    /// Starts a created `container`, waits for it to exit and returns its
    /// exit code with the tail of its output (stdout and stderr).
    pub async fn run_to_exit(&self, container: &str) -> Result<Outcome, Error> {
        self.api
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|err| container_error(container, err))?;
        let exit_code = self.wait_exit(container).await?;
        let mut output = StderrTail::default();
        let mut logs = self.api.logs(
            container,
            Some(bollard::query_parameters::LogsOptions {
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        while let Some(Ok(frame)) = logs.next().await {
            output.push(&frame.into_bytes());
        }
        Ok(Outcome {
            exit_code,
            stderr: output.into_string(),
        })
    }

    /// Waits until `container` does not run; its exit code (-1 if unknown).
    pub async fn wait_exit(&self, container: &str) -> Result<i64, Error> {
        let mut exit_code = -1;
        let mut wait = self.api.wait_container(
            container,
            Some(bollard::query_parameters::WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        while let Some(next) = wait.next().await {
            match next {
                Ok(response) => exit_code = response.status_code,
                Err(BollardError::DockerContainerWaitError { code, .. }) => exit_code = code,
                Err(err) => return Err(container_error(container, err)),
            }
        }
        Ok(exit_code)
    }
}

/// An inspection's answer as "exists": 404 is "no", other errors are errors.
fn found<T>(inspected: Result<T, BollardError>) -> Result<bool, Error> {
    match inspected {
        Ok(_) => Ok(true),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(err) => Err(unreachable(err)),
    }
}
