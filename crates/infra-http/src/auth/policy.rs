//! The decision for one request (see the module doc of [`crate::auth`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::StatusCode;
use subtle::ConstantTimeEq;

use super::tokens::{Role, TokenFileError, TokenTable};
use crate::cluster::FORWARDED_HEADER;
use crate::error::ApiError;
use crate::replication::{Secret, TOKEN_HEADER};
use crate::route::Access;

/// How this server admits clients: configured at start; the tokens of a token file can be read again
/// ([`Self::reload`]). Cloning shares the tokens.
#[derive(Clone, Debug)]
pub struct AuthPolicy {
    /// The client tokens, when a token file is configured.
    clients: Option<Arc<parking_lot::RwLock<TokenTable>>>,
    /// The token file they came from, if any.
    file: Option<PathBuf>,
    /// `PROTECTED_MODE=false`: without tokens, serve every client (and, without a replication token,
    /// every peer) instead of the loopback ones only.
    open: bool,
    /// `REPLICATION_TOKEN_ACCEPTED`: a second replication token taken from peers (never sent), so the
    /// replication token can be changed one node at a time (`docs/security.md`, "Rotating").
    also_accepted: Option<Secret>,
}

impl AuthPolicy {
    /// Clients are admitted by `clients` when given; otherwise by protected mode unless `open`.
    pub fn new(clients: Option<TokenTable>, open: bool) -> Self {
        Self {
            clients: clients.map(|t| Arc::new(parking_lot::RwLock::new(t))),
            file: None,
            open,
            also_accepted: None,
        }
    }

    /// Also takes `token` as the replication token from peers (this node still sends its own). Only
    /// meaningful beside a replication token of this node's: without one, none is taken.
    #[must_use]
    pub fn also_accepting(mut self, token: Option<Secret>) -> Self {
        self.also_accepted = token;
        self
    }

    /// Clients are admitted by the tokens of the file at `path`; with it, a warning to log if others
    /// may read the file.
    pub fn from_file(path: &Path, open: bool) -> Result<(Self, Option<String>), TokenFileError> {
        let (tokens, warning) = TokenTable::load(path)?;
        let mut policy = Self::new(Some(tokens), open);
        policy.file = Some(path.to_path_buf());
        Ok((policy, warning))
    }

    /// Reads the token file again and, if it is valid, admits by its tokens from the next request on
    /// (a file that fails to load keeps the tokens in use). Without a token file, nothing to do.
    /// Returns the file's warning, if any.
    pub fn reload(&self) -> Result<Option<String>, TokenFileError> {
        let (Some(path), Some(clients)) = (&self.file, &self.clients) else {
            return Ok(None);
        };
        let (tokens, warning) = TokenTable::load(path)?;
        *clients.write() = tokens;
        Ok(warning)
    }

    /// No tokens and no protected mode: everyone may do everything (tests, and `PROTECTED_MODE=false`).
    pub fn open() -> Self {
        Self::new(None, true)
    }

    /// Protected mode: no client tokens, loopback clients only.
    pub fn is_protected(&self) -> bool {
        self.clients.is_none() && !self.open
    }

    /// Whether client tokens are configured.
    pub fn has_tokens(&self) -> bool {
        self.clients.is_some()
    }

    /// One line for the start-up log: how clients are admitted (never a token).
    pub fn describe(&self) -> String {
        match (&self.clients, self.open) {
            (Some(t), _) => {
                let counts: Vec<String> = t
                    .read()
                    .counts()
                    .iter()
                    .map(|(role, n)| format!("{n} {role}"))
                    .collect();
                format!("tokens ({})", counts.join(", "))
            }
            (None, true) => "open (PROTECTED_MODE=false: every client may read, write and administer without a token)".into(),
            (None, false) => "protected mode (no AUTH_TOKENS_FILE: loopback clients only)".into(),
        }
    }

