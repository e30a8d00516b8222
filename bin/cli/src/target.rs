//! Where commands go: a server over REST, or a data directory opened in-process.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kv_app::{AppError, KvService, Limits, Pager};
use kv_domain::{KeyRange, WriteBatch};
use kv_infra_fs::{FsEngine, Options};
use kv_infra_http::client::{cursor_after, Client};
use kv_infra_http::status::{CompactionReport, NodeStatus};

use crate::error::CliError;

/// Entries per page when listing.
const PAGE: usize = 1000;

/// A server or a data directory.
#[derive(Debug)]
pub enum Target {
    /// A server, over HTTP.
    Remote(Client),
    /// A data directory, opened (and locked) by this process.
    Embedded(KvService),
}

impl Target {
    /// A server at `url`, with the bounds on connecting and on each request (`None`: unbounded), sending
    /// `token` as a bearer token when given.
    pub fn remote(
        url: &str,
        connect_timeout: Option<Duration>,
        request_timeout: Option<Duration>,
        token: Option<&kv_infra_http::replication::Secret>,
    ) -> Result<Self, CliError> {
        Ok(Target::Remote(
            Client::new(url)
                .and_then(|c| c.with_bearer(token))
                .map_err(|e| CliError::usage(e.to_string()))?
                .with_timeouts(connect_timeout, request_timeout),
        ))
    }

    /// The data directory `dir`, locked for the life of this process. Opening a store creates it where
    /// nothing is; so unless `create` (commands that store data), a directory that does not exist is a
    /// usage error: a mistyped `--data-dir` must not read an empty store that it just made.
    pub fn embedded(dir: &Path, create: bool) -> Result<Self, CliError> {
        if !create && !dir.exists() {
            return Err(CliError::usage(format!(
                "data directory {} does not exist (only put, batch and import create one; check the path)",
                dir.display()
            )));
        }
        let engine = FsEngine::open(dir, Options::default())?;
        Ok(Target::Embedded(KvService::new(
            Arc::new(engine),
            Limits::default(),
        )))
    }

    /// Stores a value; returns the LSN.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, CliError> {
        match self {
            Target::Remote(c) => Ok(c.put(key, value).await?),
            Target::Embedded(s) => Ok(s.put(key, value)?.0),
        }
    }

    /// The value of `key`; [`crate::error::NOT_FOUND`] when absent.
    pub async fn get(&mut self, key: &[u8]) -> Result<Vec<u8>, CliError> {
        match self {
            Target::Remote(c) => c.get(key).await?.ok_or_else(|| CliError::not_found(key)),
            Target::Embedded(s) => match s.read(key) {
                Ok(v) => Ok(v.into_bytes()),
                Err(AppError::NotFound(_)) => Err(CliError::not_found(key)),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Deletes `key`; returns the LSN.
    pub async fn delete(&mut self, key: &[u8]) -> Result<u64, CliError> {
        match self {
            Target::Remote(c) => Ok(c.delete(key).await?),
            Target::Embedded(s) => Ok(s.delete(key)?.0),
        }
    }

    /// Writes all pairs atomically; returns the LSN. Over REST the pairs must be UTF-8 (`/batchput` is JSON).
    pub async fn batch(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, CliError> {
        match self {
            Target::Remote(c) => {
                let text = pairs
                    .iter()
                    .map(|(k, v)| Ok((String::from_utf8(k.clone())?, String::from_utf8(v.clone())?)))
                    .collect::<Result<Vec<_>, std::string::FromUtf8Error>>()
                    .map_err(|_| CliError::usage("a batch sent to a server must be UTF-8 text (its API is JSON); use import for binary pairs"))?;
                Ok(c.batch(&text).await?)
            }
            Target::Embedded(s) => {
                let mut batch = WriteBatch::new();
                for (k, v) in pairs {
                    batch.put(k.clone(), v.clone());
                }
                Ok(s.batch_put(&batch)?.0)
            }
        }
    }

    /// Calls `each` with every pair from `start` to `end` (inclusive) in key order, at most `limit` of them,
    /// fetched a page at a time so memory stays bounded.
    pub async fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), CliError>,
    ) -> Result<u64, CliError> {
        let range = KeyRange::inclusive(start, end);
        let mut pager = Pager::new(range, limit, PAGE)
            .map_err(|_| CliError::usage("range start is after its end"))?;
        while let Some((range, want)) = pager.next_request() {
            let page: Vec<(Vec<u8>, Vec<u8>)> = match self {
                Target::Remote(c) => {
                    // The server pages the same range; its cursor is the last key seen.
                    let after = pager.last_key().map(|k| cursor_after(k.as_bytes()));
                    c.list_page(Some(start), Some(end), want, after.as_deref())
                        .await?
                        .0
                }
                Target::Embedded(s) => s
                    .read_range_page(&range, want)?
                    .into_iter()
                    .map(|e| (e.key.into_bytes(), e.value.into_bytes()))
                    .collect(),
            };
            for (k, v) in &page {
                each(k, v)?;
            }
            pager.advance(page.len(), page.last().map(|(k, _)| k.as_slice()));
        }
        let seen = pager.sent();
        Ok(seen as u64)
    }

    /// Runs a compaction; returns its report.
    pub async fn compact(&mut self) -> Result<serde_json::Value, CliError> {
        match self {
            Target::Remote(c) => Ok(c.compact().await?),
            Target::Embedded(s) => {
                let report = CompactionReport::from(&s.compact()?);
                serde_json::to_value(report).map_err(|e| CliError::failure(e.to_string()))
            }
        }
    }

    /// A cluster call (status or a membership operation) on a server; a data directory has no cluster.
    pub async fn cluster(
        &mut self,
        method: hyper::Method,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        match self {
            Target::Remote(c) => {
                let bytes = if method == hyper::Method::GET {
                    bytes::Bytes::new()
                } else {
                    bytes::Bytes::from(body.to_string())
                };
                Ok(c.cluster(method, path, token, bytes).await?)
            }
            Target::Embedded(_) => Err(CliError::usage(
                "cluster commands talk to a server (--url), not a data directory",
            )),
        }
    }

    /// The status document.
    pub async fn status(&mut self) -> Result<serde_json::Value, CliError> {
        match self {
            Target::Remote(c) => Ok(c.status().await?),
            Target::Embedded(s) => {
                // The server's document, with the role an embedded store has and no replication parts.
                let doc = NodeStatus::new(
                    "embedded",
                    &s.engine().status(),
                    serde_json::json!([]),
                    None,
                );
                serde_json::to_value(doc).map_err(|e| CliError::failure(e.to_string()))
            }
        }
    }
}
