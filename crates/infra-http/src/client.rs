//! A small HTTP/1.1 client of this server's API over one keep-alive connection (hyper's low-level client),
//! used by the CLI and its load generator. It speaks the binary-safe `/v1` endpoints.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;

use crate::replication::Secret;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        /// host:port.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-request (the outcome of a write is unknown).
    #[error("connection to {addr} failed: {message}")]
    Connection {
        /// host:port.
        addr: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The server's `error` message.
        message: String,
    },
    /// No connection within the connect timeout (the request was not sent).
    #[error("cannot reach {addr}: no connection within {after:?} (connect timeout)")]
    ConnectTimeout {
        /// host:port.
        addr: String,
        /// The timeout that fired.
        after: std::time::Duration,
    },
    /// No complete answer within the request timeout (the outcome of a write is unknown).
    #[error("no answer from {addr} within {after:?} (request timeout); the outcome of a write is unknown")]
    RequestTimeout {
        /// host:port.
        addr: String,
        /// The timeout that fired.
        after: std::time::Duration,
    },
    /// The URL or the answer could not be understood.
    #[error("{0}")]
    Invalid(String),
}

/// A key/value pair of a listing.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One connection to a server.
#[derive(Debug)]
pub struct Client {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Bound on opening the TCP connection; `None`: the operating system's.
    connect_timeout: Option<std::time::Duration>,
    /// Bound on one request, from sending it to the last byte of the answer; `None`: unbounded.
    request_timeout: Option<std::time::Duration>,
    /// Sent as `Authorization: Bearer <token>` with every request (a client token: `crate::auth`).
    bearer: Option<hyper::header::HeaderValue>,
    /// For an `https://` URL: the server's name to verify its certificate against.
    tls: Option<rustls::pki_types::ServerName<'static>>,
}

