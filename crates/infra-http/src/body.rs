//! Request bodies, read with limits: the declared `Content-Length` is checked before a byte is read, and a
//! chunked body is cut off as soon as it passes the limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, StatusCode};

use crate::error::ApiError;

/// Whether the request declares a body length (`Content-Length` or chunked `Transfer-Encoding`).
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

/// Reads the whole body, at most `limit` bytes. With `require_length`, a request with neither
/// `Content-Length` nor `Transfer-Encoding` gets 411 (HTTP/1.1 would read it as empty, which for a raw
/// value upload almost always means a broken client rather than an intended empty value).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    require_length: bool,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(headers)?;
    if let Some(len) = declared {
        if len > limit as u64 {
            return Err(too_large(Some(len), limit));
        }
    } else if require_length && !headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "this endpoint needs a Content-Length header or a chunked body",
        ));
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
