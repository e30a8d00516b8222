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

/// Fetches the first page of `pager`'s walk, before a streamed answer commits to 200, so an engine error
/// still gets its status.
fn first_page(
    service: &kv_app::KvService,
    pager: &mut kv_app::Pager,
) -> Result<Vec<kv_domain::Entry>, kv_app::AppError> {
    let Some((range, want)) = pager.next_request() else {
        return Ok(Vec::new());
    };
    let page = service.read_range_page(&range, want)?;
    pager.advance(page.len(), page.last().map(|e| e.key.as_bytes()));
    Ok(page)
}
