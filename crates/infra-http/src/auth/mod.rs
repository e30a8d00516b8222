//! Who may do what: client tokens with roles, protected mode, and the replication token of peers.
//!
//! Every request is decided here, once, in [`crate::dispatch`], from the access its route and method
//! need ([`crate::route::Route::access`]), before anything else happens (forwarding included), so a
//! refused request changes nothing and reaches no other node.
//!
//! - **Client routes** (`read`, `write`, `admin`): with a token file (`AUTH_TOKENS_FILE`), a request
//!   needs `Authorization: Bearer <token>` of a role at least the route's: 401 without a token or with
//!   an unknown one, 403 with a weaker role. Without a token file the server is in *protected mode*
//!   (as Redis is without a password): it serves only clients on its loopback interface and answers
//!   others 403 saying so, unless `PROTECTED_MODE=false` opens it to every client. A write a follower
//!   forwards carries the client's `Authorization`, and the leader decides on it; in protected mode the
//!   follower vouches for its loopback client with the replication token instead (the leader sees the
//!   follower's address, not the client's).
//! - **Cluster status** (`/v1/cluster`): an `admin` token or the replication token.
//! - **Peer routes** (`/v1/replication/*`, `/v1/raft/*`, and the membership changes `/v1/cluster/{op}`,
//!   since a member added receives the replication token with every Raft message): only the
//!   replication token (`x-kv-replication-token`), never a client token. Without a replication token
//!   configured they answer loopback peers only (every peer with `PROTECTED_MODE=false` and no token
//!   file).
//! - **Open routes** (`/health-check`, `/readyz`, `/metrics`): always served; they show no data and no
//!   secret, and probes and scrapers run without credentials.
//!
//! Tokens are compared in constant time; none appears in a log, an answer or the metrics
//! (`docs/security.md`).

mod policy;
mod tokens;

pub use policy::AuthPolicy;
pub use tokens::{check_token, Role, TokenFileError, TokenTable, MIN_TOKEN_LEN};
