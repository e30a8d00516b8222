//! The benchmark's HTTP/1.1 connection, driven with raw bytes as wrk does (see [`RawConn`]); kept apart
//! from the load generator in [`crate::bench`] so each file holds one concern.

/// One keep-alive HTTP/1.1 connection driven with raw bytes, as wrk does: each request is formatted into a
/// reused buffer, and the response is parsed just enough (status, then `Content-Length` or chunked framing)
/// to find where it ends. This keeps the generator's own cost per request far below the server's.
pub struct RawConn {
    addr: String,
    /// Header lines sent with every request (the client token's `Authorization`), each ending in CRLF.
    extra_headers: String,
    stream: Option<tokio::net::TcpStream>,
    out: Vec<u8>,
    /// Read buffer: unconsumed bytes are `buf[pos..end]`.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl RawConn {
    pub fn new(addr: String, extra_headers: Option<String>) -> Self {
        Self {
            addr,
            extra_headers: extra_headers.unwrap_or_default(),
            stream: None,
            out: Vec::with_capacity(4096),
            buf: vec![0; 1 << 16],
            pos: 0,
            end: 0,
        }
    }

    /// Sends one request and reads its whole response; returns the status. On an error the connection is
    /// dropped (and reopened by the next request).
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let result = self.exchange(method, path, body).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    pub async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<u16> {
        use std::io::Write as _;
        use tokio::io::AsyncWriteExt;
        if self.stream.is_none() {
            let s = tokio::net::TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.pos = 0;
            self.end = 0;
        }
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n",
            self.addr,
            self.extra_headers,
            body.len()
        )?;
        self.out.extend_from_slice(body);
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        stream.write_all(&self.out).await?;
        // Head.
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n\r\n") {
                break self.pos + i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end])
            .map_err(|_| bad("response head is not UTF-8"))?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        self.pos = head_end;
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n") {
                        break self.pos + i;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[self.pos..line_end])
                    .map_err(|_| bad("bad chunk size"))?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad("bad chunk size"))?;
                self.pos = line_end + 2;
                self.need(size + 2).await?;
                self.pos += size + 2;
                if size == 0 {
                    break;
                }
            }
        } else {
            let n = length.unwrap_or(0);
            self.need(n).await?;
            self.pos += n;
        }
        Ok(status)
    }

    /// Reads until at least `n` unconsumed bytes are buffered.
    pub async fn need(&mut self, n: usize) -> std::io::Result<()> {
        while self.end - self.pos < n {
            self.fill().await?;
        }
        Ok(())
    }

    /// Reads more bytes from the socket into the buffer, making room first.
    pub async fn fill(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        let k = stream.read(&mut self.buf[self.end..]).await?;
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += k;
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}
