//! Helper containers: of the helper image, the volume at `/volume`, no
//! network, root, labelled as this agent's.

use mesbak_interface::Error;

use super::{HELPER_LABEL, MOUNT, Source};
use crate::app::App;
use crate::docker::Docker;
use crate::process::Outcome;

/// Who owns a helper container: the agent with this state folder (tests run
/// several agents beside each other).
pub(super) fn helper_owner(app: &App) -> String {
    app.config.state_dir.display().to_string()
}

pub(super) fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 6];
    openssl::rand::rand_bytes(&mut bytes)
        .map_err(|err| Error::Failed(format!("no random numbers for a helper's name: {err}")))?;
    Ok(hex::encode(bytes))
}

/// A container of the helper image with the volume at `/volume`, no network,
/// running as root, labelled as this agent's helper. `run` is what it runs
/// when started (archive helpers are never started).
fn helper_config(
    app: &App,
    source: &Source,
    read_only: bool,
    run: Option<(&str, &[&str])>,
) -> bollard::models::ContainerCreateBody {
    let bind = format!(
        "{}:{MOUNT}{}",
        source.volume,
        if read_only { ":ro" } else { "" }
    );
    let (entrypoint, cmd) = match run {
        Some((script, args)) => (
            Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                script.to_owned(),
                "mesbak".to_owned(),
            ]),
            args.iter().map(|arg| (*arg).to_owned()).collect(),
        ),
        // Never started; images without a command need one to be created.
        None => (None, vec!["true".to_owned()]),
    };
    bollard::models::ContainerCreateBody {
        image: Some(source.image.clone()),
        entrypoint,
        cmd: Some(cmd),
        user: Some("0:0".into()),
        working_dir: Some(MOUNT.into()),
        network_disabled: Some(true),
        labels: Some([(HELPER_LABEL.to_owned(), helper_owner(app))].into()),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(vec![bind]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the never-started archive helper; returns its name.
pub(super) async fn create_helper(
    app: &App,
    docker: &Docker,
    source: &Source,
    read_only: bool,
) -> Result<String, Error> {
    let name = format!("mesbak-helper-{}", random_id()?);
    docker
        .create_container(&name, helper_config(app, source, read_only, None))
        .await?;
    tracing::debug!(container = %name, image = %source.image, volume = %source.volume, "helper container created");
    Ok(name)
}

/// Removes a helper; a failure is logged (the next job or start retries).
pub(super) async fn remove_helper(docker: &Docker, name: &str) {
    if let Err(err) = docker.remove_container(name).await {
        tracing::warn!(container = name, error = %err.message(), "could not remove a helper container; the next Ignition job retries");
    }
}

/// Runs `script` with `sh` in a short-lived helper container on the volume.
pub(super) async fn run_script(
    app: &App,
    docker: &Docker,
    source: &Source,
    script: &str,
    args: &[&str],
) -> Result<Outcome, Error> {
    let name = format!("mesbak-helper-{}", random_id()?);
    docker
        .create_container(
            &name,
            helper_config(app, source, false, Some((script, args))),
        )
        .await?;
    let outcome = docker.run_to_exit(&name).await;
    remove_helper(docker, &name).await;
    outcome.map_err(|err| {
        Error::Docker(format!(
            "cannot run a shell in a helper container of image '{}' ({}); set ignition.helper_image to an image with a POSIX shell, e.g. busybox",
            source.image,
            err.message()
        ))
    })
}