    /// Admits or refuses a request needing `access` from `peer`, given this node's replication token
    /// (`None`: not configured; with one, the token [`Self::also_accepting`] gave is taken as well).
    /// The refusal says what was missing, never what was sent.
    pub fn authorize(
        &self,
        access: Access,
        headers: &HeaderMap,
        peer: IpAddr,
        replication_token: Option<&Secret>,
    ) -> Result<(), ApiError> {
        let loopback = peer.to_canonical().is_loopback();
        let peer_given = headers.get(TOKEN_HEADER).map(|v| v.as_bytes());
        let peer_ok = match (replication_token, peer_given) {
            (Some(t), Some(given)) => {
                // Both compared, whichever matches, so the time says nothing about which one did.
                let also = self
                    .also_accepted
                    .as_ref()
                    .map_or(subtle::Choice::from(0), |a| {
                        a.expose().as_bytes().ct_eq(given)
                    });
                bool::from(t.expose().as_bytes().ct_eq(given) | also)
            }
            _ => false,
        };
        // A wrong replication token is refused wherever it is sent, even where none is needed (a
        // loopback client in protected mode), so that a misconfigured peer shows at once.
        if access != Access::Open && peer_given.is_some() && !peer_ok {
            return Err(unauthorized(match replication_token {
                Some(_) => format!("the replication token in {TOKEN_HEADER} is wrong"),
                None => format!("{TOKEN_HEADER} was sent but this node has no replication token: set the same REPLICATION_TOKEN on every node"),
            }));
        }
        let need = match access {
            Access::Open => return Ok(()),
            Access::Peer => {
                return match replication_token {
                    Some(_) if peer_ok => Ok(()),
                    Some(_) => Err(unauthorized(format!(
                        "replication and Raft endpoints need the replication token in {TOKEN_HEADER} (a client token is not accepted)"
                    ))),
                    // With client tokens, peer routes (membership changes included) need the replication
                    // token from anywhere: a token file would be bypassed through them otherwise (by a
                    // local process or a proxy on this host, too). Without, loopback peers, or every
                    // peer with PROTECTED_MODE=false.
                    None if self.clients.is_none() && (loopback || self.open) => Ok(()),
                    None => Err(forbidden(format!(
                        "replication, Raft and membership endpoints need REPLICATION_TOKEN here (this request came from {peer}): set the same REPLICATION_TOKEN on every node"
                    ))),
                };
            }
            Access::Operator if peer_ok => return Ok(()),
            Access::Operator | Access::Admin => Role::Admin,
            Access::Write => Role::Write,
            Access::Read => Role::Read,
        };
        let Some(table) = &self.clients else {
            let vouched = peer_ok && headers.contains_key(FORWARDED_HEADER);
            if self.open || loopback || vouched {
                return Ok(());
            }
            return Err(forbidden(format!(
                "protected mode: no client tokens are configured (AUTH_TOKENS_FILE), so this server answers only clients on its loopback interface, and this request came from {peer}. Configure tokens (docs/security.md), or set PROTECTED_MODE=false to serve every client without authentication"
            )));
        };
        let given = bearer(headers)?;
        let Some(given) = given else {
            return Err(unauthorized(format!(
                "this server needs a token: send `Authorization: Bearer <token>` of a {need} (or stronger) role"
            )));
        };
        let role = table.read().role_of(given);
        match role {
            None => Err(unauthorized(
                "the bearer token is not one this server knows".into(),
            )),
            Some(role) if role >= need => Ok(()),
            Some(role) => Err(forbidden(format!(
                "the token's role is {role}; this request needs {need}"
            ))),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; `None` without the header; 401 for another
/// scheme or an empty token.
fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let scheme_ok = bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ");
    let token = if scheme_ok {
        bytes[7..].trim_ascii()
    } else {
        &[][..]
    };
    if token.is_empty() {
        return Err(unauthorized(
            "the Authorization header must be `Bearer <token>`".into(),
        ));
    }
    Ok(Some(token))
}

fn unauthorized(message: String) -> ApiError {
    // `ApiError::into_response` adds `WWW-Authenticate: Bearer` to every 401.
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    const READ: &str = "read-token-0123456789";
    const WRITE: &str = "write-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    const PEER: &str = "replication-token-0123456789";

    fn tokens() -> TokenTable {
        TokenTable::parse(&format!("read {READ}\nwrite {WRITE}\nadmin {ADMIN}\n")).unwrap()
    }

    /// A caller: what it sends.
    #[derive(Clone, Copy, Debug)]
    enum Caller {
        Nobody,
        Bearer(&'static str),
        Peer(&'static str),
        /// A forwarded request carrying the forwarder's replication token.
        Forwarded(&'static str),
        Malformed,
    }

    fn headers(caller: Caller) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut set = |name: HeaderName, value: String| {
            h.insert(name, HeaderValue::from_str(&value).unwrap());
        };
        match caller {
            Caller::Nobody => {}
            Caller::Bearer(t) => set(AUTHORIZATION, format!("Bearer {t}")),
            Caller::Peer(t) => set(HeaderName::from_static(TOKEN_HEADER), t.into()),
            Caller::Forwarded(t) => {
                set(HeaderName::from_static(TOKEN_HEADER), t.into());
                set(HeaderName::from_static(FORWARDED_HEADER), "1".into());
            }
            Caller::Malformed => set(AUTHORIZATION, format!("Basic {ADMIN}")),
        }
        h
    }

    fn status(
        policy: &AuthPolicy,
        access: Access,
        caller: Caller,
        loopback: bool,
        peer_token: Option<&Secret>,
    ) -> u16 {
        let ip: IpAddr = if loopback {
            "127.0.0.1".parse().unwrap()
        } else {
            "10.1.2.3".parse().unwrap()
        };
        match policy.authorize(access, &headers(caller), ip, peer_token) {
            Ok(()) => 200,
            Err(e) => {
                for secret in [READ, WRITE, ADMIN, PEER] {
                    assert!(!e.message.contains(secret), "{}", e.message);
                }
                e.status.as_u16()
            }
        }
    }

    const ACCESSES: [Access; 6] = [
        Access::Open,
        Access::Read,
        Access::Write,
        Access::Admin,
        Access::Operator,
        Access::Peer,
    ];

    /// The whole table with tokens and a replication token: every access × caller, from loopback and
    /// from elsewhere (the source makes no difference once tokens are configured).
    #[test]
    fn with_tokens_each_role_gets_what_it_may_and_the_source_does_not_matter() {
        let policy = AuthPolicy::new(Some(tokens()), false);
        let peer = Secret::new(PEER);
        use Caller::*;
        let callers = [
            Nobody,
            Bearer("not-a-token-0123456789"),
            Bearer(READ),
            Bearer(WRITE),
            Bearer(ADMIN),
            Peer(PEER),
            Peer("wrong-peer-token-012345"),
            Forwarded(PEER),
            Malformed,
        ];
        // Rows: the callers above; columns: ACCESSES.
        let expected: [[u16; 6]; 9] = [
            [200, 401, 401, 401, 401, 401],
            [200, 401, 401, 401, 401, 401],
            [200, 200, 403, 403, 403, 401],
            [200, 200, 200, 403, 403, 401],
            [200, 200, 200, 200, 200, 401],
            [200, 401, 401, 401, 200, 200],
            [200, 401, 401, 401, 401, 401],
            [200, 401, 401, 401, 200, 200],
            [200, 401, 401, 401, 401, 401],
        ];
        for loopback in [true, false] {
            for (caller, row) in callers.iter().zip(expected) {
                for (access, want) in ACCESSES.iter().zip(row) {
                    let got = status(&policy, *access, *caller, loopback, Some(&peer));
                    assert_eq!(got, want, "{caller:?} {access:?} loopback={loopback}");
                }
            }
        }
    }

    #[test]
    fn protected_mode_serves_loopback_and_vouched_forwards_only() {
        let policy = AuthPolicy::new(None, false);
        assert!(policy.is_protected());
        let peer = Secret::new(PEER);
        for access in ACCESSES {
            let open = access == Access::Open;
            // Loopback: everything (peer routes still need the configured replication token).
            let want = if access == Access::Peer { 401 } else { 200 };
            assert_eq!(
                status(&policy, access, Caller::Nobody, true, Some(&peer)),
                want
            );
            assert_eq!(status(&policy, access, Caller::Nobody, true, None), 200);
            // Elsewhere: open routes only, plus what a peer's token admits.
            let want = if open {
                200
            } else if access == Access::Peer {
                401
            } else {
                403
            };
            assert_eq!(
                status(&policy, access, Caller::Nobody, false, Some(&peer)),
                want,
                "{access:?}"
            );
            assert_eq!(
                status(&policy, access, Caller::Bearer(ADMIN), false, None),
                if open { 200 } else { 403 },
                "a bearer token means nothing without a token file: {access:?}"
            );
            let vouched = status(&policy, access, Caller::Forwarded(PEER), false, Some(&peer));
            assert_eq!(vouched, 200, "a forward vouched for by a peer: {access:?}");
            for loopback in [true, false] {
                let forged = Caller::Forwarded("forged-token-0123456789");
                assert_eq!(
                    status(&policy, access, forged, loopback, Some(&peer)),
                    if open { 200 } else { 401 },
                    "a wrong replication token, even from loopback: {access:?}"
                );
                assert_eq!(
                    status(&policy, access, Caller::Forwarded(PEER), loopback, None),
                    if open { 200 } else { 401 },
                    "a replication token where none is configured: {access:?}"
                );
            }
        }
        let refused = policy
            .authorize(
                Access::Read,
                &HeaderMap::new(),
                "10.1.2.3".parse().unwrap(),
                None,
            )
            .unwrap_err();
        assert!(
            refused.message.contains("protected mode"),
            "{}",
            refused.message
        );
        assert!(
            refused.message.contains("PROTECTED_MODE=false"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("10.1.2.3"), "{}", refused.message);
    }

    /// During a rotation a node takes its own replication token and the one also accepted, for every
    /// route a peer token opens (peers, the cluster view, vouching); a third is still refused, and
    /// without a token of its own the node takes neither.
    #[test]
    fn a_second_accepted_replication_token_opens_what_the_first_does_and_nothing_else() {
        const NEXT: &str = "next-replication-token-0123456789";
        const OTHER: &str = "other-replication-token-0123456789";
        let peer = Secret::new(PEER);
        for policy in [
            AuthPolicy::new(Some(tokens()), false),
            AuthPolicy::new(None, false),
        ] {
            let policy = policy.also_accepting(Some(Secret::new(NEXT)));
            for loopback in [true, false] {
                for (access, caller) in [
                    (Access::Peer, Caller::Peer(NEXT)),
                    (Access::Operator, Caller::Peer(NEXT)),
                    (Access::Peer, Caller::Peer(PEER)),
                ] {
                    assert_eq!(
                        status(&policy, access, caller, loopback, Some(&peer)),
                        200,
                        "{access:?} {caller:?} loopback={loopback}"
                    );
                }
                for access in [Access::Peer, Access::Operator, Access::Read] {
                    assert_eq!(
                        status(&policy, access, Caller::Peer(OTHER), loopback, Some(&peer)),
                        401,
                        "{access:?} loopback={loopback}"
                    );
                }
                assert_eq!(
                    status(&policy, Access::Peer, Caller::Peer(NEXT), loopback, None),
                    401,
                    "no token of its own: the accepted one is not taken"
                );
            }
            // A forward vouched for with the accepted token passes protected mode.
            if !policy.has_tokens() {
                let forwarded = Caller::Forwarded(NEXT);
                assert_eq!(
                    status(&policy, Access::Write, forwarded, false, Some(&peer)),
                    200
                );
            }
        }
    }

    #[test]
    fn open_mode_serves_everyone_and_the_replication_token_still_guards_peers() {
        let policy = AuthPolicy::open();
        let peer = Secret::new(PEER);
        for access in ACCESSES {
            for loopback in [true, false] {
                assert_eq!(status(&policy, access, Caller::Nobody, loopback, None), 200);
                let want = if access == Access::Peer { 401 } else { 200 };
                assert_eq!(
                    status(&policy, access, Caller::Nobody, loopback, Some(&peer)),
                    want
                );
            }
        }
    }

    /// With a token file and no replication token, peer routes (membership changes included) answer
    /// nobody, loopback or not, whatever PROTECTED_MODE says (they would bypass the file); and an
    /// `x-kv-forwarded` header without the replication token vouches for nothing.
    #[test]
    fn a_token_file_closes_peer_routes_without_a_replication_token_and_a_bare_forward_is_nothing() {
        for open in [false, true] {
            let policy = AuthPolicy::new(Some(tokens()), open);
            for loopback in [false, true] {
                assert_eq!(
                    status(&policy, Access::Peer, Caller::Nobody, loopback, None),
                    403
                );
                assert_eq!(
                    status(&policy, Access::Peer, Caller::Bearer(ADMIN), loopback, None),
                    403
                );
            }
        }
        let policy = AuthPolicy::new(Some(tokens()), true);
        assert_eq!(
            status(&policy, Access::Write, Caller::Nobody, false, None),
            401
        );
        let mut forged = HeaderMap::new();
        forged.insert(
            HeaderName::from_static(FORWARDED_HEADER),
            HeaderValue::from_static("1"),
        );
        let protected = AuthPolicy::new(None, false);
        let peer = Secret::new(PEER);
        for access in [Access::Read, Access::Write, Access::Admin, Access::Operator] {
            let e = protected
                .authorize(access, &forged, "10.1.2.3".parse().unwrap(), Some(&peer))
                .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{access:?}");
        }
    }

    #[test]
    fn ipv4_mapped_loopback_is_loopback_and_the_scheme_is_case_insensitive() {
        let policy = AuthPolicy::new(None, false);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(policy
            .authorize(Access::Write, &HeaderMap::new(), mapped, None)
            .is_ok());
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(policy
            .authorize(Access::Write, &HeaderMap::new(), v6, None)
            .is_ok());
        let tokens = AuthPolicy::new(Some(tokens()), false);
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer   {ADMIN}")).unwrap(),
        );
        assert!(tokens
            .authorize(Access::Admin, &h, "10.0.0.1".parse().unwrap(), None)
            .is_ok());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        let e = tokens
            .authorize(Access::Read, &h, "10.0.0.1".parse().unwrap(), None)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(e.message.contains("Bearer <token>"), "{}", e.message);
    }

    #[test]
    fn describe_counts_roles_and_shows_no_token() {
        let shown = AuthPolicy::new(Some(tokens()), false).describe();
        assert_eq!(shown, "tokens (1 read, 1 write, 1 admin)");
        assert!(AuthPolicy::new(None, false)
            .describe()
            .contains("protected mode"));
        assert!(AuthPolicy::open()
            .describe()
            .contains("PROTECTED_MODE=false"));
    }
}
