//! The binary-safe `/v1` key-value API.
//!
//! | method | path | what |
//! |---|---|---|
//! | PUT, GET, HEAD, DELETE | `/v1/kv/{key}` | raw bytes; the key percent-encoded in the path (binary-safe) |
//! | GET, HEAD | `/v1/kv?start&end&limit&cursor&encoding` | a page of a listing, streamed, with a cursor to continue |

use std::ops::Bound;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hyper::{Method, Request, Response};
use kv_app::{AppError, KvService, Pager};
use kv_domain::{Entry, Key, KeyRange, Write};

use super::write::Writes;
use crate::body::{read_body, RequestBody};
use crate::error::{ApiError, Body};
use crate::request::{limit_param, percent_decode, query};
use crate::response;
use crate::route::KV_KEY_PREFIX;

/// Default and maximum page size of the `/v1/kv` listing.
const LISTING_DEFAULT: usize = 1000;
const LISTING_MAX: usize = 10_000;

/// `/v1/kv/{key}`: GET and HEAD read, PUT and DELETE write.
pub async fn kv_key(w: Writes<'_>, req: Request<RequestBody>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path();
    // Every leading repetition of the prefix is stripped, as before the route table: `/v1/kv//v1/kv/x`
    // names key `x` (changing that would change which key an existing client writes).
    let key = percent_decode(path.trim_start_matches(KV_KEY_PREFIX), false)?;
    if key.is_empty() {
        return Err(AppError::EmptyKey.into());
    }
    match *req.method() {
        Method::GET | Method::HEAD => Ok(response::value(w.service.read(&key)?)),
        Method::DELETE => {
            let payload = key.len();
            let lsn = w.submit(Write::Delete { key: &key }).await?;
            Ok(w.written(lsn, payload).await)
        }
        _ => {
            let (parts, body) = req.into_parts();
            let value = read_body(&parts.headers, body, w.max_body).await?;
            let payload = key.len() + value.len();
            let lsn = w
                .submit(Write::Put {
                    key: &key,
                    value: &value,
                })
                .await?;
            Ok(w.written(lsn, payload).await)
        }
    }
}

/// Writes `"name":"..."` for `bytes`: as a JSON string when it is UTF-8 (and base64 is not forced), else
/// as `"name_base64":"..."`.
fn write_field(out: &mut Vec<u8>, name: &str, bytes: &[u8], force_base64: bool) {
    match (force_base64, std::str::from_utf8(bytes)) {
        (false, Ok(s)) => {
            crate::json::write_str(out, name);
            out.push(b':');
            crate::json::write_str(out, s);
        }
        _ => {
            crate::json::write_str(out, &format!("{name}_base64"));
            out.push(b':');
            crate::json::write_str(out, &STANDARD.encode(bytes));
        }
    }
}

/// `/v1/kv` listing: `{"items":[{"key":..,"value":..},...],"next_cursor":..}`, streamed. A key or value that is
/// not UTF-8 (or every one, with `encoding=base64`) comes as `key_base64` / `value_base64` instead.
pub fn listing(
    service: &KvService,
    req: &Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let force_base64 = match params.get("encoding").map(Vec::as_slice) {
        None | Some(b"utf8") => false,
        Some(b"base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding must be utf8 or base64, not {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let limit = limit_param(&params, LISTING_DEFAULT, LISTING_MAX)?;
    let bound = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .map_or(Bound::Unbounded, |v| Bound::Included(Key::from(v.clone())))
    };
    let mut range = KeyRange {
        start: bound("start"),
        end: bound("end"),
    };
    if let Some(cursor) = params.get("cursor").filter(|c| !c.is_empty()) {
        let last = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| ApiError::bad_request("invalid cursor"))?;
        range = range.after(&last);
    }
    let walk = super::Walk::start(service, range, limit)?;
    let head = req.method() == Method::HEAD;
    let item = move |e: &Entry, sent: usize, out: &mut Vec<u8>| {
        if sent > 0 {
            out.push(b',');
        }
        out.push(b'{');
        write_field(out, "key", &e.key, force_base64);
        out.push(b',');
        write_field(out, "value", &e.value, force_base64);
        out.push(b'}');
        Ok(())
    };
    // A cursor only when the page is full and something follows it.
    let close = |service: &KvService, pager: &Pager| {
        let next = match pager.last_key() {
            Some(l) if pager.reached_limit() => {
                match service.read_range_page(&pager.range().after(l), 1) {
                    Ok(p) if !p.is_empty() => {
                        serde_json::Value::String(URL_SAFE_NO_PAD.encode(l.as_bytes()))
                    }
                    _ => serde_json::Value::Null,
                }
            }
            _ => serde_json::Value::Null,
        };
        format!("],\"next_cursor\":{next}}}")
    };
    let open = "{\"items\":[";
    Ok(super::answer_walk("/v1/kv", walk, head, open, item, close))
}
