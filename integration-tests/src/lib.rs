//! Helpers shared by the process-level tests (the tests themselves live in `tests/`): locating and running
//! the real `kv-server` binary, and a minimal blocking HTTP/1.1 client.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod docker;
pub mod histories;
pub mod pki;
pub mod topology;
pub mod wgl;

/// A binary of this workspace (`kv-server`, `kvctl`) from the same build profile as this test
/// (`make test` builds them first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().and_then(|p| p.parent()).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first with `cargo build --bins` (make test does)",
        path.display()
    );
    path
}

/// The client token every request of [`Client`] carries (`Authorization: Bearer`, unless the caller
/// sends its own): the container tests run their servers with it as an `admin` token; a server without
/// a token file ignores it.
pub const CLIENT_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `kv-server` child process, killed on drop.
#[derive(Debug)]
pub struct Server {
    /// The child.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A minimal blocking HTTP/1.1 client: one connection per request (`Connection: close`), over plain
/// TCP or, made by [`Client::tls`], over TLS verified against the tests' CA ([`pki`]).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The server's address.
    pub addr: SocketAddr,
    /// TLS, verifying the server as `localhost` and presenting the tests' client certificate.
    tls: Option<&'static std::sync::Arc<rustls::ClientConfig>>,
}

impl Server {
    /// Starts the server on `port` with `data_dir` and extra arguments, and waits until it answers.
    pub fn start(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> Server {
        Self::start_logging(data_dir, port, extra, Stdio::inherit())
    }

    /// [`Server::start`], its log (stderr) going to `log`.
    pub fn start_logging(
        data_dir: &std::path::Path,
        port: u16,
        extra: &[&str],
        log: impl Into<Stdio>,
    ) -> Server {
        let child = Command::new(binary("kv-server"))
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--data-path",
                data_dir.to_str().unwrap(),
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("KV_TEST_LOG").unwrap_or_else(|_| "warn,openraft=error".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = server.client().try_request("GET", "/health-check", b"") {
                if r.0 == 200 {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kv-server did not become healthy on {}", server.addr);
    }

    /// Sends a signal to the child (`TERM`, `KILL`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the child to exit, returning its exit code (None when killed by a signal).
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }
}

impl Client {
    /// A plain-HTTP client of `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// A client of `addr` over TLS: the server must present a certificate of [`pki::pki`]'s CA for
    /// `localhost`, and is shown the tests' client certificate (for servers requiring one).
    pub fn tls(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: Some(pki::pki().client_config()),
        }
    }

    /// A plain-HTTP client of 127.0.0.1:`port`.
    pub fn local(port: u16) -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Whether this client speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// One request: (status, body).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One request; an I/O error if the server is unreachable or closes early.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.try_request_with(method, path, &[], body)
    }

    /// One request with extra headers.
    pub fn try_request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.try_exchange(method, path, headers, body)
            .map(|r| (r.status, r.body))
    }

    /// One request with extra headers: the whole answer, headers included.
    pub fn try_exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut extra: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        {
            extra.push_str(&format!("Authorization: Bearer {CLIENT_TOKEN}\r\n"));
        }
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(body);
        let raw = match self.tls {
            None => exchange(tcp, &req)?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                exchange(rustls::StreamOwned::new(conn, tcp), &req)?
            }
        };
        let answer = parse_answer(&raw)?;
        // An answer cut off mid-body (a server killed while answering) is no answer. A HEAD answer
        // declares the length of a body it does not carry.
        let declared = answer
            .header("content-length")
            .and_then(|n| n.parse::<usize>().ok());
        if method != "HEAD" && declared.is_some_and(|n| answer.body.len() < n) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the answer ended before its Content-Length",
            ));
        }
        Ok(answer)
    }
}

/// Writes `req` and reads until the server closes. Over TLS, a close without `close_notify` ends the
/// read with `UnexpectedEof`: the bytes that came before it are the answer, as over plain TCP (where
/// an early close is no error either); none at all is the error.
fn exchange(mut s: impl Read + Write, req: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(req)?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(e);
        }
    }
    Ok(raw)
}

/// The answer in `raw`, the bytes of a whole `Connection: close` exchange (any transport);
/// `UnexpectedEof` when they hold no HTTP answer.
pub fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = &raw[split + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok(Answer {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
        head,
    })
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as received.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes a chunked body (streamed responses).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = b.get(eol + 4 + size..).unwrap_or_default();
    }
    out
}
