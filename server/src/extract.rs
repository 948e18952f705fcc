//! Request extractors whose rejections are our JSON errors.
//!
//! axum's own `Json`, `Query` and `Path` answer bad input with plain text; these wrappers keep
//! axum's parsing and turn every rejection into an [`ApiError`], so a client always gets
//! `{"error": {"code", "message"}}`.

use crate::db::ReadFrom;
use crate::error::ApiError;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};

/// A JSON body (or response) whose parse errors are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query-string parameters whose parse errors are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters whose parse errors are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The response header and cookie that tell a client the WAL position of its last write, and
/// the request header (or cookie) by which it asks its reads to see that write.
pub const WRITE_LSN_HEADER: &str = "x-write-lsn";
/// See [`WRITE_LSN_HEADER`].
pub const WRITE_LSN_COOKIE: &str = "write_lsn";

/// A read's freshness from the request: the `x-write-lsn` header or `write_lsn` cookie (the
/// later of the two), and the optimizer's prediction of its cost.
impl<S: Send + Sync> FromRequestParts<S> for ReadFrom {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(WRITE_LSN_HEADER)
            .map(|value| value.to_str().unwrap_or(""));
        let cookie = crate::auth::cookie(&parts.headers, WRITE_LSN_COOKIE);
        let mut lsn = 0;
        for text in [header, cookie].into_iter().flatten() {
            let position = optimizer::balance::parse_lsn(text).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_write_lsn",
                    "x-write-lsn (or the write_lsn cookie) must be a WAL position like 0/16B3748, \
                     as a write's response gave it",
                )
            })?;
            lsn = lsn.max(position);
        }
        Ok(Self {
            lsn,
            predicted_ms: parts
                .extensions
                .get::<optimizer::balance::Predicted>()
                .map(|p| p.0),
        })
    }
}