/// An error with its causes: hyper's own message ("connection error") hides why, such as the TLS alert
/// of a server that refused this client's certificate.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// HTTP/1.1 over `io`, its connection driven by a task of its own.
async fn handshake<I>(addr: &str, io: I) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Connection {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Percent-encodes every byte outside `[A-Za-z0-9-._~]` (a path segment or query value).
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of `url` (`http://host:port` or `https://host:port`, a trailing slash allowed). Connects
    /// lazily. An `https://` URL needs this process's TLS client configuration
    /// ([`crate::tls::set_client_config`]): the server's certificate is verified against its CAs, for the
    /// URL's host.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(ClientError::Invalid(format!(
                    "{url:?}: only http:// and https:// URLs are supported"
                )))
            }
        };
        let addr = rest.trim_end_matches('/').to_string();
        if addr.is_empty() || addr.contains('/') {
            return Err(ClientError::Invalid(format!(
                "{url:?} is not http(s)://host:port"
            )));
        }
        // `host:port`, `[v6]:port`; a bare `[v6]` or `host` gets the scheme's port.
        let has_port = match addr.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => addr.contains(':'),
        };
        let addr = if has_port {
            addr
        } else if https {
            format!("{addr}:443")
        } else {
            format!("{addr}:80")
        };
        let tls = if https {
            if crate::tls::client_config().is_none() {
                return Err(ClientError::Invalid(format!(
                    "{url:?}: https needs a CA to verify the server with (kv-server: TLS_CA_FILE; kvctl: --cacert)"
                )));
            }
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            Some(
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                    ClientError::Invalid(format!("{url:?}: {host:?} is not a server name: {e}"))
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            addr,
            sender: None,
            connect_timeout: None,
            request_timeout: None,
            bearer: None,
            tls,
        })
    }

    /// Sends `token` as `Authorization: Bearer <token>` with every request; refuses a token that cannot
    /// be a header value (the message does not show it).
    pub fn with_bearer(mut self, token: Option<&Secret>) -> Result<Self, ClientError> {
        self.bearer = match token {
            None => None,
            Some(t) => {
                let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| {
                        ClientError::Invalid(
                            "the token holds characters a header cannot carry".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(self)
    }

    /// Bounds connecting and each request (`None`: no bound, the default).
    pub fn with_timeouts(
        mut self,
        connect: Option<std::time::Duration>,
        request: Option<std::time::Duration>,
    ) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            // One bound for the TCP connect and the TLS handshake together.
            let deadline = self
                .connect_timeout
                .map(|after| tokio::time::Instant::now() + after);
            let connecting = tokio::net::TcpStream::connect(&self.addr);
            let connected = match self.connect_timeout {
                Some(after) => tokio::time::timeout(after, connecting).await.map_err(|_| {
                    ClientError::ConnectTimeout {
                        addr: self.addr.clone(),
                        after,
                    }
                })?,
                None => connecting.await,
            };
            let stream = connected.map_err(|source| ClientError::Unreachable {
                addr: self.addr.clone(),
                source,
            })?;
            let _ = stream.set_nodelay(true);
            let sender = match &self.tls {
                None => handshake(&self.addr, stream).await?,
                Some(name) => {
                    let Some(config) = crate::tls::client_config() else {
                        return Err(ClientError::Invalid(
                            "https needs a CA to verify the server with".into(),
                        ));
                    };
                    // Before the request, and under the connect bound (a server at its connection
                    // cap accepts TCP from its backlog but shakes no hands): a failure the client
                    // sees here means it was not sent. (With TLS 1.3 a server refuses a client
                    // certificate only after the client finished: that refusal comes with the first
                    // read, as a connection error, and a write's outcome is then unknown.)
                    let shaking =
                        tokio_rustls::TlsConnector::from(config).connect(name.clone(), stream);
                    let shaken = match (deadline, self.connect_timeout) {
                        (Some(at), Some(after)) => tokio::time::timeout_at(at, shaking)
                            .await
                            .map_err(|_| ClientError::ConnectTimeout {
                                addr: self.addr.clone(),
                                after,
                            })?,
                        _ => shaking.await,
                    };
                    let stream = shaken.map_err(|e| ClientError::Unreachable {
                        addr: self.addr.clone(),
                        source: std::io::Error::other(format!("TLS handshake failed: {e}")),
                    })?;
                    handshake(&self.addr, stream).await?
                }
            };
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("no connection".into()))
    }

    /// Sends one request; returns the status and body of any answer (errors only for transport failures).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (status, _, body) = self.send_with(method, path, &[], body).await?;
        Ok((status, body))
    }

    /// Like [`Client::send`], with extra request headers, returning the answer's headers too.
    /// [`ClientError::Unreachable`] means the request was never sent; [`ClientError::Connection`] that it
    /// may have been (a write's outcome is then unknown).
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let Some(after) = self.request_timeout else {
            return self.exchange(method, path, headers, body).await;
        };
        match tokio::time::timeout(after, self.exchange(method, path, headers, body)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The connection is mid-request: never reuse it.
                self.sender = None;
                Err(ClientError::RequestTimeout {
                    addr: self.addr.clone(),
                    after,
                })
            }
        }
    }

    /// One request and its whole answer, unbounded in time (see [`Client::send_with`]).
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Bytes,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let addr = self.addr.clone();
        let bearer = self.bearer.clone();
        let sender = self.connect().await?;
        // Not ready means the connection closed before this request was written: it was not sent.
        sender.ready().await.map_err(|e| ClientError::Unreachable {
            addr: addr.clone(),
            source: std::io::Error::other(e),
        })?;
        // hyper sends no Content-Length for an empty body; a server may then answer 411, so every method
        // that can carry content states its length, 0 included (RFC 9110 §8.6 leaves GET and HEAD without).
        let length = (method != Method::GET && method != Method::HEAD).then(|| body.len());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.as_str())
            .body(Full::new(body))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if let Some(len) = length {
            req.headers_mut().insert(
                hyper::header::CONTENT_LENGTH,
                hyper::header::HeaderValue::from(len),
            );
        }
        if let Some(v) = bearer {
            req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
        }
        for (name, value) in headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Connection {
                addr: addr.clone(),
                message: with_causes(&e),
            })?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Connection {
                addr,
                message: with_causes(&e),
            })?
            .to_bytes();
        Ok((status, parts.headers, body))
    }

    /// Like `send`, but a non-2xx answer becomes [`ClientError::Status`] with the server's message.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let (status, body) = self.send(method, path, body).await?;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<Json>(&body)
            .ok()
            .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        Err(ClientError::Status { status, message })
    }

    fn lsn(body: &[u8]) -> Result<u64, ClientError> {
        serde_json::from_slice::<Json>(body)
            .ok()
            .and_then(|j| j.get("lsn").and_then(Json::as_u64))
            .ok_or_else(|| ClientError::Invalid("the answer carries no LSN".into()))
    }

    /// Stores `value` under `key`; returns the LSN.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        let body = self
            .call(
                Method::PUT,
                &format!("/v1/kv/{}", percent_encode(key)),
                Bytes::copy_from_slice(value),
            )
            .await?;
        Self::lsn(&body)
    }

    /// The value of `key`, or `None` when absent.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self
            .call(
                Method::GET,
                &format!("/v1/kv/{}", percent_encode(key)),
                Bytes::new(),
            )
            .await
        {
            Ok(v) => Ok(Some(v.to_vec())),
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; returns the LSN.
    pub async fn delete(&mut self, key: &[u8]) -> Result<u64, ClientError> {
        let body = self
            .call(
                Method::DELETE,
                &format!("/v1/kv/{}", percent_encode(key)),
                Bytes::new(),
            )
            .await?;
        Self::lsn(&body)
    }

    /// Applies string pairs atomically (`/batchput`); returns the LSN.
    pub async fn batch(&mut self, pairs: &[(String, String)]) -> Result<u64, ClientError> {
        let object: serde_json::Map<String, Json> = pairs
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect();
        let body = self
            .call(
                Method::POST,
                "/batchput",
                Bytes::from(Json::Object(object).to_string()),
            )
            .await?;
        Self::lsn(&body)
    }

    /// One page of the listing from `start` to `end` (inclusive, either optional), after `cursor`.
    /// Returns the pairs and the cursor of the next page, if any.
    pub async fn list_page(
        &mut self,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Pair>, Option<String>), ClientError> {
        let mut path = format!("/v1/kv?encoding=base64&limit={limit}");
        if let Some(s) = start {
            path.push_str(&format!("&start={}", percent_encode(s)));
        }
        if let Some(e) = end {
            path.push_str(&format!("&end={}", percent_encode(e)));
        }
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let body = self.call(Method::GET, &path, Bytes::new()).await?;
        let page: Json = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Invalid(format!("bad listing: {e}")))?;
        let decode = |item: &Json, field: &str| -> Result<Vec<u8>, ClientError> {
            let text = item
                .get(field)
                .and_then(Json::as_str)
                .ok_or_else(|| ClientError::Invalid(format!("listing item lacks {field}")))?;
            STANDARD
                .decode(text)
                .map_err(|e| ClientError::Invalid(format!("bad base64 in listing: {e}")))
        };
        let items = page
            .get("items")
            .and_then(Json::as_array)
            .ok_or_else(|| ClientError::Invalid("listing lacks items".into()))?;
        let pairs = items
            .iter()
            .map(|i| Ok((decode(i, "key_base64")?, decode(i, "value_base64")?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let next = page
            .get("next_cursor")
            .and_then(Json::as_str)
            .map(str::to_string);
        Ok((pairs, next))
    }

    /// Runs a compaction on the server; returns its report.
    pub async fn compact(&mut self) -> Result<Json, ClientError> {
        let body = self
            .call(Method::POST, "/v1/admin/compact", Bytes::new())
            .await?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Invalid(format!("bad compaction report: {e}")))
    }

    /// A cluster call (`GET /v1/cluster` or `POST /v1/cluster/{op}` with a JSON body), carrying the
    /// replication `token` when given; the answer's JSON.
    pub async fn cluster(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<Json, ClientError> {
        let mut headers = vec![(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        )];
        if let Some(v) = token.and_then(|t| hyper::header::HeaderValue::from_str(t).ok()) {
            headers.push((
                hyper::header::HeaderName::from_static("x-kv-replication-token"),
                v,
            ));
        }
        let (status, _, body) = self.send_with(method, path, &headers, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Json>(&body)
                .ok()
                .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Invalid(format!("bad answer: {e}")))
    }

    /// The server's status document.
    pub async fn status(&mut self) -> Result<Json, ClientError> {
        let body = self.call(Method::GET, "/v1/status", Bytes::new()).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Invalid(format!("bad status: {e}")))
    }
}

/// The cursor the server would give after `key` (for callers that page by themselves).
pub fn cursor_after(key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips_through_the_server_decoder() {
        let raw = b"a b/c%\x00\xff~";
        let enc = percent_encode(raw);
        assert_eq!(enc, "a%20b%2Fc%25%00%FF~");
        assert_eq!(crate::request::percent_decode(&enc, false).unwrap(), raw);
    }

    #[test]
    fn urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:8080/").is_ok());
        // No TLS client configuration in this test process: https is refused, never downgraded.
        let refused = Client::new("https://x").unwrap_err().to_string();
        assert!(refused.contains("TLS_CA_FILE"), "{refused}");
        assert!(Client::new("http://x/y").is_err());
        assert!(Client::new("ftp://x").is_err());
        for (url, addr) in [
            ("http://h", "h:80"),
            ("http://h:81", "h:81"),
            ("http://[::1]", "[::1]:80"),
            ("http://[::1]:8080/", "[::1]:8080"),
            ("http://10.0.0.1", "10.0.0.1:80"),
        ] {
            assert_eq!(Client::new(url).unwrap().addr, addr, "{url}");
        }
    }
}
