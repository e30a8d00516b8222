//! The Go system's API: `/put`, `/read`, `/readrange`, `/batchput`, `/delete`, `/health-check`.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/put` | JSON `{"key", "value"}` (`data` accepted for `value`: the Go client sends it) |
//! | GET, HEAD | `/read?key=K` | raw value bytes; 404 when absent |
//! | GET, HEAD | `/readrange?start=A&end=B[&limit=N]` | JSON object key -> value, ascending, inclusive, streamed |
//! | POST | `/batchput` | JSON object of string pairs (at least one, keys distinct), applied atomically |
//! | POST, DELETE | `/delete?key=K` | idempotent delete |
//! | GET, HEAD | `/health-check` | `OK` (liveness) |

use hyper::{Method, Request, Response, StatusCode};
use kv_app::{KvService, Pager};
use kv_domain::{Entry, KeyRange, Write, WriteBatch};
use serde::Deserialize;

use super::write::Writes;
use crate::body::RequestBody;
use crate::error::{ApiError, Body};
use crate::json::StringPairs;
use crate::request::{json_body, limit_param, query, required};
use crate::response;

#[derive(Deserialize)]
struct PutRequest {
    key: String,
    value: Option<String>,
    data: Option<String>,
}

/// `POST /put`.
pub async fn put(w: Writes<'_>, req: Request<RequestBody>) -> Result<Response<Body>, ApiError> {
    let bytes = json_body(req, w.max_body).await?;
    let body: PutRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let value = match (body.value, body.data) {
        (Some(v), None) | (None, Some(v)) => v,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either \"value\" or \"data\", not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("missing field \"value\"")),
    };
    let payload = body.key.len() + value.len();
    let lsn = w
        .submit(Write::Put {
            key: body.key.as_bytes(),
            value: value.as_bytes(),
        })
        .await?;
    Ok(w.written(lsn, payload).await)
}

/// `GET /read`.
pub fn read(service: &KvService, req: &Request<RequestBody>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let key = required(&params, "key")?;
    // A read is one keydir lookup and one positional read of (usually cached) bytes: run it inline.
    Ok(response::value(service.read(key)?))
}

/// `POST /batchput`.
pub async fn batch_put(
    w: Writes<'_>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let bytes = json_body(req, w.max_body).await?;
    let StringPairs(pairs) = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body (expected an object of string values with distinct keys): {e}"
        ))
    })?;
    // An empty batch writes nothing, so it has no LSN of its own to answer with.
    if pairs.is_empty() {
        return Err(ApiError::bad_request(
            "empty batch: the object must hold at least one key",
        ));
    }
    let mut batch = WriteBatch::new();
    let mut payload = 0;
    for (k, v) in pairs {
        payload += k.len() + v.len();
        batch.put(k, v);
    }
    let lsn = w.submit(Write::Batch(&batch)).await?;
    Ok(w.written(lsn, payload).await)
}

/// `POST|DELETE /delete`.
pub async fn delete(w: Writes<'_>, req: &Request<RequestBody>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let key = required(&params, "key")?;
    let payload = key.len();
    let lsn = w.submit(Write::Delete { key }).await?;
    Ok(w.written(lsn, payload).await)
}

/// `GET /health-check`.
pub fn health_check() -> Response<Body> {
    response::text(StatusCode::OK, "OK")
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, std::io::Error> {
    std::str::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what} is not valid UTF-8; /readrange serves text only, use GET /v1/kv?encoding=base64"))
    })
}

/// `/readrange`: a JSON object streamed page by page; aborted (truncated body) if a key or value is not
/// UTF-8, since JSON strings could only carry it altered.
pub fn read_range(
    service: &KvService,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let start = required(&params, "start")?.to_vec();
    let end = required(&params, "end")?.to_vec();
    let limit = limit_param(&params, usize::MAX, usize::MAX)?;
    // Validate (bounds order) and fetch the first page before answering 200, so bad input gets its status.
    let walk = super::Walk::start(service, KeyRange::inclusive(start, end), limit)?;
    let head = req.method() == Method::HEAD;
    let item = |e: &Entry, sent: usize, out: &mut Vec<u8>| {
        let k = utf8(&e.key, "a key")?;
        let v = utf8(&e.value, &format!("the value of key {k:?}"))?;
        if sent > 0 {
            out.push(b',');
        }
        crate::json::write_str(out, k);
        out.push(b':');
        crate::json::write_str(out, v);
        Ok(())
    };
    let close = |_: &KvService, _: &Pager| String::from("}");
    Ok(super::answer_walk(
        "/readrange",
        walk,
        head,
        "{",
        item,
        close,
    ))
}
