//! Real alert receivers on loopback: an HTTP server (hyper) that records
//! every request and answers with programmed status codes, and Debian's
//! `python3-aiosmtpd` as an SMTP server with STARTTLS (a throwaway
//! self-signed certificate) writing a maildir.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;

use crate::util::{free_port, run, tail_file};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }
}

/// An HTTP/1.1 server on 127.0.0.1 for the test's lifetime (a task of the
/// test's runtime).
pub struct HttpReceiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpReceiver {
    /// Starts listening on a free port; answers 200 unless told otherwise.
    pub async fn start() -> HttpReceiver {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|err| panic!("cannot listen on 127.0.0.1:{port}: {err}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::new()));
        let (rec, ans) = (received.clone(), answers.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rec, ans) = (rec.clone(), ans.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (rec, ans) = (rec.clone(), ans.clone());
                            async move {
                                let method = request.method().to_string();
                                let path = request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (
                                            n.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                rec.lock().unwrap().push(Received {
                                    method,
                                    path,
                                    headers,
                                    body,
                                });
                                let status = ans.lock().unwrap().pop_front().unwrap_or(200);
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpReceiver {
            port,
            received,
            answers,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next requests get these status codes, in order (then 200).
    pub fn answer_with(&self, codes: &[u16]) {
        self.answers.lock().unwrap().extend(codes.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a request that `matches`; panics with what
    /// did arrive otherwise.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.received().into_iter().find(|r| matches(r)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no request with {what} within {} s; received: {:#?}",
                timeout.as_secs(),
                self.received()
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.text()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `python3 -m aiosmtpd` on 127.0.0.1 with STARTTLS required, writing every
/// mail to a maildir. Killed on drop.
pub struct SmtpServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl SmtpServer {
    /// Makes a self-signed certificate for 127.0.0.1 (`openssl req`) and
    /// starts the server; waits until it accepts connections.
    pub fn start() -> SmtpServer {
        let dir = tempfile::Builder::new()
            .prefix("mesbak-test-smtp-")
            .tempdir()
            .expect("a folder for the SMTP server");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            None,
        )
        .unwrap_or_else(|err| {
            panic!("cannot make a test certificate (Debian package openssl): {err:#}")
        });
        let maildir = dir.path().join("maildir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("smtpd.log")).unwrap();
        // Debian's python: the pyenv one on PATH lacks the Debian package.
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg("--tlscert")
            .arg(&cert)
            .arg("--tlskey")
            .arg(&key)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run /usr/bin/python3 -m aiosmtpd (Debian package python3-aiosmtpd; dev/test installs it): {err}")
            });
        let mut server = SmtpServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}): {} (Debian package python3-aiosmtpd; dev/test installs it)",
                    tail_file(&server.dir.path().join("smtpd.log"), 20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate the server presents (for SSL_CERT_FILE).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Every mail received so far, as raw text.
    pub fn mails(&self) -> Vec<String> {
        let new = self.dir.path().join("maildir/new");
        let mut mails: Vec<String> = std::fs::read_dir(&new)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        mails.sort();
        mails
    }

    pub fn log(&self) -> String {
        tail_file(&self.dir.path().join("smtpd.log"), 40)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- aiosmtpd log ---\n{}\n---", self.log());
        }
    }
}
