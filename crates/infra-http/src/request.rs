//! Reading a request: strict percent-decoding, query parameters, the JSON content-type rule and the JSON
//! body itself.

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::{header, HeaderMap, Request, StatusCode};

use crate::body::{read_body, RequestBody};
use crate::error::ApiError;

/// Query parameters, decoded; the first occurrence of a name wins (as in Go's `Query().Get`).
pub type Params = BTreeMap<String, Vec<u8>>;

/// Decodes `%XX` escapes strictly (a `%` not followed by two hex digits is an error); with `plus_is_space`,
/// `+` means a space (query strings, as Go's `url.ParseQuery` reads them).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| {
                    ApiError::bad_request(format!("invalid percent-encoding at byte {i} of {s:?}"))
                })?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The query parameters of `uri`.
pub fn query(uri: &hyper::Uri) -> Result<Params, ApiError> {
    let mut params = BTreeMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(name, true)?)
            .map_err(|_| ApiError::bad_request("parameter names must be UTF-8"))?;
        let value = percent_decode(value, true)?;
        params.entry(name).or_insert(value);
    }
    Ok(params)
}

/// A parameter that must be present and not empty.
pub fn required<'a>(params: &'a Params, name: &str) -> Result<&'a [u8], ApiError> {
    match params.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ApiError::bad_request(format!(
            "query parameter {name:?} must not be empty"
        ))),
        None => Err(ApiError::bad_request(format!(
            "missing query parameter {name:?}"
        ))),
    }
}

/// The `limit` parameter: 1 to `max`, `default` when absent.
pub fn limit_param(params: &Params, default: usize, max: usize) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(default),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0 && n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer from 1 to {max}"))
            }),
    }
}

/// Parses a non-negative integer parameter or header named `what`.
pub fn number(v: &[u8], what: &str) -> Result<u64, ApiError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a non-negative integer")))
}

/// Rejects bodies whose declared content type cannot be JSON. No header, `application/json`, `text/plain` and
/// curl's default for `-d` (`application/x-www-form-urlencoded`) are accepted, so existing clients keep working.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct.is_empty()
        || ct == "application/json"
        || ct.ends_with("+json")
        || ct == "text/plain"
        || ct == "application/x-www-form-urlencoded"
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a JSON body, got Content-Type {ct}"),
        ))
    }
}

/// The body of a JSON request, at most `max_body` bytes, after the content-type check.
pub async fn json_body(req: Request<RequestBody>, max_body: usize) -> Result<Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    check_json_content_type(&parts.headers)?;
    read_body(&parts.headers, body, max_body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict_and_binary_safe() {
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), b"a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode("%ff%00", false).unwrap(), vec![0xff, 0]);
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("abc%4", false).is_err());
    }
}
