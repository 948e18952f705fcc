//! The one error type at the HTTP edge.
//!
//! Every error leaves as `{"error": {"code", "message"}}` with the right status. Client errors
//! say what was wrong; server errors are logged once here with their cause and reach the client
//! only as a generic message, so internals never leak.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::borrow::Cow;

/// An error a handler returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What was wrong.
        message: Cow<'static, str>,
    },
    /// 401: no valid credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404: nothing of that kind the caller may see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicted.
        message: Cow<'static, str>,
    },
    /// 413: body too large.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 415: not JSON.
    #[error("expected a JSON body with content-type application/json")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid.
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code.
        code: &'static str,
        /// What was invalid.
        message: Cow<'static, str>,
    },
    /// 429: slow down.
    #[error("too many attempts; retry in {retry_after_secs} s")]
    TooManyRequests {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// 503: a dependency is saturated or down; retry shortly.
    #[error("service temporarily unavailable")]
    Unavailable {
        /// Seconds until a retry may succeed.
        retry_after_secs: u64,
    },
    /// 500: a bug or an unexpected failure; details are logged, not returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The JSON shape of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    pub error: ErrorDetail<'a>,
}

/// The inside of [`ErrorBody`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable machine-readable code, e.g. `out_of_stock`.
    pub code: &'a str,
    /// Human-readable explanation.
    pub message: &'a str,
}

impl ApiError {
    /// 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// 409 with a code and message.
    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// 422 with a code and message.
    pub fn unprocessable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status this error maps to.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// For client errors (4xx), the status and JSON body a client saw, so an idempotent
    /// retry can be answered with exactly the same thing. `None` for server errors, which are
    /// never replayed.
    pub fn client_response(&self) -> Option<(StatusCode, serde_json::Value)> {
        let status = self.status_code();
        status.is_client_error().then(|| {
            let message = self.to_string();
            let body = serde_json::json!({ "error": { "code": self.code(), "message": message } });
            (status, body)
        })
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unprocessable { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// Builds the JSON error response for any status; used by the fallback handlers too.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = match &self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "internal error");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = error_response(status, self.code(), &message);
        if let Self::TooManyRequests { retry_after_secs } | Self::Unavailable { retry_after_secs } =
            self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        if database_away(&err) {
            // Not the client's fault and not a bug: the database is restarting, unreachable,
            // shutting down, or cancelled the statement. Logged, and the client comes back.
            tracing::warn!(error = %err, "database unavailable");
            return Self::Unavailable {
                retry_after_secs: 1,
            };
        }
        Self::Internal(err.into())
    }
}

/// SQLSTATE codes (besides class 08, connection exceptions) that mean "not now" rather than
/// "wrong": the server is shutting down or starting (57P01-57P03), the statement was cancelled
/// (`statement_timeout`, 57014), too many connections (53300), a serialization failure or a
/// deadlock victim (40001, 40P01), all of them worth a retry.
const RETRY_LATER: [&str; 7] = [
    "57P01", "57P02", "57P03", "57014", "53300", "40001", "40P01",
];

/// Whether `err` means the database is away or refusing work for now: a dropped, refused or
/// timed-out connection, or one of the [`RETRY_LATER`] states.
pub fn database_away(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || RETRY_LATER.contains(&code);
    }
    // No answer from the server at all: an I/O error (refused, reset, broken pipe) or a
    // timeout, as opposed to a type or encoding error on our side.
    std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>())
        || err.to_string().contains("timeout")
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match err {
            // Every connection is busy for longer than the configured wait: tell the client to
            // come back rather than queueing it without bound.
            PoolError::Timeout(_) => Self::Unavailable {
                retry_after_secs: 1,
            },
            // A new connection could not be opened (refused, reset, the server starting).
            PoolError::Backend(err) => err.into(),
            // The pool is closed: the server is shutting down.
            PoolError::Closed => Self::Unavailable {
                retry_after_secs: 1,
            },
            other => Self::Internal(anyhow::Error::new(other).context("database pool")),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::unprocessable("invalid_body", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request("malformed_json", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::bad_request("bad_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

/// Maps a unique or check constraint violation to a client error; anything else stays a 500.
pub fn on_constraint(
    err: tokio_postgres::Error,
    map: impl FnOnce(&str) -> Option<ApiError>,
) -> ApiError {
    if let Some(mapped) = err
        .as_db_error()
        .and_then(|db| db.constraint())
        .and_then(map)
    {
        return mapped;
    }
    err.into()
}
