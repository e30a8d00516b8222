//! `kv-server`: the composition root of the REST server. Reads the configuration (flags or environment
//! variables; the Go system's names keep working), opens the engine, serves HTTP until SIGTERM or SIGINT,
//! then drains requests, syncs and closes the engine (releasing the directory lock), and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kv_app::{KvService, Limits};
use kv_domain::Durability;
use kv_infra_fs::{AutoCompaction, FsEngine, IndexKind, Options};
use kv_infra_http::metrics::Metrics;
use kv_infra_http::replication::Secret;
use kv_infra_http::{serve, ServerConfig, ServerState};

/// The Moniepoint storage engine's REST server.
///
/// Every setting is a flag and an environment variable; with none at all the server starts as a standalone
/// leader on port 8080 with its data in ./data.
#[derive(Parser, Debug)]
#[command(name = "kv-server", version, about, long_about = None)]
struct Config {
    /// A one-shot command instead of serving (for container health checks).
    #[command(subcommand)]
    command: Option<Command>,
    /// TCP port to listen on (`health`: the port to check; accepted before or after the subcommand).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8080, global = true)]
    port: u16,
    /// Address to bind (0.0.0.0: every interface).
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Data directory (created if missing; locked while the server runs).
    #[arg(long, env = "DATA_PATH", default_value = "./data")]
    data_path: PathBuf,
    /// Replication role: `leader` (accepts writes, ships them to REPLICATION_REPLICA_HOSTS) or `follower`
    /// (applies the leader's log, forwards client writes to REPLICATION_LEADER_HOST).
    #[arg(long, env = "REPLICATION_MODE", value_enum, default_value_t = Role::Leader)]
    replication_mode: Role,
    /// How REPLICATION_MODE replicates: `static` (the leader ships its log to each follower;
    /// docs/replication.md) or `raft` (the leader is a one-voter Raft cluster and keeps its followers
    /// learners; docs/cluster.md). Transitional: `raft` is to replace `static` once it writes as fast.
    #[arg(long, env = "REPLICATION_ENGINE", value_enum, default_value_t = ReplicationEngine::Static)]
    replication_engine: ReplicationEngine,
    /// Follower only: base URL of the leader.
    #[arg(long, env = "REPLICATION_LEADER_HOST")]
    replication_leader_host: Option<String>,
    /// Leader only: comma-separated base URLs of the followers.
    #[arg(long, env = "REPLICATION_REPLICA_HOSTS", value_delimiter = ',')]
    replication_replica_hosts: Vec<String>,
    /// Shared secret of the replication endpoints; when set, requests without it are refused (401). Set
    /// the same value on the leader and every follower; at least 16 characters. Never logged (shown as
    /// `<redacted>`).
    #[arg(long, env = "REPLICATION_TOKEN", hide_env_values = true)]
    replication_token: Option<Secret>,
    /// A second replication token this node also accepts from peers (it still sends its own), to change
    /// the replication token one node at a time (docs/security.md, "Rotating"). Needs
    /// REPLICATION_TOKEN; at least 16 characters. Never logged.
    #[arg(long, env = "REPLICATION_TOKEN_ACCEPTED", hide_env_values = true)]
    replication_token_accepted: Option<Secret>,
    /// Client tokens with their roles: a file of `<role> <token>` lines (read, write or admin; `#`
    /// comments; docs/security.md), so no token sits on a command line. Clients then send
    /// `Authorization: Bearer <token>`. Without it the server is in protected mode: it answers only
    /// clients on its loopback interface (unless PROTECTED_MODE=false). SIGHUP reads it again.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    auth_tokens_file: Option<PathBuf>,
    /// `false`: without AUTH_TOKENS_FILE, serve every client (and, without REPLICATION_TOKEN, every
    /// peer) with no authentication at all, instead of loopback ones only. Only on a network you trust.
    #[arg(long, env = "PROTECTED_MODE", default_value_t = true, action = clap::ArgAction::Set)]
    protected_mode: bool,
    /// HTTPS: the listener's certificate chain (PEM, leaf first), with TLS_KEY_FILE; reloaded on SIGHUP.
    /// `health` then checks over https (with TLS_CA_FILE).
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file", global = true)]
    tls_cert_file: Option<PathBuf>,
    /// HTTPS: the private key of TLS_CERT_FILE (PEM).
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file", global = true)]
    tls_key_file: Option<PathBuf>,
    /// HTTPS: every client must present a certificate signed by a CA in this file (mutual TLS). Peers
    /// present TLS_CERT_FILE as theirs.
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    tls_client_ca_file: Option<PathBuf>,
    /// The CAs that `https://` peers, leaders and followers must be signed by (needed for https:// in
    /// CLUSTER_PEERS, REPLICATION_LEADER_HOST or REPLICATION_REPLICA_HOSTS).
    #[arg(long, env = "TLS_CA_FILE", global = true)]
    tls_ca_file: Option<PathBuf>,
    /// Leader only: answer a write only after this many followers have it durably (0: asynchronous):
    /// applied, with static replication; in their Raft logs, with REPLICATION_ENGINE=raft (applied once a
    /// leader tells them the commit).
    #[arg(long, env = "REPLICATION_ACK_FOLLOWERS", default_value_t = 0)]
    replication_ack_followers: usize,
    /// Leader only: how long a write waits for those acknowledgements before answering 504 (committed on
    /// the leader, replication unconfirmed).
    #[arg(long, env = "REPLICATION_ACK_TIMEOUT_MS", default_value_t = 5_000)]
    replication_ack_timeout_ms: u64,
    /// Raft cluster: this node's id among CLUSTER_PEERS. With CLUSTER_PEERS set, the node is a member of a
    /// Raft cluster (automatic failover; docs/cluster.md) instead of a static leader or follower.
    #[arg(long, env = "CLUSTER_NODE_ID")]
    cluster_node_id: Option<u64>,
    /// Raft cluster: every voter as `ID=URL` (the base URL the others reach it at), comma-separated, the
    /// same list on every node, e.g. `1=http://kv1:8080,2=http://kv2:8080,3=http://kv3:8080`.
    #[arg(long, env = "CLUSTER_PEERS", value_delimiter = ',')]
    cluster_peers: Vec<String>,
    /// Raft cluster: its id, sent with every Raft message; a node refuses messages of another cluster
    /// (default: derived from CLUSTER_PEERS, which every member shares).
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Raft cluster: take a snapshot after this many log entries since the last one; the log below it is
    /// then purged but for the last 1000 entries (a follower further behind catches up from the snapshot).
    #[arg(long, env = "CLUSTER_SNAPSHOT_ENTRIES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_snapshot_entries: u64,
    /// Raft cluster: node 1 (the lowest id) forms a new cluster from the writes its data directory
    /// already holds (a standalone server's), instead of refusing to start on a non-empty directory.
    /// Only for forming a cluster: never on a member that lost its `raft/` directory.
    #[arg(long, env = "CLUSTER_INIT_FROM_DATA")]
    cluster_init_from_data: bool,
    /// Longest time a read with `min_lsn` waits for this node to apply that LSN.
    #[arg(long, env = "READ_MAX_WAIT_MS", default_value_t = 5_000)]
    read_max_wait_ms: u64,
    /// When writes are fsynced: `always` (before acknowledging; group commit), `never`, or `interval:MS`.
    #[arg(long, env = "DURABILITY", default_value = "always", value_parser = parse_durability)]
    durability: Durability,
    /// Segment size at which the active log segment is sealed and a new one started, in bytes.
    #[arg(long, env = "SEGMENT_BYTES", default_value_t = Options::DEFAULT_SEGMENT_BYTES)]
    segment_bytes: u64,
    /// Keydir implementation.
    #[arg(long, env = "INDEX", value_enum, default_value_t = IndexArg::Btree)]
    index: IndexArg,
    /// Largest key, in bytes.
    #[arg(long, env = "MAX_KEY_BYTES", default_value_t = Limits::DEFAULT_MAX_KEY_BYTES)]
    max_key_bytes: usize,
    /// Largest value, in bytes.
    #[arg(long, env = "MAX_VALUE_BYTES", default_value_t = Limits::DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Most operations in one batch.
    #[arg(long, env = "MAX_BATCH_OPS", default_value_t = Limits::DEFAULT_MAX_BATCH_OPS)]
    max_batch_ops: usize,
    /// Largest request body, in bytes (default: the value limit plus 1 MiB for JSON framing).
    #[arg(long, env = "MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most connections served at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Milliseconds a connection may take to send a request head, counted from when it starts waiting for
    /// one (so it also closes idle keep-alive connections).
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Milliseconds a request may take before it is answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Milliseconds a response may make no progress (the client reads nothing) before its connection is
    /// closed.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    write_timeout_ms: u64,
    /// Milliseconds shutdown waits for in-flight requests.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Most segment files open at once (least recently used ones are closed beyond it).
    #[arg(long, env = "MAX_OPEN_FILES", default_value_t = 256)]
    max_open_files: usize,
    /// Compact automatically when garbage reaches this share of the disk bytes (0 turns it off).
    #[arg(long, env = "COMPACT_GARBAGE_RATIO", default_value_t = 0.5)]
    compact_garbage_ratio: f64,
    /// ... and at least this many garbage bytes.
    #[arg(long, env = "COMPACT_MIN_GARBAGE_BYTES", default_value_t = 64 << 20)]
    compact_min_garbage_bytes: u64,
    /// Milliseconds between checks of the compaction threshold.
    #[arg(long, env = "COMPACT_CHECK_MS", default_value_t = 10_000)]
    compact_check_ms: u64,
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Exit 0 if the server on HTTP_PORT (--port) of this host is ready (`GET /readyz` answers 200 within
    /// two seconds), 1 otherwise, printing why. Needs no shell or curl: a container's HEALTHCHECK runs the
    /// binary itself.
    Health {
        /// Check liveness only (`GET /health-check`: the process answers), not readiness.
        #[arg(long)]
        live: bool,
        /// Base URL of the server to check (default: http://127.0.0.1:PORT; with TLS_CERT_FILE
        /// https://localhost:PORT, verified with TLS_CA_FILE, so the certificate must name localhost,
        /// presenting TLS_CERT_FILE as its client certificate when TLS_CLIENT_CA_FILE asks for one).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Leader,
    Follower,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ReplicationEngine {
    Static,
    Raft,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IndexArg {
    Btree,
    ConcurrentSkiplist,
    LockedSkiplist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => other
            .strip_prefix("interval:")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(|ms| Durability::Interval { ms })
            .ok_or_else(|| format!("{other:?} is not always, never or interval:MS (MS > 0)")),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft warns on every heartbeat a down peer misses (20 a second): its errors only, unless
        // RUST_LOG asks for more (e.g. RUST_LOG=info,openraft=info).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or SIGINT. The server installs its own handlers, so it stops cleanly as PID 1 in a
/// container too (where the kernel gives PID 1 no default signal behaviour).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// `kv-server health`: one `GET /readyz` (or `/health-check` with `live`) of the server at `url`, within
/// two seconds. Exit 0 on 200; 1 otherwise, with the server's reasons on stderr.
fn health(url: &str, live: bool) -> ExitCode {
    let path = if live { "/health-check" } else { "/readyz" };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let answer = runtime.block_on(async {
        let mut client = kv_infra_http::client::Client::new(url).map_err(|e| e.to_string())?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.send(hyper::Method::GET, path, Default::default()),
        )
        .await
        .map_err(|_| format!("{url} did not answer {path} within 2 s"))?
        .map_err(|e| e.to_string())
    });
    match answer {
        Ok((status, _)) if status.is_success() => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!(
                "unhealthy: {url}{path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Health { live, url }) = &config.command {
        if let Err(e) = tls_client(&config) {
            eprintln!("unhealthy: {e}");
            return ExitCode::from(1);
        }
        let scheme = if config.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        let url = url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://localhost:{}", config.port));
        return health(&url, *live);
    }
    init_logging(config.log_format);
    if let Err(e) = check_replication_config(&config) {
        tracing::error!("invalid replication configuration: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// This node's id and every voter's URL by id.
type ClusterMembers = (u64, std::collections::BTreeMap<u64, String>);

/// The peers of CLUSTER_PEERS (`ID=URL,...`), checked: ids unique, URLs http(s), this node among them.
fn cluster_peers(c: &Config) -> Result<Option<ClusterMembers>, String> {
    let listed: Vec<&String> = c
        .cluster_peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .collect();
    match (c.cluster_node_id, listed.is_empty()) {
        (None, true) => return Ok(None),
        (Some(_), true) => return Err("CLUSTER_NODE_ID is set but CLUSTER_PEERS is empty".into()),
        (None, false) => return Err("CLUSTER_PEERS is set but CLUSTER_NODE_ID is not".into()),
        (Some(_), false) => {}
    }
    let mut peers = std::collections::BTreeMap::new();
    for entry in listed {
        let (id, url) = entry.trim().split_once('=').ok_or_else(|| {
            format!("CLUSTER_PEERS entry {entry:?} is not ID=URL (e.g. 1=http://kv1:8080)")
        })?;
        let id: u64 = id.trim().parse().map_err(|_| {
            format!("CLUSTER_PEERS entry {entry:?}: {id:?} is not a node id (a number)")
        })?;
        let url = url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "CLUSTER_PEERS entry {entry:?}: the URL must start with http:// or https://"
            ));
        }
        if peers.insert(id, url).is_some() {
            return Err(format!("CLUSTER_PEERS names node {id} twice"));
        }
    }
    let me = c.cluster_node_id.unwrap_or_default();
    if !peers.contains_key(&me) {
        return Err(format!(
            "CLUSTER_NODE_ID {me} is not among CLUSTER_PEERS ({:?})",
            peers.keys().collect::<Vec<_>>()
        ));
    }
    Ok(Some((me, peers)))
}

fn check_replication_config(c: &Config) -> Result<(), String> {
    if cluster_peers(c)?.is_some()
        && (c.replication_mode == Role::Follower
            || c.replication_replica_hosts.iter().any(|h| !h.is_empty()))
    {
        return Err("CLUSTER_PEERS (a Raft cluster) cannot be combined with REPLICATION_MODE=follower or REPLICATION_REPLICA_HOSTS (static replication) yet".into());
    }
    match c.replication_mode {
        Role::Follower => {
            if c.replication_leader_host
                .as_deref()
                .unwrap_or("")
                .is_empty()
            {
                return Err(
                    "a follower needs REPLICATION_LEADER_HOST (the leader's base URL)".into(),
                );
            }
            if !c.replication_replica_hosts.is_empty() {
                return Err(
                    "REPLICATION_REPLICA_HOSTS is a leader setting; a follower does not ship"
                        .into(),
                );
            }
        }
        Role::Leader => {
            let followers = c
                .replication_replica_hosts
                .iter()
                .filter(|h| !h.is_empty())
                .count();
            if c.replication_ack_followers > followers {
                return Err(format!(
                    "REPLICATION_ACK_FOLLOWERS is {} but only {followers} followers are configured",
                    c.replication_ack_followers
                ));
            }
        }
    }
    // The replication token is the cluster's root secret (it rewrites a follower, drives Raft and
    // changes membership): held to the client tokens' minimum, so a guessable one cannot be set.
    for (name, token) in [
        ("REPLICATION_TOKEN", &c.replication_token),
        ("REPLICATION_TOKEN_ACCEPTED", &c.replication_token_accepted),
    ] {
        let Some(token) = token else { continue };
        kv_infra_http::auth::check_token(token.expose()).map_err(|why| format!("{name} {why}"))?;
        if token.expose() == "change-me-in-production" {
            tracing::warn!("{name} is the compose files' public placeholder: anyone who reaches a peer route can use it; set your own");
        }
    }
    if c.replication_token_accepted.is_some() && c.replication_token.is_none() {
        return Err("REPLICATION_TOKEN_ACCEPTED is a second token beside REPLICATION_TOKEN, which is not set: set REPLICATION_TOKEN to the token this node sends".into());
    }
    let replicated = cluster_peers(c)?.is_some()
        || c.replication_mode == Role::Follower
        || c.replication_replica_hosts.iter().any(|h| !h.is_empty());
    if replicated && c.auth_tokens_file.is_some() && c.replication_token.is_none() {
        return Err("AUTH_TOKENS_FILE with replication or a cluster needs REPLICATION_TOKEN: with client tokens the replication, Raft and membership endpoints answer only the replication token".into());
    }
    Ok(())
}

/// Who may do what: the token file's tokens, else protected mode unless PROTECTED_MODE=false. Logs how
/// clients are admitted (never a token) and warns about an open server or a token file others may read.
fn auth_policy(config: &Config) -> Result<kv_infra_http::auth::AuthPolicy, String> {
    use kv_infra_http::auth::AuthPolicy;
    let policy = match &config.auth_tokens_file {
        None => AuthPolicy::new(None, !config.protected_mode),
        Some(path) => {
            let (policy, warning) =
                AuthPolicy::from_file(path, !config.protected_mode).map_err(|e| e.to_string())?;
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            policy
        }
    }
    .also_accepting(config.replication_token_accepted.clone());
    if config.replication_token_accepted.is_some() {
        tracing::info!("a second replication token is accepted from peers (REPLICATION_TOKEN_ACCEPTED): remove it once every node sends the new one");
    }
    if policy.is_protected() {
        tracing::warn!(
            access = %policy.describe(),
            "protected mode: no AUTH_TOKENS_FILE, so only clients on the loopback interface are served; configure tokens (docs/security.md), or set PROTECTED_MODE=false to open it"
        );
    } else if !policy.has_tokens() {
        tracing::warn!(
            access = %policy.describe(),
            "PROTECTED_MODE=false: every client that can reach this port may read, write and administer"
        );
    } else {
        tracing::info!(access = %policy.describe(), "client tokens");
    }
    Ok(policy)
}

/// The CA (TLS_CA_FILE) this process verifies `https://` servers with, presenting its own certificate
/// (TLS_CERT_FILE) when a peer asks for one.
fn tls_client(config: &Config) -> Result<(), String> {
    let Some(ca) = &config.tls_ca_file else {
        return Ok(());
    };
    let identity = config
        .tls_cert_file
        .as_deref()
        .zip(config.tls_key_file.as_deref());
    kv_infra_http::tls::set_client_config(ca, identity).map_err(|e| e.to_string())
}

/// The listener's TLS (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE); [`reload_on_hangup`] reads
/// it again.
fn tls_listener(config: &Config) -> Result<Option<Arc<kv_infra_http::tls::TlsListener>>, String> {
    use kv_infra_http::tls::{TlsFiles, TlsListener};
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Ok(None);
    };
    let files = TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.tls_client_ca_file.clone(),
    };
    let listener = Arc::new(TlsListener::open(files).map_err(|e| e.to_string())?);
    tracing::info!(
        cert = %cert.display(),
        client_certificates = listener.requires_client_certificates(),
        "HTTPS (SIGHUP reloads the certificate)"
    );
    Ok(Some(listener))
}

/// The CA file and own identity of outgoing TLS connections (see [`tls_client`]).
type ClientTls = (PathBuf, Option<(PathBuf, PathBuf)>);

/// On every SIGHUP, reads the token file and the TLS files again (the listener's, and the CA and
/// identity of outgoing connections, so a rotated certificate is also what this node presents to its
/// peers). What fails to load is logged and keeps what is in use.
fn reload_on_hangup(
    auth: kv_infra_http::auth::AuthPolicy,
    tls: Option<Arc<kv_infra_http::tls::TlsListener>>,
    client_tls: Option<ClientTls>,
) -> Result<(), String> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if auth.has_tokens() {
                match auth.reload() {
                    Ok(warning) => {
                        if let Some(warning) = warning {
                            tracing::warn!("{warning}");
                        }
                        tracing::info!(access = %auth.describe(), "SIGHUP: client tokens reloaded");
                    }
                    Err(e) => tracing::error!(
                        "SIGHUP: the token file failed to load, the tokens in use stay: {e}"
                    ),
                }
            }
            if let Some((ca, identity)) = &client_tls {
                let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                match kv_infra_http::tls::set_client_config(ca, identity) {
                    Ok(()) => tracing::info!("SIGHUP: TLS client configuration reloaded"),
                    Err(e) => tracing::error!(
                        "SIGHUP: the TLS client configuration failed to load, the one in use stays: {e}"
                    ),
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(
                        "SIGHUP: TLS reload failed, the certificate in use stays: {e}"
                    ),
                }
            }
        }
    });
    Ok(())
}

