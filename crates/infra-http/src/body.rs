//! Request bodies, read with limits: the declared `Content-Length` is checked before a byte is read, and a
//! chunked body is cut off as soon as it passes the limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, StatusCode};

use crate::error::ApiError;

/// The body length the request declares in `Content-Length`, if it declares one.
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
    body: Incoming,
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
