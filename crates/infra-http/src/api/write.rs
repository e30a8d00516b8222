//! What every write handler shares: running the write where it belongs and answering with its LSN.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use kv_app::{replicate_write, Acked, KvService, WriteOutcome};
use kv_domain::{FollowerAcks, Lsn, Write};

use crate::applied::LsnSignal;
use crate::error::{ApiError, Body};
use crate::response;

/// The header naming the term of the leader that committed a write (in a Raft cluster).
pub const TERM_HEADER: &str = "x-kv-term";

/// What a write handler needs: the use cases, where to run them, the acknowledgement hub, the body limit.
#[derive(Clone, Copy)]
pub struct Writes<'a> {
    /// The use cases.
    pub service: &'a KvService,
    /// On a leader with followers: what the write wakes (the shipping hub) and whose acknowledgements it
    /// may await (the hub's, or the learners' on Raft).
    pub acks: Option<&'a dyn FollowerAcks>,
    /// Signalled with every acknowledged write's LSN, to wake min-LSN reads.
    pub written: &'a Arc<LsnSignal>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
}

impl std::fmt::Debug for Writes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("waits_for_followers", &self.acks.is_some())
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Writes<'_> {
    /// Runs a write and signals its LSN to waiting min-LSN reads as soon as the engine acknowledged it.
    /// Nothing waits on a thread: the engine accepts the write on this async worker (a `pwrite`, or an
    /// append to the group-commit buffer) and answers on a channel when it is durable (see
    /// [`KvService::write`]). The signal is sent where the engine acknowledges, not after this future
    /// resumes: a request that timed out is dropped while its write still completes, and a read waiting
    /// for that LSN must still wake.
    pub async fn submit(&self, write: Write<'_>) -> Result<Acked, ApiError> {
        let signal = Arc::clone(self.written);
        Ok(self
            .service
            .write_acked(write, move |lsn| signal.advance(lsn))
            .await?)
    }

    /// The answer to a write acknowledged at `acked` (`payload`: its key and value bytes): `x-kv-lsn`,
    /// and in a cluster `x-kv-term` (the committing leader's term). On a
    /// leader with followers it wakes the shippers and, with synchronous acknowledgement, waits for the
    /// configured number of followers: if they do not confirm within the timeout the answer is 504 with the
    /// LSN (the write is durable on the leader and will still replicate; only the replication is unconfirmed).
    pub async fn written(&self, acked: Acked, payload: usize) -> Response<Body> {
        let mut resp = self.answer(acked.lsn, payload).await;
        if let Some(term) = acked.term {
            resp.headers_mut()
                .insert(TERM_HEADER, hyper::header::HeaderValue::from(term));
        }
        resp
    }

    async fn answer(&self, lsn: Lsn, payload: usize) -> Response<Body> {
        match replicate_write(self.acks, lsn, payload).await {
            WriteOutcome::Committed { lsn } => {
                response::with_lsn(StatusCode::OK, &serde_json::json!({ "lsn": lsn.0 }), lsn)
            }
            WriteOutcome::Unconfirmed {
                lsn,
                confirmed,
                required,
                timeout,
            } => {
                let message = format!(
                    "write committed on the leader at LSN {lsn} but only {confirmed} of the {required} required followers confirmed it within {} ms; it is durable here and replication continues",
                    timeout.as_millis()
                );
                response::with_lsn(
                    StatusCode::GATEWAY_TIMEOUT,
                    &serde_json::json!({ "error": message, "lsn": lsn.0, "committed": true, "replicated": confirmed }),
                    lsn,
                )
            }
        }
    }
}
