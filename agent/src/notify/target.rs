//! `[notify] urls`, shoutrrr-style, parsed into delivery targets:
//!
//! - `generic+http://HOST[:PORT]/PATH` or `generic+https://...` (`generic://`
//!   is https): a JSON POST of every alert.
//! - `hc+http(s)://HOST/ping/UUID`: healthchecks-style pings: `/start` when a
//!   backup starts, the URL itself when it succeeds (or health recovers),
//!   `/fail` when it fails (or health turns unhealthy).
//! - `ntfy://[USER:PASSWORD@]HOST[:PORT]/TOPIC[?scheme=http]`: an ntfy
//!   message (https unless `scheme=http`).
//! - `smtp://[USER:PASSWORD@]HOST[:PORT]/?from=ADDR&to=ADDR[,ADDR]`: mail,
//!   STARTTLS required (port 587) unless `encryption=tls` (implicit TLS,
//!   port 465) or `encryption=none` (port 25, for a relay on this host).
//!
//! The parts that can hold secrets (passwords, paths and queries, which
//! carry tokens) are never shown: [`Target::describe`] gives scheme, host and
//! port only. This module depends on nothing else in the agent, so the
//! configuration check can use it.

use std::fmt;

use url::Url;

/// Where and how alerts go.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// JSON POST to `url`.
    Generic {
        url: Url,
    },
    /// Pings below `url`.
    Healthchecks {
        url: Url,
    },
    /// ntfy publish to `url` (scheme, host, topic), optional basic auth.
    Ntfy {
        url: Url,
        user: Option<String>,
        password: Option<String>,
    },
    Smtp(SmtpTarget),
}

