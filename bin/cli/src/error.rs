//! Exit codes and the one mapping from every failure to them.

use kv_app::AppError;
use kv_domain::EngineError;
use kv_infra_http::client::ClientError;

/// Success.
pub const OK: u8 = 0;
/// The key was not found.
pub const NOT_FOUND: u8 = 1;
/// Bad usage or bad input (nothing was written).
pub const USAGE: u8 = 2;
/// The server, the network or the disk failed.
pub const FAILURE: u8 = 3;

/// A failure with its exit code and a message for stderr.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl CliError {
    /// Bad usage or input.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: message.into(),
        }
    }
    /// An I/O or server failure.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            code: FAILURE,
            message: message.into(),
        }
    }
    /// Stdout was closed by its reader (`kvctl range ... | head`): stop quietly and exit 0, as Unix tools do.
    pub fn stdout_closed() -> Self {
        Self {
            code: OK,
            message: String::new(),
        }
    }
    /// Whether this ends the program without a message (see [`CliError::stdout_closed`]).
    pub fn is_quiet(&self) -> bool {
        self.message.is_empty()
    }
    /// A key that is not there.
    pub fn not_found(key: &[u8]) -> Self {
        Self {
            code: NOT_FOUND,
            message: format!("key {:?} not found", String::from_utf8_lossy(key)),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Status { status, .. } if status.as_u16() == 404 => NOT_FOUND,
            ClientError::Status { status, .. } if status.is_client_error() => USAGE,
            _ => FAILURE,
        };
        let hint = match &e {
            ClientError::ConnectTimeout { .. } => {
                " (set with --connect-timeout or KV_CONNECT_TIMEOUT; 0 for none)"
            }
            ClientError::RequestTimeout { .. } => " (set with --timeout or KV_TIMEOUT; 0 for none)",
            _ => "",
        };
        Self {
            code,
            message: format!("{e}{hint}"),
        }
    }
}

impl From<AppError> for CliError {
    fn from(e: AppError) -> Self {
        let code = match &e {
            AppError::NotFound(_) => NOT_FOUND,
            AppError::Engine(EngineError::InvalidInput(_)) => USAGE,
            AppError::Engine(_) => FAILURE,
            _ => USAGE,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        let message = match &e {
            EngineError::Locked { path } => {
                format!("data directory {path} is locked by another process (is a kv-server running on it? use --url instead)")
            }
            other => other.to_string(),
        };
        Self {
            code: FAILURE,
            message,
        }
    }
}

/// I/O errors reach here from stdin and stdout (the engine's disk errors are [`EngineError`]s); a broken
/// pipe can only come from stdout, so it ends the program quietly.
impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Self::stdout_closed();
        }
        Self::failure(e.to_string())
    }
}
