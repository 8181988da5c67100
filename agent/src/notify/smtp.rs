//! Mail with lettre: STARTTLS required unless the URL says otherwise; the
//! system's OpenSSL and CA store (SSL_CERT_FILE is honoured) check the
//! server.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Event, SmtpEncryption, SmtpTarget};

pub async fn send(target: &SmtpTarget, event: &Event) -> Result<(), String> {
    let mut message = Message::builder()
        .from(
            target
                .from
                .parse()
                .map_err(|err| format!("bad sender: {err}"))?,
        )
        .subject(format!("[mesbak] {}: {}", event.host, event.what))
        .header(ContentType::TEXT_PLAIN);
    for to in &target.to {
        message = message.to(to.parse().map_err(|err| format!("bad recipient: {err}"))?);
    }
    let body = format!(
        "{}\n\nHost:   {}\nEvent:  {}\nTime:   {}\n{}",
        event.message,
        event.host,
        event.kind.name(),
        event.time,
        event
            .backup
            .as_ref()
            .map(|b| format!("Backup: {b}\n"))
            .unwrap_or_default()
    );
    let message = message
        .body(body)
        .map_err(|err| format!("cannot build the mail: {err}"))?;
    let tls = || {
        TlsParameters::new(target.host.clone())
            .map_err(|err| format!("cannot set up TLS for {}: {err}", target.host))
    };
    let tls = match target.encryption {
        SmtpEncryption::StartTls => Tls::Required(tls()?),
        SmtpEncryption::Tls => Tls::Wrapper(tls()?),
        SmtpEncryption::None => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host)
        .port(target.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let Some(user) = &target.user {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            target.password.clone().unwrap_or_default(),
        ));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|err| format!("the mail server refused or failed: {err}"))
}
