//! Delivery over HTTP(S): the generic JSON webhook, healthchecks pings and
//! ntfy, with reqwest (system OpenSSL for TLS). Errors never carry the URL.

use std::time::Duration;

use super::{Event, EventKind, Target};

/// One request may take this long, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("mesbak-agent/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry a token to another host.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| err.without_url().to_string())
}

pub async fn send(client: &reqwest::Client, target: &Target, event: &Event) -> Result<(), String> {
    let request = match target {
        Target::Generic { url } => client.post(url.clone()).json(event),
        Target::Healthchecks { url } => {
            let suffix = match event.kind {
                EventKind::BackupStarted => "/start",
                EventKind::BackupSucceeded | EventKind::HealthRecovered => "",
                _ => "/fail",
            };
            let mut url = url.clone();
            let path = format!("{}{suffix}", url.path().trim_end_matches('/'));
            url.set_path(&path);
            client.post(url).body(event.message.clone())
        }
        Target::Ntfy {
            url,
            user,
            password,
        } => {
            let priority = match event.status {
                "failure" => "high",
                "warning" => "default",
                _ => "low",
            };
            let tags = match event.status {
                "failure" => "rotating_light",
                "warning" => "warning",
                _ => "white_check_mark",
            };
            let mut request = client
                .post(url.clone())
                .header("Title", format!("mesbak on {}: {}", event.host, event.what))
                .header("Priority", priority)
                .header("Tags", tags)
                .body(event.message.clone());
            if let Some(user) = user {
                request = request.basic_auth(user, password.as_deref());
            }
            request
        }
        Target::Smtp(_) => return Err("not an HTTP target".into()),
    };
    let response = request
        .send()
        .await
        .map_err(|err| err.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}
