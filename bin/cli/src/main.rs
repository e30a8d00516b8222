//! `kvctl`: the command-line client of the Moniepoint storage engine, in the spirit of `etcdctl` and
//! `redis-cli`. Talks to a server (`--url`, default `http://127.0.0.1:8080`) or opens a data directory
//! directly (`--data-dir`). Values go to stdout as raw bytes (escaped when stdout is a terminal); errors to
//! stderr; exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 server, network or disk failure.

mod bench;
mod duration;
mod error;
mod escape;
mod input;
mod raw_conn;
mod repair;
mod shell;
mod target;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::error::CliError;
use crate::input::{json_line, parse_all, parse_line, Pair};
use crate::target::Target;

/// The version with the git revision the binary was built from (`-dirty`: with uncommitted changes;
/// `unknown` when built without git or outside a checkout). See build.rs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("KVCTL_GIT_REVISION"),
    ")"
);

/// The server when neither --url nor an environment variable names one.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The request timeout when none is given (`compact` has none unless one is given: it may take long).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

const AFTER_HELP: &str = "\
Environment:
  KV_URL              the server, like --url (KV_ENDPOINT is accepted too; --url wins, then KV_URL)
  KV_CONNECT_TIMEOUT  like --connect-timeout (default 5s)
  KV_TIMEOUT          like --timeout (default 30s; compact: none)
  KV_TOKEN            the client token, like --token (a server with AUTH_TOKENS_FILE needs one)
  KV_TOKEN_FILE       like --token-file: a file whose first line is the client token
  KV_CACERT           like --cacert: the CA file an https:// server is verified with
  KV_CLIENT_CERT, KV_CLIENT_KEY  like --client-cert and --client-key
Durations: seconds (2.5) or with a unit (500ms, 5s, 1m); 0 for no bound.

Output: values are raw bytes into a pipe or file; on a terminal, control characters and bytes that are not
UTF-8 are escaped (\\n, \\t, \\xHH; a backslash as \\\\) and `get` adds a newline.

--data-dir: put, batch and import create the directory when it does not exist; every other command fails
(exit 2) rather than read an empty store made by a typo.

Exit codes: 0 ok (also when stdout is closed early, as by `| head`), 1 key not found, 2 usage or bad input
(nothing written; also a request the server refused: 401 no or unknown token, 403 role too weak or
protected mode), 3 server, network, timeout or disk failure. A scripted shell (stdin not a terminal) exits
with the code of its first failing command.

Shell completion: kvctl completion bash|zsh|fish|elvish|powershell";