/// What a peer route admits while no REPLICATION_TOKEN is set, for the start-up warning.
fn unguarded_peers(config: &Config) -> &'static str {
    if config.auth_tokens_file.is_some() {
        "nobody (with AUTH_TOKENS_FILE they need the replication token)"
    } else if config.protected_mode {
        "only peers on the loopback interface"
    } else {
        "anyone who can reach this port (PROTECTED_MODE=false)"
    }
}

/// The followers' base URLs of REPLICATION_REPLICA_HOSTS, trimmed, empty entries dropped.
fn replica_hosts(config: &Config) -> Vec<String> {
    config
        .replication_replica_hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

/// The replication role: a leader's hub (with its history id) or a follower's state.
fn replication(
    config: &Config,
    engine: &Arc<FsEngine>,
) -> Result<kv_infra_http::replication::Replication, String> {
    // Writes made here would take LSNs the Raft log hands out again: its entries would then be skipped
    // as already applied (and never reach its peers).
    if config.data_path.join("raft").join("STATE").exists() {
        return Err(format!(
            "{} holds Raft state (it ran in a cluster or with REPLICATION_ENGINE=raft): start it the same way again; to run it standalone or with static replication, export its data (kvctl --data-dir ... export) into a fresh directory",
            config.data_path.display()
        ));
    }
    use kv_infra_http::replication::{AckPolicy, FollowerNode, LeaderHub, Replication, Role as R};
    let store = Arc::new(kv_infra_fs::FileMetaStore::new(&config.data_path));
    let dyn_engine: Arc<dyn kv_domain::LogShipping> = engine.clone();
    let mut leader_history = None;
    let role = match config.replication_mode {
        Role::Follower => {
            let leader = config.replication_leader_host.clone().unwrap_or_default();
            let replica = kv_app::Replica::open(dyn_engine, store)
                .map_err(|e| format!("reading replication metadata: {e}"))?;
            let st = replica.state();
            tracing::info!(%leader, history = ?st.history, applied = st.applied.0,
                snapshot_in_progress = st.snapshot_in_progress, "following");
            R::Follower(
                FollowerNode::new(replica, &leader, config.replication_token.clone())
                    .map_err(|e| e.to_string())?,
            )
        }
        Role::Leader => {
            // A new history: followers of any other one will refuse this leader.
            let history = kv_app::leader_history(store.as_ref(), || {
                format!("{:032x}", rand::random::<u128>())
            })
            .map_err(|e| e.to_string())?;
            if history.created {
                tracing::info!(history = %history.id, "created a new replication history");
            }
            let history = history.id;
            leader_history = Some(history.clone());
            let followers = replica_hosts(config);
            if followers.is_empty() {
                R::Leader(None)
            } else {
                tracing::info!(%history, ?followers, ack = config.replication_ack_followers, "leading");
                R::Leader(Some(LeaderHub::new(
                    dyn_engine,
                    history,
                    config.replication_token.clone(),
                    AckPolicy {
                        followers: config.replication_ack_followers,
                        timeout: Duration::from_millis(config.replication_ack_timeout_ms),
                    },
                    &followers,
                )))
            }
        }
    };
    if config.replication_token.is_none()
        && (config.replication_mode == Role::Follower
            || !config.replication_replica_hosts.is_empty())
    {
        tracing::warn!(
            "REPLICATION_TOKEN is not set: the replication endpoints accept {}",
            unguarded_peers(config)
        );
    }
    Ok(Replication {
        role,
        token: config.replication_token.clone(),
        history: leader_history,
        max_read_wait: Duration::from_millis(config.read_max_wait_ms),
        ..Replication::standalone()
    })
}

/// A Raft member's engine: applies never wait for an fsync, and one every 100 ms bounds what only the
/// Raft log holds. That matters after a power loss on a node that cannot reach a leader any more (the
/// majority-lost procedure in docs/cluster.md exports its engine): openraft re-applies the log only up
/// to a commit index it learns from a leader.
const MEMBER_ENGINE_DURABILITY: Durability = Durability::Interval { ms: 100 };

/// Whether this server's engine is a Raft state machine: a `CLUSTER_PEERS` member, or
/// `REPLICATION_ENGINE=raft` with followers, as a follower, or with Raft state already (a leader with
/// neither stays standalone). Its writes are then durable once in the Raft log, and the engine syncs
/// in the background ([`MEMBER_ENGINE_DURABILITY`]; see `kv_infra_raft::StateMachine`).
fn runs_raft(c: &Config) -> Result<bool, String> {
    if cluster_peers(c)?.is_some() {
        return Ok(true);
    }
    if c.replication_engine != ReplicationEngine::Raft {
        return Ok(false);
    }
    let was_raft = c.data_path.join("raft").join("STATE").exists();
    Ok(c.replication_mode == Role::Follower || !replica_hosts(c).is_empty() || was_raft)
}

/// `REPLICATION_MODE` on Raft (`REPLICATION_ENGINE=raft`): a leader with followers (or that was one)
/// is a one-voter cluster keeping its followers learners; a follower is a learner by invitation.
/// `None`: a leader with no followers and no Raft state, which runs standalone.
async fn raft_replication(
    config: &Config,
    engine: &Arc<FsEngine>,
) -> Result<Option<kv_infra_http::replication::Replication>, String> {
    use kv_infra_http::cluster::{ClusterNode, HttpTransport};
    let shipping: Arc<dyn kv_domain::LogShipping> = engine.clone();
    let followers = replica_hosts(config);
    if config.replication_token.is_none()
        && (config.replication_mode == Role::Follower || !followers.is_empty())
    {
        tracing::warn!(
            "REPLICATION_TOKEN is not set: the Raft endpoints accept {}",
            unguarded_peers(config)
        );
    }
    let replication = kv_infra_http::replication::Replication {
        token: config.replication_token.clone(),
        max_read_wait: Duration::from_millis(config.read_max_wait_ms),
        ..kv_infra_http::replication::Replication::standalone()
    };
    match config.replication_mode {
        Role::Leader if !runs_raft(config)? => Ok(None),
        Role::Leader => {
            // The cluster id is created with the Raft state and kept beside it (raft/CLUSTER_ID): a
            // leader whose Raft state is new (its raft/ was lost, or it never had one) leads a new
            // cluster, which learners of any earlier one refuse, since its log ids would repeat theirs.
            let was_raft = config.data_path.join("raft").join("STATE").exists();
            let history = match kv_infra_raft::identity::cluster_id(&config.data_path)
                .map_err(|e| format!("reading raft/CLUSTER_ID: {e}"))?
            {
                Some(id) if was_raft => id,
                _ => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    kv_infra_raft::identity::join_cluster(&config.data_path, &id)
                        .map_err(|e| format!("storing raft/CLUSTER_ID: {e}"))?;
                    tracing::info!(cluster = %id, "created a new replication history (Raft)");
                    id
                }
            };
            let transport = Arc::new(HttpTransport::new(
                config.replication_token.clone(),
                history.clone(),
            ));
            // The leader's own URL is not known to it (and not needed: learners forward to
            // REPLICATION_LEADER_HOST). Its data, if any, is the cluster's initial state.
            let settings = kv_infra_raft::ClusterSettings {
                snapshot_after_entries: config.cluster_snapshot_entries,
                init_from_data: true,
                ..kv_infra_raft::ClusterSettings::new(1, [(1, String::new())].into())
            };
            let node =
                kv_infra_raft::RaftNode::start(settings, &config.data_path, shipping, transport)
                    .await
                    .map_err(|e| format!("cannot start the Raft node: {e}"))?;
            let cluster = Arc::new(ClusterNode::new(node, history.clone()));
            // The only voter elects itself at once: serve writes from the start, as a static leader.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while cluster.status().state != "leader" && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let learners = Arc::new(kv_infra_http::learners::Learners::new(
                &followers,
                config.replication_token.clone(),
                cluster.clone(),
                kv_domain::AckRequirement {
                    followers: config.replication_ack_followers,
                    timeout: Duration::from_millis(config.replication_ack_timeout_ms),
                },
            ));
            tracing::info!(%history, ?followers, ack = config.replication_ack_followers, "leading (Raft, followers as learners)");
            Ok(Some(kv_infra_http::replication::Replication {
                history: Some(history),
                cluster: Some(cluster),
                learners: Some(learners),
                ..replication
            }))
        }
        Role::Follower => {
            let leader = config.replication_leader_host.clone().unwrap_or_default();
            let id = kv_infra_raft::identity::node_id(&config.data_path)
                .map_err(|e| format!("reading raft/NODE_ID: {e}"))?;
            let joined = kv_infra_raft::identity::cluster_id(&config.data_path)
                .map_err(|e| format!("reading raft/CLUSTER_ID: {e}"))?;
            // A learner sends no Raft message: the transport's cluster id is never used.
            let transport = Arc::new(HttpTransport::new(
                config.replication_token.clone(),
                joined.clone().unwrap_or_default(),
            ));
            let settings = kv_infra_raft::ClusterSettings {
                snapshot_after_entries: config.cluster_snapshot_entries,
                join_only: true,
                ..kv_infra_raft::ClusterSettings::new(id, [(id, String::new())].into())
            };
            let node =
                kv_infra_raft::RaftNode::start(settings, &config.data_path, shipping, transport)
                    .await
                    .map_err(|e| format!("cannot start the Raft node: {e}"))?;
            tracing::info!(%leader, node_id = id, cluster = ?joined, "following (Raft learner)");
            let cluster = Arc::new(ClusterNode::learner(
                node,
                joined,
                &config.data_path,
                &leader,
            ));
            Ok(Some(kv_infra_http::replication::Replication {
                cluster: Some(cluster),
                ..replication
            }))
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    tracing::info!(?config, "starting kv-server");
    let auth = auth_policy(&config)?;
    tls_client(&config)?;
    let tls = tls_listener(&config)?;
    let client_tls = config.tls_ca_file.clone().map(|ca| {
        let identity = config
            .tls_cert_file
            .clone()
            .zip(config.tls_key_file.clone());
        (ca, identity)
    });
    // Only with something to reload: otherwise SIGHUP keeps its default (the server stops with its
    // terminal).
    if auth.has_tokens() || tls.is_some() || client_tls.is_some() {
        reload_on_hangup(auth.clone(), tls.clone(), client_tls)?;
    }
    let index = match config.index {
        IndexArg::Btree => IndexKind::BTree,
        IndexArg::ConcurrentSkiplist => IndexKind::ConcurrentSkipList,
        IndexArg::LockedSkiplist => IndexKind::LockedSkipList,
    };
    let auto_compaction = (config.compact_garbage_ratio > 0.0).then(|| AutoCompaction {
        garbage_ratio: config.compact_garbage_ratio,
        min_garbage_bytes: config.compact_min_garbage_bytes,
        check_every: Duration::from_millis(config.compact_check_ms.max(1)),
    });
    // A Raft member's writes are durable in its Raft log, which fsyncs every append whatever
    // DURABILITY says; its engine, the state machine, syncs in the background (and before every record
    // of what it applied). Waiting for the engine's fsync too cost a second fsync per write.
    let durability = if runs_raft(&config)? {
        tracing::info!(
            configured = %config.durability,
            engine = %MEMBER_ENGINE_DURABILITY,
            "Raft: writes are durable in the Raft log; DURABILITY does not apply to the engine"
        );
        MEMBER_ENGINE_DURABILITY
    } else {
        config.durability
    };
    let opts = Options {
        durability,
        max_segment_bytes: config.segment_bytes,
        index,
        auto_compaction,
        max_open_files: config.max_open_files,
        ..Options::default()
    };
    let dir = config.data_path.clone();
    let engine = tokio::task::spawn_blocking(move || FsEngine::open(&dir, opts))
        .await
        .map_err(|e| format!("opening the data directory failed: {e}"))?
        .map_err(|e| {
            format!(
                "cannot open data directory {}: {e}",
                config.data_path.display()
            )
        })?;
    let report = engine.recovery_report().clone();
    tracing::info!(
        segments = report.segments, records = report.records, truncated_bytes = report.truncated_bytes,
        truncated_copy = ?report.truncated_copy, notes = ?report.notes, "recovery summary"
    );
    let engine = Arc::new(engine);
    let limits = Limits {
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        max_batch_ops: config.max_batch_ops,
    };
    let mut service = KvService::new(engine.clone(), limits);
    let replication = match cluster_peers(&config)? {
        None if config.replication_engine == ReplicationEngine::Raft => {
            match raft_replication(&config, &engine).await? {
                Some(r) => {
                    if let Some(cluster) = &r.cluster {
                        service = service.with_consensus(cluster.clone());
                    }
                    r
                }
                None => replication(&config, &engine)?,
            }
        }
        None => replication(&config, &engine)?,
        Some((node_id, peers)) => {
            if config.replication_token.is_none() {
                tracing::warn!(
                    "REPLICATION_TOKEN is not set: the Raft endpoints accept {}",
                    unguarded_peers(&config)
                );
            }
            let cluster_id =
                kv_infra_http::cluster::cluster_id(config.cluster_id.as_deref(), &peers);
            let transport = Arc::new(kv_infra_http::cluster::HttpTransport::new(
                config.replication_token.clone(),
                cluster_id.clone(),
            ));
            let shipping: Arc<dyn kv_domain::LogShipping> = engine.clone();
            let settings = kv_infra_raft::ClusterSettings {
                snapshot_after_entries: config.cluster_snapshot_entries,
                init_from_data: config.cluster_init_from_data,
                ..kv_infra_raft::ClusterSettings::new(node_id, peers.clone())
            };
            let node =
                kv_infra_raft::RaftNode::start(settings, &config.data_path, shipping, transport)
                    .await
                    .map_err(|e| format!("cannot start the Raft node: {e}"))?;
            tracing::info!(node_id, ?peers, %cluster_id, "cluster member");
            let cluster = Arc::new(kv_infra_http::cluster::ClusterNode::new(node, cluster_id));
            service = service.with_consensus(cluster.clone());
            kv_infra_http::replication::Replication {
                token: config.replication_token.clone(),
                max_read_wait: Duration::from_millis(config.read_max_wait_ms),
                cluster: Some(cluster),
                ..kv_infra_http::replication::Replication::standalone()
            }
        }
    };
    let (stop_shipping, shipping_stopped) = tokio::sync::watch::channel(false);
    if let Some(hub) = replication.hub() {
        hub.start(shipping_stopped.clone());
    }
    if let Some(learners) = &replication.learners {
        tokio::spawn(learners.clone().run(shipping_stopped));
    }
    let cluster = replication.cluster.clone();
    let state = Arc::new(ServerState {
        service,
        metrics: Arc::new(Metrics::default()),
        max_body_bytes: config
            .max_body_bytes
            .unwrap_or(config.max_value_bytes.saturating_add(1 << 20)),
        replication,
        auth,
    });
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "listening");
    let server_config = ServerConfig {
        max_connections: config.max_connections,
        header_timeout: Duration::from_millis(config.header_timeout_ms),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        write_timeout: Duration::from_millis(config.write_timeout_ms),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        tls,
    };
    serve(listener, state.clone(), server_config, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    let _ = stop_shipping.send(true);
    drop(state);
    if let Some(cluster) = cluster {
        cluster.raft().shutdown().await;
        drop(cluster);
        // openraft's state-machine task lets go of the engine a moment after shutdown.
        for _ in 0..100 {
            if Arc::strong_count(&engine) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Requests are drained: make everything durable and release the lock.
    let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(engine) {
        Ok(engine) => engine.close(),
        Err(shared) => kv_domain::Engine::sync(&*shared),
    })
    .await
    .map_err(|e| format!("closing the engine failed: {e}"))?;
    closed.map_err(|e| format!("final sync failed: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers_of(args: &[&str]) -> Result<Option<ClusterMembers>, String> {
        let mut all = vec!["kv-server"];
        all.extend_from_slice(args);
        let config = Config::try_parse_from(all).map_err(|e| e.to_string())?;
        cluster_peers(&config)
    }

    #[test]
    fn a_token_file_with_replication_needs_the_replication_token() {
        let check = |args: &[&str]| {
            let mut all = vec!["kv-server", "--auth-tokens-file", "/t"];
            all.extend_from_slice(args);
            check_replication_config(&Config::try_parse_from(all).unwrap())
        };
        let follower = [
            "--replication-mode",
            "follower",
            "--replication-leader-host",
            "http://l",
        ];
        let refused = check(&follower).unwrap_err();
        assert!(refused.contains("needs REPLICATION_TOKEN"), "{refused}");
        for args in [
            &["--replication-replica-hosts", "http://f"][..],
            &["--cluster-node-id", "1", "--cluster-peers", "1=http://a"][..],
        ] {
            let refused = check(args).unwrap_err();
            assert!(refused.contains("needs REPLICATION_TOKEN"), "{refused}");
        }
        assert!(check(&[]).is_ok(), "a standalone server has no peers");
        let mut with_token = follower.to_vec();
        with_token.extend(["--replication-token", "t0123456789abcdef"]);
        assert!(check(&with_token).is_ok());
    }

    #[test]
    fn a_replication_token_shorter_than_a_client_token_is_refused() {
        let check = |token: &str| {
            check_replication_config(
                &Config::try_parse_from(["kv-server", "--replication-token", token]).unwrap(),
            )
        };
        let invisible = check("sixteen chars 01").unwrap_err();
        assert!(invisible.contains("visible ASCII"), "{invisible}");
        for short in ["", "q7", "fifteen-chars-1"] {
            let refused = check(short).unwrap_err();
            assert!(
                refused.contains(&format!("is {} characters", short.len()))
                    && refused.contains("at least 16"),
                "{refused}"
            );
            assert!(
                short.is_empty() || !refused.contains(short),
                "the token itself is never echoed: {refused}"
            );
        }
        assert!(check("sixteen-chars-01").is_ok());
        let accepted = |args: &[&str]| {
            let mut all = vec!["kv-server"];
            all.extend_from_slice(args);
            check_replication_config(&Config::try_parse_from(all).unwrap())
        };
        let alone = accepted(&["--replication-token-accepted", "sixteen-chars-01"]).unwrap_err();
        assert!(
            alone.contains("REPLICATION_TOKEN, which is not set"),
            "{alone}"
        );
        let short = accepted(&[
            "--replication-token",
            "sixteen-chars-01",
            "--replication-token-accepted",
            "q7",
        ])
        .unwrap_err();
        assert!(
            short.starts_with("REPLICATION_TOKEN_ACCEPTED is 2 characters"),
            "{short}"
        );
        assert!(accepted(&[
            "--replication-token",
            "sixteen-chars-01",
            "--replication-token-accepted",
            "sixteen-chars-02",
        ])
        .is_ok());
    }

    #[test]
    fn cluster_peers_are_parsed_and_every_mistake_is_named() {
        assert_eq!(peers_of(&[]), Ok(None));
        let (me, peers) = peers_of(&[
            "--cluster-node-id",
            "2",
            "--cluster-peers",
            "1=http://a:8080, 2=http://b:8080/,3=http://c:8080",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(me, 2);
        assert_eq!(peers[&2], "http://b:8080", "trimmed, no trailing slash");
        assert_eq!(peers.len(), 3);
        let mistakes: [(&[&str], &str); 6] = [
            (&["--cluster-node-id", "1"], "CLUSTER_PEERS is empty"),
            (&["--cluster-peers", "1=http://a"], "CLUSTER_NODE_ID is not"),
            (
                &["--cluster-node-id", "1", "--cluster-peers", "1:http://a"],
                "not ID=URL",
            ),
            (
                &["--cluster-node-id", "1", "--cluster-peers", "x=http://a"],
                "not a node id",
            ),
            (
                &["--cluster-node-id", "1", "--cluster-peers", "1=a:8080"],
                "must start with http",
            ),
            (
                &[
                    "--cluster-node-id",
                    "4",
                    "--cluster-peers",
                    "1=http://a,2=http://b",
                ],
                "not among CLUSTER_PEERS",
            ),
        ];
        for (args, says) in mistakes {
            let err = peers_of(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        let twice = peers_of(&[
            "--cluster-node-id",
            "1",
            "--cluster-peers",
            "1=http://a,1=http://b",
        ]);
        assert!(twice.unwrap_err().contains("twice"));
    }
}