#[derive(Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub encryption: SmtpEncryption,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpEncryption {
    /// STARTTLS, required: the mail is not sent in the clear.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// Plain SMTP; only for a relay on this host or a trusted network.
    None,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// Parses one URL; the error is one sentence without the URL's secrets.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| "is not a URL (expected SCHEME://HOST/...)".to_owned())?;
        let scheme = scheme.to_ascii_lowercase();
        let web = |inner: &str| -> Result<Url, String> {
            let url = Url::parse(&format!("{inner}://{rest}"))
                .map_err(|err| format!("is not a valid {scheme} URL ({err})"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("names no host ({scheme}://HOST/...)"));
            }
            Ok(url)
        };
        match scheme.as_str() {
            "generic" | "generic+https" => Ok(Target::Generic { url: web("https")? }),
            "generic+http" => Ok(Target::Generic { url: web("http")? }),
            "hc+https" | "hc+http" => {
                let url = web(&scheme[3..])?;
                if url.path().trim_matches('/').is_empty() {
                    return Err("names no check (hc+https://HOST/ping/UUID)".into());
                }
                Ok(Target::Healthchecks { url })
            }
            "ntfy" => {
                let parsed = web("https")?;
                let topic = parsed.path().trim_matches('/').to_owned();
                if topic.is_empty() || topic.contains('/') {
                    return Err("names no topic (ntfy://HOST/TOPIC)".into());
                }
                let mut scheme = "https".to_owned();
                for (key, value) in parsed.query_pairs() {
                    match key.as_ref() {
                        "scheme" if value == "http" || value == "https" => scheme = value.into(),
                        other => {
                            return Err(format!(
                                "has an unknown option '{other}' (ntfy takes scheme=http|https)"
                            ));
                        }
                    }
                }
                let mut url = Url::parse(&format!("{scheme}://{}/{topic}", host_port(&parsed)))
                    .map_err(|err| format!("is not a valid ntfy URL ({err})"))?;
                url.set_query(None);
                Ok(Target::Ntfy {
                    url,
                    user: non_empty(decode(parsed.username())),
                    password: parsed.password().map(decode),
                })
            }
            "smtp" => smtp(&web("smtp")?).map(Target::Smtp),
            other => Err(format!(
                "has the unknown scheme '{other}'; use generic+https://, generic+http://, hc+https://, hc+http://, ntfy:// or smtp://"
            )),
        }
    }

    /// Scheme, host and port: safe to log and show.
    pub fn describe(&self) -> String {
        match self {
            Target::Generic { url } => format!("generic+{}://{}", url.scheme(), host_port(url)),
            Target::Healthchecks { url } => format!("hc+{}://{}", url.scheme(), host_port(url)),
            Target::Ntfy { url, .. } => format!("ntfy://{} ({})", host_port(url), url.scheme()),
            Target::Smtp(smtp) => format!("smtp://{}:{}", smtp.host, smtp.port),
        }
    }
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => String::new(),
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn smtp(url: &Url) -> Result<SmtpTarget, String> {
    let host = url.host_str().unwrap_or_default().to_owned();
    let mut from = None;
    let mut to = Vec::new();
    let mut encryption = SmtpEncryption::StartTls;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "from" | "fromaddress" => from = Some(value.into_owned()),
            "to" => to.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned),
            ),
            "encryption" => {
                encryption = match value.to_ascii_lowercase().as_str() {
                    "starttls" | "explicittls" | "auto" => SmtpEncryption::StartTls,
                    "tls" | "implicittls" => SmtpEncryption::Tls,
                    "none" => SmtpEncryption::None,
                    other => {
                        return Err(format!(
                            "has encryption '{other}'; use starttls (the default), tls or none"
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "has an unknown option '{other}' (smtp takes from, to and encryption)"
                ));
            }
        }
    }
    let from = from.ok_or("names no sender (smtp://HOST/?from=ADDRESS&to=ADDRESS)")?;
    if to.is_empty() {
        return Err("names no recipient (smtp://HOST/?from=ADDRESS&to=ADDRESS)".into());
    }
    for address in std::iter::once(&from).chain(&to) {
        if address.parse::<lettre::Address>().is_err() {
            return Err(format!("has '{address}', which is not a mail address"));
        }
    }
    let port = url.port().unwrap_or(match encryption {
        SmtpEncryption::StartTls => 587,
        SmtpEncryption::Tls => 465,
        SmtpEncryption::None => 25,
    });
    Ok(SmtpTarget {
        host,
        port,
        user: non_empty(decode(url.username())),
        password: url.password().map(decode),
        from,
        to,
        encryption,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_hides_its_secrets() {
        let generic = Target::parse("generic+http://127.0.0.1:9000/hook?token=s3cret").unwrap();
        assert_eq!(generic.describe(), "generic+http://127.0.0.1:9000");
        let Target::Generic { url } = &generic else {
            panic!()
        };
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/hook?token=s3cret");
        assert_eq!(
            Target::parse("generic://example.invalid/x")
                .unwrap()
                .describe(),
            "generic+https://example.invalid"
        );

        let hc = Target::parse("hc+https://hc.example.invalid/ping/0f1e-uuid").unwrap();
        assert_eq!(hc.describe(), "hc+https://hc.example.invalid");

        let ntfy = Target::parse("ntfy://bob:pa%40ss@127.0.0.1:8080/plant7?scheme=http").unwrap();
        let Target::Ntfy {
            url,
            user,
            password,
        } = &ntfy
        else {
            panic!()
        };
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/plant7");
        assert_eq!(user.as_deref(), Some("bob"));
        assert_eq!(password.as_deref(), Some("pa@ss"));
        assert!(!format!("{ntfy:?}").contains("pa"));

        let smtp = Target::parse(
            "smtp://alerts:hunter2@127.0.0.1/?from=mesbak@plant.invalid&to=a@plant.invalid,b@plant.invalid",
        )
        .unwrap();
        let Target::Smtp(mail) = &smtp else { panic!() };
        assert_eq!(mail.port, 587);
        assert_eq!(mail.encryption, SmtpEncryption::StartTls);
        assert_eq!(mail.to.len(), 2);
        assert_eq!(mail.password.as_deref(), Some("hunter2"));
        assert_eq!(smtp.describe(), "smtp://127.0.0.1:587");
        assert!(!format!("{smtp:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_secrets() {
        for (text, want) in [
            ("not a url", "not a URL"),
            ("ftp://x/y", "unknown scheme 'ftp'"),
            ("generic+http://", "host"),
            ("hc+https://hc.example.invalid/", "no check"),
            ("ntfy://host/", "no topic"),
            ("ntfy://host/t?colour=red", "unknown option 'colour'"),
            ("smtp://u:secret@host/?to=a@b.invalid", "no sender"),
            ("smtp://u:secret@host/?from=a@b.invalid", "no recipient"),
            (
                "smtp://host/?from=nobody&to=a@b.invalid",
                "not a mail address",
            ),
            (
                "smtp://host/?from=a@b.invalid&to=a@b.invalid&encryption=ssl3",
                "encryption 'ssl3'",
            ),
        ] {
            let err = Target::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: {err}");
        }
    }
}