/// Command-line client of the Moniepoint storage engine.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version = VERSION, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Server to talk to [env: KV_URL or KV_ENDPOINT] [default: http://127.0.0.1:8080].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Open this data directory directly instead of talking to a server (fails if a server holds it).
    /// Takes precedence over --url.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// Give up connecting to the server after this long (exit 3).
    #[arg(long, env = "KV_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration::parse, global = true)]
    connect_timeout: Duration,
    /// Give up on a request that is not fully answered after this long (exit 3; a write's outcome is then
    /// unknown) [default: 30s; compact: none].
    #[arg(long, env = "KV_TIMEOUT", value_parser = duration::parse, global = true)]
    timeout: Option<Duration>,
    /// Client token, sent as `Authorization: Bearer <token>` (a server with AUTH_TOKENS_FILE needs one)
    /// [env: KV_TOKEN]. Prefer KV_TOKEN or --token-file: a flag shows in the process list.
    #[arg(long, global = true)]
    token: Option<String>,
    /// A file whose first line is the client token [env: KV_TOKEN_FILE].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// For an https:// server: the CA certificates (PEM) its certificate must be signed by.
    #[arg(long, env = "KV_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// For a server that requires client certificates: this client's certificate chain (PEM), with
    /// --client-key.
    #[arg(long, env = "KV_CLIENT_CERT", requires = "client_key", global = true)]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "KV_CLIENT_KEY", requires = "client_cert", global = true)]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The server: --url, else KV_URL, else KV_ENDPOINT, else the default.
    fn url(&self) -> String {
        self.url
            .clone()
            .or_else(|| env_var("KV_URL"))
            .or_else(|| env_var("KV_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }
}

/// A set, non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Raw values; `key<TAB>value` lines for ranges; `OK` for writes.
    Text,
    /// JSON: one object per result, JSON lines for ranges.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a value: from the argument, from --file, or else from stdin (raw bytes).
    Put {
        /// The key.
        key: String,
        /// The value (omit to read --file or stdin).
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Print a value (raw bytes, no newline added; escaped, with a newline, on a terminal).
    Get {
        /// The key.
        key: String,
    },
    /// Delete a key (succeeds whether or not it exists).
    Delete {
        /// The key.
        key: String,
    },
    /// Print every pair with START <= key <= END in key order.
    Range {
        /// First key (need not exist).
        start: String,
        /// Last key (need not exist).
        end: String,
        /// At most this many pairs.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write pairs atomically from FILE or stdin: a JSON object, JSON lines, or `key<TAB>value` lines.
    Batch {
        /// Input file (default or "-": stdin).
        file: Option<PathBuf>,
    },
    /// Load a large file in batches (not atomic as a whole) with progress, then print the throughput.
    Import {
        /// Input file (JSON lines or `key<TAB>value` lines; "-" for stdin).
        file: PathBuf,
        /// Pairs per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
    },
    /// Write every pair with START <= key <= END as JSON lines (the format import reads).
    Export {
        /// First key.
        start: String,
        /// Last key.
        end: String,
    },
    /// Show the server's (or data directory's) status.
    Status,
    /// Compact now: reclaim the space of overwritten and deleted values; prints the report.
    Compact,
    /// A Raft cluster: its status, and membership operations (run on the leader; any member forwards).
    Cluster {
        /// The operation.
        #[command(subcommand)]
        op: ClusterOp,
        /// The replication token (else KV_REPLICATION_TOKEN, else the first line of
        /// --replication-token-file); for `status`, an admin client token (--token) serves as well.
        #[arg(
            long,
            env = "KV_REPLICATION_TOKEN",
            hide_env_values = true,
            global = true
        )]
        replication_token: Option<String>,
        /// A file whose first line is the replication token (keeps it off the command line).
        #[arg(long, global = true)]
        replication_token_file: Option<PathBuf>,
    },
    /// Interactive shell: put, read, delete, readrange, batchput, status, help, exit.
    Shell,
    /// Load generator against a server: req/s and latency percentiles (HDR histogram). Not bounded by
    /// --timeout: it measures latency itself.
    Bench(bench::BenchArgs),
    /// Salvage a data directory that refuses to open (a damaged or missing segment file): keeps every
    /// record that still checks, sets the damaged originals aside, and reports exactly which LSNs (or keys)
    /// were lost. Offline: needs --data-dir and a stopped server.
    Repair,
    /// Print a shell completion script, e.g. `source <(kvctl completion bash)`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `kvctl cluster ...`.
#[derive(clap::Subcommand, Debug)]
enum ClusterOp {
    /// This node's view of the cluster (GET /v1/cluster).
    Status,
    /// Add node ID at URL as a learner (it receives the log, does not vote).
    AddLearner {
        /// The node's id.
        id: u64,
        /// The node's base URL, as the other members reach it.
        url: String,
    },
    /// Make learners voters.
    Promote {
        /// The learners' ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove a node from the cluster (a voter first stops voting).
    Remove {
        /// The node's id.
        id: u64,
    },
    /// Hand leadership to a voter.
    TransferLeader {
        /// The voter's id.
        to: u64,
    },
}

/// A token: the flag or environment variable, else the first line of the file (`flag` names the file's
/// flag in errors, which never show the token).
fn token_from(
    token: Option<String>,
    file: Option<&PathBuf>,
    flag: &str,
) -> Result<Option<String>, CliError> {
    if token.is_some() {
        return Ok(token);
    }
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::usage(format!("cannot read {flag} {}: {e}", file.display())))?;
    match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => Ok(Some(t.to_string())),
        None => Err(CliError::usage(format!(
            "{flag} {} is empty",
            file.display()
        ))),
    }
}

impl Cli {
    /// The client token: --token, else KV_TOKEN, else the first line of --token-file (or of
    /// KV_TOKEN_FILE).
    fn client_token(&self) -> Result<Option<kv_infra_http::replication::Secret>, CliError> {
        let file = self
            .token_file
            .clone()
            .or_else(|| env_var("KV_TOKEN_FILE").map(PathBuf::from));
        let token = self.token.clone().or_else(|| env_var("KV_TOKEN"));
        Ok(token_from(token, file.as_ref(), "--token-file")?
            .map(kv_infra_http::replication::Secret::new))
    }
}

impl Command {
    /// Whether the command stores data, and so may create a missing data directory.
    fn creates_data_dir(&self) -> bool {
        matches!(
            self,
            Command::Put { .. } | Command::Batch { .. } | Command::Import { .. }
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut std::io::stdout());
        return ExitCode::from(error::OK);
    }
    if let Some(ca) = &cli.cacert {
        let identity = cli.client_cert.as_deref().zip(cli.client_key.as_deref());
        if let Err(e) = kv_infra_http::tls::set_client_config(ca, identity) {
            return exit(Err(CliError::usage(e.to_string())));
        }
    }
    if let Command::Repair = cli.command {
        return exit(repair::run(
            cli.data_dir.as_deref(),
            cli.output == Output::Json,
        ));
    }
    if let Command::Bench(args) = &cli.command {
        // The load generator runs its own multi-threaded runtime, and only against a server.
        let result = if cli.data_dir.is_some() {
            Err(CliError::usage(
                "bench needs a server (--url), not --data-dir",
            ))
        } else {
            cli.client_token().and_then(|token| {
                bench::run(
                    &cli.url(),
                    &bench::BenchArgs {
                        token,
                        ..args.clone()
                    },
                )
            })
        };
        return exit(result);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: cannot start: {e}");
            return ExitCode::from(error::FAILURE);
        }
    };
    exit(runtime.block_on(run(cli)))
}

