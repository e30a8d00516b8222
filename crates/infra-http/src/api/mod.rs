//! The handlers, one module per API family. Each handler takes only what it uses (the use cases, the
//! metrics, the replication state), never the whole [`crate::ServerState`]; [`crate::dispatch`] hands
//! them out.
//!
//! - [`go`]: the Go system's endpoints;
//! - [`v1`]: the binary-safe `/v1/kv` API;
//! - [`admin`]: readiness, status, metrics, compaction;
//! - [`write`](mod@write): what every write shares (where it runs, the answer with its LSN, follower acks);
//! - [`min_lsn`]: the wait of a read that names a minimum LSN.
//!
//! The replication endpoints' handlers are in [`crate::replication`].
//!
//! Every write answers with its LSN in the `x-kv-lsn` header and a JSON body `{"lsn": N}`. Errors are JSON
//! `{"error": "..."}` with the status chosen in [`crate::error`].

pub mod admin;
pub mod go;
pub mod min_lsn;
pub mod v1;
pub mod write;

/// Entries fetched from the engine per step of a streamed range.
const PAGE: usize = 256;
/// A streamed response sends what it has once it holds this many bytes (and at the end of each page), so
/// the chunks queued for one response are about this size rather than a whole page each.
const CHUNK_BYTES: usize = 64 * 1024;

/// A range walk whose first page is already fetched: [`Walk::start`] runs before a streamed answer commits
/// to 200, so a bad range or an engine error still gets its status.
struct Walk {
    service: kv_app::KvService,
    pager: kv_app::Pager,
    first: Vec<kv_domain::Entry>,
}

impl Walk {
    /// Checks `range` (the pager refuses an inverted one) and fetches its first page.
    fn start(
        service: &kv_app::KvService,
        range: kv_domain::KeyRange,
        limit: usize,
    ) -> Result<Self, kv_app::AppError> {
        let mut pager = kv_app::Pager::new(range, limit, PAGE)?;
        let first = match pager.next_request() {
            Some((range, want)) => {
                let page = service.read_range_page(&range, want)?;
                pager.advance(page.len(), page.last().map(|e| e.key.as_bytes()));
                page
            }
            None => Vec::new(),
        };
        Ok(Self {
            service: service.clone(),
            pager,
            first,
        })
    }
}

/// The answer to a range walk: `open`, each entry as `item` writes it straight into the response buffer
/// (`sent`: entries written before it, for separators; no intermediate value per entry), then what
/// `close` returns; `what` names the route in the log line of an abort.
///
/// A walk whose first page was its last (most ranges: up to a page of entries) is answered from memory
/// with one buffer and no hop to the blocking pool (sent with a `Content-Length`); a longer one is
/// streamed ([`stream_pages`], chunked). Either way the body's bytes are the same. An entry `item` refuses sends the walk down the streamed path after all, which
/// answers 200 and then aborts the body, exactly as a long range does.
fn answer_walk(
    what: &'static str,
    walk: Walk,
    head: bool,
    open: &'static str,
    mut item: impl FnMut(&kv_domain::Entry, usize, &mut Vec<u8>) -> std::io::Result<()> + Send + 'static,
    close: impl FnOnce(&kv_app::KvService, &kv_app::Pager) -> String + Send + 'static,
) -> hyper::Response<crate::error::Body> {
    if head {
        // The status is known; nothing will read the body.
        return crate::response::streamed_json(crate::stream::ChannelBody::channel().1);
    }
    let streamed = |walk, item, close| {
        let (tx, body) = crate::stream::ChannelBody::channel();
        stream_pages(what, walk, tx, open, item, close);
        crate::response::streamed_json(body)
    };
    if !walk.pager.is_done() {
        return streamed(walk, item, close);
    }
    let mut out = Vec::from(open);
    for (sent, e) in walk.first.iter().enumerate() {
        if item(e, sent, &mut out).is_err() {
            // Rare (a value /readrange cannot carry): the streamed path meets the same entry and aborts.
            return streamed(walk, item, close);
        }
    }
    out.extend_from_slice(close(&walk.service, &walk.pager).as_bytes());
    crate::response::full_json(out)
}

/// Streams the rest of a [`Walk`] as one response body, on a blocking task (the pages are engine reads):
/// `open`, then each entry as `item` writes it (`sent`: entries written before it, for separators), then
/// what `close` returns. Chunks of about [`CHUNK_BYTES`] go out as they fill and at the end of each page,
/// so memory is one page plus the channel. An engine error, or an entry `item` refuses, aborts the body
/// (the client sees it truncated, never a well-formed wrong answer); a client that went away stops the
/// walk. `what` names the route in the log line of an abort.
fn stream_pages(
    what: &'static str,
    walk: Walk,
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    open: &'static str,
    mut item: impl FnMut(&kv_domain::Entry, usize, &mut Vec<u8>) -> std::io::Result<()> + Send + 'static,
    close: impl FnOnce(&kv_app::KvService, &kv_app::Pager) -> String + Send + 'static,
) {
    use bytes::Bytes;
    use kv_domain::KeyRange;
    let Walk {
        service,
        mut pager,
        first,
    } = walk;
    tokio::task::spawn_blocking(move || {
        let mut sent = 0usize;
        let mut out = Vec::from(open);
        let send = |out: &mut Vec<u8>| {
            tx.blocking_send(Ok(Bytes::from(std::mem::take(out))))
                .is_ok()
        };
        {
            let rest = pager.pages(|r: &KeyRange, n| service.read_range_page(r, n));
            for page in std::iter::once(Ok(first)).chain(rest) {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                };
                for e in &page {
                    if let Err(err) = item(e, sent, &mut out) {
                        tracing::warn!("aborting {what}: {err}");
                        let _ = tx.blocking_send(Err(err));
                        return;
                    }
                    sent += 1;
                    if out.len() >= CHUNK_BYTES && !send(&mut out) {
                        return; // the client went away
                    }
                }
                if !send(&mut out) {
                    return; // the client went away
                }
            }
        }
        out.extend_from_slice(close(&service, &pager).as_bytes());
        send(&mut out);
    });
}
