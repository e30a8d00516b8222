//! HTTP errors: the mapping from use-case errors to statuses, and the `{"error": "..."}` body.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use kv_app::AppError;
use kv_domain::EngineError;

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

    #[test]
    fn statuses_follow_the_design_contract() {
        let s = |e: AppError| ApiError::from(e).status;
        assert_eq!(s(AppError::EmptyKey), StatusCode::BAD_REQUEST);
        assert_eq!(s(AppError::NotFound("k".into())), StatusCode::NOT_FOUND);
        assert_eq!(
            s(AppError::ValueTooLarge {
                key: "k".into(),
                len: 2,
                max: 1
            }),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            s(AppError::Engine(EngineError::Poisoned {
                reason: "x".into()
            })),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            s(AppError::Engine(EngineError::DiskFull {
                context: "x".into()
            })),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            s(AppError::Engine(EngineError::Busy("compacting".into()))),
            StatusCode::CONFLICT
        );
    }
}