/// The exit code of a result; a failure's message goes to stderr.
fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(error::OK),
        Err(e) => {
            if !e.is_quiet() {
                eprintln!("kvctl: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            buf = std::fs::read(p)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", p.display())))?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut buf)?;
        }
    }
    Ok(buf)
}

fn written(output: Output, lsn: u64) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Text => writeln!(out, "OK"),
        Output::Json => writeln!(out, "{}", serde_json::json!({ "lsn": lsn })),
    }?;
    Ok(())
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let mut target = match &cli.data_dir {
        Some(dir) => Target::embedded(dir, cli.command.creates_data_dir())?,
        None => {
            let timeout = match (cli.timeout, &cli.command) {
                (Some(t), _) => duration::bound(t),
                (None, Command::Compact) => None,
                (None, _) => Some(DEFAULT_TIMEOUT),
            };
            Target::remote(
                &cli.url(),
                duration::bound(cli.connect_timeout),
                timeout,
                cli.client_token()?.as_ref(),
            )?
        }
    };
    let output = cli.output;
    let tty = std::io::stdout().is_terminal();
    match cli.command {
        Command::Put { key, value, file } => {
            let value = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => read_input(Some(&f))?,
                (None, None) => read_input(None)?,
            };
            let lsn = target.put(key.as_bytes(), &value).await?;
            written(output, lsn)
        }
        Command::Get { key } => {
            let value = target.get(key.as_bytes()).await?;
            let mut out = std::io::stdout().lock();
            match output {
                Output::Text if tty => writeln!(out, "{}", escape::for_terminal(&value))?,
                Output::Text => out.write_all(&value)?,
                Output::Json => writeln!(out, "{}", json_line(key.as_bytes(), &value))?,
            }
            out.flush()?;
            Ok(())
        }
        Command::Delete { key } => {
            let lsn = target.delete(key.as_bytes()).await?;
            written(output, lsn)
        }
        Command::Range { start, end, limit } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            target
                .scan(
                    start.as_bytes(),
                    end.as_bytes(),
                    limit.unwrap_or(usize::MAX),
                    |k, v| {
                        match output {
                            Output::Text => {
                                escape::show(&mut out, k, tty)?;
                                out.write_all(b"\t")?;
                                escape::show(&mut out, v, tty)?;
                                out.write_all(b"\n")?;
                            }
                            Output::Json => writeln!(out, "{}", json_line(k, v))?,
                        }
                        Ok(())
                    },
                )
                .await?;
            out.flush()?;
            Ok(())
        }
        Command::Export { start, end } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            target
                .scan(start.as_bytes(), end.as_bytes(), usize::MAX, |k, v| {
                    writeln!(out, "{}", json_line(k, v))?;
                    Ok(())
                })
                .await?;
            out.flush()?;
            Ok(())
        }
        Command::Batch { file } => {
            let input = read_input(file.as_ref())?;
            let text = String::from_utf8(input)
                .map_err(|_| CliError::usage("batch input must be UTF-8 text"))?;
            let pairs = parse_all(&text)?;
            let lsn = target.batch(&pairs).await?;
            written(output, lsn)
        }
        Command::Import { file, batch_size } => import(&mut target, &file, batch_size.max(1)).await,
        Command::Status | Command::Compact => {
            let status = if matches!(cli.command, Command::Compact) {
                target.compact().await?
            } else {
                target.status().await?
            };
            let text = match output {
                Output::Text => serde_json::to_string_pretty(&status),
                Output::Json => serde_json::to_string(&status),
            }
            .map_err(|e| CliError::failure(e.to_string()))?;
            writeln!(std::io::stdout().lock(), "{text}")?;
            Ok(())
        }
        Command::Cluster {
            op,
            replication_token,
            replication_token_file,
        } => {
            let token = token_from(
                replication_token.clone(),
                replication_token_file.as_ref(),
                "--replication-token-file",
            )?;
            let (method, path, body) = match op {
                ClusterOp::Status => (hyper::Method::GET, "/v1/cluster", serde_json::json!({})),
                ClusterOp::AddLearner { id, url } => (
                    hyper::Method::POST,
                    "/v1/cluster/add-learner",
                    serde_json::json!({ "id": id, "url": url }),
                ),
                ClusterOp::Promote { ids } => (
                    hyper::Method::POST,
                    "/v1/cluster/promote",
                    serde_json::json!({ "ids": ids }),
                ),
                ClusterOp::Remove { id } => (
                    hyper::Method::POST,
                    "/v1/cluster/remove",
                    serde_json::json!({ "id": id }),
                ),
                ClusterOp::TransferLeader { to } => (
                    hyper::Method::POST,
                    "/v1/cluster/transfer-leader",
                    serde_json::json!({ "to": to }),
                ),
            };
            let answer = target.cluster(method, path, token.as_deref(), body).await?;
            let text = match output {
                Output::Text => serde_json::to_string_pretty(&answer),
                Output::Json => serde_json::to_string(&answer),
            }
            .map_err(|e| CliError::failure(e.to_string()))?;
            writeln!(std::io::stdout().lock(), "{text}")?;
            Ok(())
        }
        Command::Shell => shell::run(&mut target).await,
        Command::Bench(_) | Command::Completion { .. } | Command::Repair => Err(CliError::usage(
            "this command runs before the runtime starts",
        )),
    }
}

