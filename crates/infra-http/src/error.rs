//! HTTP errors: the mapping from use-case errors to statuses, and the `{"error": "..."}` body.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use kv_app::AppError;
use kv_domain::{ConsensusError, EngineError};

/// The response body type of every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An error answer: a status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What was wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// The JSON response.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        // RFC 9110 §15.5.2: a 401 names the scheme to use (RFC 6750: bearer tokens).
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        let status = match &e {
            AppError::EmptyKey | AppError::InvertedRange { .. } => StatusCode::BAD_REQUEST,
            AppError::KeyTooLarge { .. }
            | AppError::ValueTooLarge { .. }
            | AppError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Engine(engine) => return ApiError::from_engine(engine),
            // Leadership moved between routing and proposing (nothing was proposed), or no quorum:
            // nothing was written, retry. An open fate is 504, as for a forwarded write.
            AppError::Consensus(
                ConsensusError::NotLeader { .. } | ConsensusError::Unavailable(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Consensus(ConsensusError::Unknown(_)) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError::new(status, e.to_string())
    }
}

impl ApiError {
    /// The status of an engine error: 503 while writes are refused (fail-stop) or the store is locked, 507 on
    /// a full disk, 400 for input the engine rejects, 500 for corruption and other I/O errors.
    pub fn from_engine(e: &EngineError) -> Self {
        let status = match e {
            EngineError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            EngineError::Poisoned { .. } | EngineError::Locked { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EngineError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            EngineError::Busy(_) => StatusCode::CONFLICT,
            EngineError::Corrupted { .. } | EngineError::Io { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One value of every engine error, each with the status the design contract gives it.
    fn engine_errors() -> Vec<(EngineError, StatusCode)> {
        let x = || "x".to_string();
        vec![
            (EngineError::InvalidInput(x()), StatusCode::BAD_REQUEST),
            (
                EngineError::Corrupted {
                    file: x(),
                    offset: 1,
                    reason: x(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                EngineError::DiskFull { context: x() },
                StatusCode::INSUFFICIENT_STORAGE,
            ),
            (
                EngineError::Io {
                    context: x(),
                    source: std::io::Error::other("x"),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                EngineError::Poisoned { reason: x() },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (EngineError::Busy(x()), StatusCode::CONFLICT),
            (
                EngineError::Locked { path: x() },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ]
    }

    /// Names the variant, exhaustively: a new engine error does not compile until it is listed above.
    fn engine_variant(e: &EngineError) -> &'static str {
        match e {
            EngineError::InvalidInput(_) => "InvalidInput",
            EngineError::Corrupted { .. } => "Corrupted",
            EngineError::DiskFull { .. } => "DiskFull",
            EngineError::Io { .. } => "Io",
            EngineError::Poisoned { .. } => "Poisoned",
            EngineError::Busy(_) => "Busy",
            EngineError::Locked { .. } => "Locked",
        }
    }

    /// Names the variant, exhaustively: a new use-case error does not compile until it is listed below.
    fn app_variant(e: &AppError) -> &'static str {
        match e {
            AppError::EmptyKey => "EmptyKey",
            AppError::KeyTooLarge { .. } => "KeyTooLarge",
            AppError::ValueTooLarge { .. } => "ValueTooLarge",
            AppError::BatchTooLarge { .. } => "BatchTooLarge",
            AppError::InvertedRange { .. } => "InvertedRange",
            AppError::NotFound(_) => "NotFound",
            AppError::Engine(_) => "Engine",
            AppError::Consensus(_) => "Consensus",
        }
    }

    #[test]
    fn statuses_follow_the_design_contract() {
        let app = vec![
            (AppError::EmptyKey, StatusCode::BAD_REQUEST),
            (
                AppError::KeyTooLarge { len: 2, max: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                AppError::ValueTooLarge {
                    key: "k".into(),
                    len: 2,
                    max: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                AppError::BatchTooLarge { len: 2, max: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                AppError::InvertedRange {
                    start: "b".into(),
                    end: "a".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
            (AppError::NotFound("k".into()), StatusCode::NOT_FOUND),
            (
                AppError::Consensus(ConsensusError::NotLeader {
                    leader_id: 2,
                    leader_url: "http://b".into(),
                }),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                AppError::Consensus(ConsensusError::Unavailable("no quorum".into())),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                AppError::Consensus(ConsensusError::Unknown("leader changed".into())),
                StatusCode::GATEWAY_TIMEOUT,
            ),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (e, status) in app {
            covered.insert(app_variant(&e));
            assert_eq!(ApiError::from(e).status, status);
        }
        for (e, status) in engine_errors() {
            covered.insert(engine_variant(&e));
            assert_eq!(ApiError::from_engine(&e).status, status, "{e}");
            let wrapped = AppError::Engine(e);
            covered.insert(app_variant(&wrapped));
            assert_eq!(ApiError::from(wrapped).status, status, "through AppError");
        }
        // Every variant of both enums was checked (the matches above name them all).
        assert_eq!(covered.len(), 8 + 7, "{covered:?}");
    }
}
