//! Streamed response bodies. A producer (a blocking task paging through the engine) sends chunks into a
//! bounded channel; the body yields them as hyper asks. The bound gives back-pressure: a slow client slows
//! the producer instead of growing memory, so a range of any size is served in bounded memory.
//!
//! A client that stops reading stops the producer too, holding what is in flight: the page being sent
//! (at most 256 entries read from the engine), [`CHANNEL_CHUNKS`] chunks of about 64 KiB each, hyper's
//! write buffer and the socket's send buffer. The server's write timeout ([`crate::stall`]) bounds how
//! long: it closes the connection, which drops this body, and the producer's next send fails and ends it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

/// Chunks in flight per streamed response.
pub const CHANNEL_CHUNKS: usize = 4;

/// A body fed by a channel. An `Err` chunk aborts the response (the client sees a truncated body and a
/// closed connection, never a well-formed but wrong answer).
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn channel() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        (tx, Self { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}