/// Streams `file` into the target in batches. Every line is parsed before its batch is sent, so a bad line
/// stops the import with the line number; batches already sent stay written (the summary says how many).
async fn import(target: &mut Target, file: &PathBuf, batch_size: usize) -> Result<(), CliError> {
    use std::io::BufRead;
    let (reader, total): (Box<dyn BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
        let len = f.metadata().map_or(0, |m| m.len());
        (Box::new(std::io::BufReader::new(f)), len)
    };
    // A progress bar only for a person watching: never when stderr is piped.
    let bar = if std::io::stderr().is_terminal() && total > 0 {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut batch: Vec<Pair> = Vec::with_capacity(batch_size);
    let mut imported = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if let Some(bar) = &bar {
            bar.inc(line.len() as u64 + 1);
        }
        if let Some(pair) = parse_line(&line, i + 1).map_err(|e| CliError {
            message: format!("{} ({imported} pairs imported before it)", e.message),
            ..e
        })? {
            batch.push(pair);
        }
        if batch.len() >= batch_size {
            imported += send_chunk(target, &mut batch).await?;
            if let Some(bar) = &bar {
                bar.set_message(format!("{imported} pairs"));
            }
        }
    }
    imported += send_chunk(target, &mut batch).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {imported} pairs in {secs:.2} s ({:.0} pairs/s)",
        imported as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Sends one chunk: as one batch when it is text (or embedded), else pair by pair (the REST batch API is JSON).
async fn send_chunk(target: &mut Target, batch: &mut Vec<Pair>) -> Result<u64, CliError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len() as u64;
    let binary = matches!(target, Target::Remote(_))
        && batch
            .iter()
            .any(|(k, v)| std::str::from_utf8(k).is_err() || std::str::from_utf8(v).is_err());
    if binary {
        for (k, v) in batch.iter() {
            target.put(k, v).await?;
        }
    } else {
        target.batch(batch).await?;
    }
    batch.clear();
    Ok(n)
}
