//! Batch and import input. Three formats, detected per input:
//!
//! - a JSON object `{"key": "value", ...}` (the `/batchput` body);
//! - JSON lines `{"key": "...", "value": "..."}`, one pair per line; `key_base64` / `value_base64` carry
//!   binary data (the format `export` writes, so `export | import` round-trips any bytes);
//! - `key<TAB>value` lines (the value is the rest of the line after the first tab).
//!
//! Empty lines are skipped. Anything else is an error naming the line, and nothing is written.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value as Json;

use crate::error::CliError;

/// A key/value pair.
pub type Pair = (Vec<u8>, Vec<u8>);

fn field(
    obj: &serde_json::Map<String, Json>,
    name: &str,
    line: usize,
) -> Result<Vec<u8>, CliError> {
    if let Some(v) = obj.get(name) {
        return v
            .as_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| CliError::usage(format!("line {line}: \"{name}\" must be a string")));
    }
    let b64 = format!("{name}_base64");
    match obj.get(&b64).and_then(Json::as_str) {
        Some(s) => STANDARD
            .decode(s)
            .map_err(|e| CliError::usage(format!("line {line}: bad base64 in \"{b64}\": {e}"))),
        None => Err(CliError::usage(format!("line {line}: missing \"{name}\""))),
    }
}

/// Parses one line of JSON lines or TSV input (`None` for an empty line).
pub fn parse_line(text: &str, line: usize) -> Result<Option<Pair>, CliError> {
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.trim().is_empty() {
        return Ok(None);
    }
    if trimmed.trim_start().starts_with('{') {
        let json: Json = serde_json::from_str(trimmed)
            .map_err(|e| CliError::usage(format!("line {line}: invalid JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| CliError::usage(format!("line {line}: expected a JSON object")))?;
        return Ok(Some((field(obj, "key", line)?, field(obj, "value", line)?)));
    }
    let (k, v) = trimmed.split_once('\t').ok_or_else(|| {
        CliError::usage(format!(
            "line {line}: expected key<TAB>value, a JSON line, or a JSON object"
        ))
    })?;
    if k.is_empty() {
        return Err(CliError::usage(format!("line {line}: empty key")));
    }
    Ok(Some((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
}

/// Parses a whole input in any of the three formats.
pub fn parse_all(text: &str) -> Result<Vec<Pair>, CliError> {
    if let Ok(Json::Object(obj)) = serde_json::from_str::<Json>(text) {
        // A single JSON object: either the /batchput map, or one JSON line with key/value fields.
        if !(obj.contains_key("key") || obj.contains_key("key_base64")) || obj.len() > 2 {
            return obj
                .into_iter()
                .map(|(k, v)| match v {
                    Json::String(s) => Ok((k.into_bytes(), s.into_bytes())),
                    _ => Err(CliError::usage(format!("value of {k:?} must be a string"))),
                })
                .collect();
        }
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(pair) = parse_line(line, i + 1)? {
            out.push(pair);
        }
    }
    Ok(out)
}

/// A pair as one JSON line (`key`/`value`, or `key_base64`/`value_base64` for bytes that are not UTF-8).
pub fn json_line(key: &[u8], value: &[u8]) -> String {
    let mut obj = serde_json::Map::new();
    for (name, bytes) in [("key", key), ("value", value)] {
        match std::str::from_utf8(bytes) {
            Ok(s) => obj.insert(name.to_string(), Json::String(s.to_string())),
            Err(_) => obj.insert(
                format!("{name}_base64"),
                Json::String(STANDARD.encode(bytes)),
            ),
        };
    }
    Json::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_formats_parse() {
        let p = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(
            parse_all(r#"{"a":"1","b":"2"}"#).unwrap(),
            vec![p("a", "1"), p("b", "2")]
        );
        assert_eq!(
            parse_all(
                "{\"key\":\"a\",\"value\":\"1\"}\n\n{\"key\":\"b\",\"value_base64\":\"Mg==\"}\n"
            )
            .unwrap(),
            vec![p("a", "1"), p("b", "2")]
        );
        assert_eq!(
            parse_all("a\t1\nb\tx\ty\n").unwrap(),
            vec![p("a", "1"), p("b", "x\ty")]
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = parse_all("a\t1\nno-tab-here\n").unwrap_err();
        assert_eq!(e.code, crate::error::USAGE);
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert!(parse_all("{\"key\":1,\"value\":\"v\"}").is_err());
        assert!(parse_all("\tvalue").is_err());
    }

    #[test]
    fn json_lines_round_trip_binary() {
        let line = json_line(b"k", &[0xff, 0]);
        assert_eq!(
            parse_line(&line, 1).unwrap(),
            Some((b"k".to_vec(), vec![0xff, 0]))
        );
    }
}
