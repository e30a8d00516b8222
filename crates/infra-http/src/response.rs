//! Building responses: plain text, JSON, raw values, streamed JSON, and the answer to a write.

use http_body_util::BodyExt;
use hyper::{header, Response, StatusCode};
use kv_domain::Lsn;

use crate::error::{full, Body};
use crate::stream::ChannelBody;

/// The header that carries a write's LSN.
pub const LSN_HEADER: &str = "x-kv-lsn";

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response (200).
pub fn json(value: &serde_json::Value) -> Response<Body> {
    full_json(value.to_string())
}

/// A 200 JSON response of the already serialised `body`.
pub fn full_json(body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response with `status` and the write's LSN in [`LSN_HEADER`].
pub fn with_lsn(status: StatusCode, body: &serde_json::Value, lsn: Lsn) -> Response<Body> {
    let mut resp = json(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(LSN_HEADER, header::HeaderValue::from(lsn.0));
    resp
}

/// A value as raw bytes.
pub fn value(value: kv_domain::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.into_bytes()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// A streamed JSON response.
pub fn streamed_json(body: ChannelBody) -> Response<Body> {
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
