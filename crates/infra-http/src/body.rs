//! The body layer: every request and response body passes through a [`Counted`] body, which adds its
//! bytes to the metrics (`kv_http_request_bytes_total`, `kv_http_response_bytes_total`) as they are read
//! or sent; nothing else counts them. Request bodies are read with limits: the declared `Content-Length`
//! is checked before a byte is read, and a chunked body is cut off as soon as it passes the limit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{header, HeaderMap, StatusCode};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The request body every handler receives.
pub type RequestBody = Counted<Incoming>;

/// Which way a [`Counted`] body's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request body, read from the client.
    In,
    /// A response body, sent to the client.
    Out,
}

/// A body whose data bytes are counted in the metrics as they pass (a body never polled, such as that of
/// a HEAD response, counts nothing). Length and end-of-stream hints pass through unchanged, so a
/// complete body keeps its `Content-Length`.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl<B> Counted<B> {
    /// Counts `inner`'s bytes in `metrics`.
    pub fn new(inner: B, metrics: Arc<Metrics>, direction: Direction) -> Self {
        Self {
            inner,
            metrics,
            direction,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                match this.direction {
                    Direction::In => this.metrics.add_bytes_in(data.len()),
                    Direction::Out => this.metrics.add_bytes_out(data.len()),
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body length the request declares in `Content-Length`, if it declares one. Only that header is
/// read: a chunked body declares no length, and [`read_body`] enforces the limit while it streams.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid Content-Length header")),
        None => Ok(None),
    }
}

/// Reads the whole body, at most `limit` bytes. A request with neither `Content-Length` nor
/// `Transfer-Encoding` has an empty body (RFC 9112 §6.3), so a bodyless raw `PUT` stores an empty value
/// (it used to be refused with 411, which broke clients such as `kvctl put k ''`).
pub async fn read_body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(len) = declared_length(headers)? {
        if len > limit as u64 {
            return Err(too_large(Some(len), limit));
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(None, limit)),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn too_large(len: Option<u64>, limit: usize) -> ApiError {
    let what = len.map_or_else(
        || "the body".to_string(),
        |l| format!("a body of {l} bytes"),
    );
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} exceeds the limit of {limit} bytes"),
    )
}
