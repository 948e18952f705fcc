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

pub use optimizer::balance::{WRITE_LSN_COOKIE, WRITE_LSN_COOKIE_SECS, WRITE_LSN_HEADER};

/// The `x-write-lsn` request header as the OpenAPI description states it (the reads that take
/// it; [`ReadFrom`] reads it).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct WriteLsnHeader {
    /// The WAL position a write's response gave in its own `x-write-lsn` header (or
    /// `write_lsn` cookie): this read then sees that write, wherever it runs. Without it, a read
    /// may come from a read replica a moment behind the primary.
    #[param(
        rename = "x-write-lsn",
        pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$",
        example = "0/16B3748"
    )]
    pub write_lsn: Option<String>,
}

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

/// The client's address: the peer's, or, when the peer is a trusted proxy
/// (`server.trusted_proxies`), the address it forwarded in `X-Forwarded-For`: the rightmost
/// entry that is not itself a trusted proxy (entries further left were written by the client
/// and prove nothing). A malformed header counts as none.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl axum::extract::FromRequestParts<crate::app::AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &crate::app::AppState,
    ) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip())
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no peer address")))?;
        Ok(Self(client_address(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// [`ClientAddr`]'s rule.
pub fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for hop in text.split(',') {
            match hop.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::client_address;
    use axum::http::HeaderMap;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("value"));
        }
        headers
    }

    #[test]
    fn only_a_trusted_proxy_may_name_the_client() {
        let trusted = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        let headers = forwarded(&["203.0.113.9, 10.1.2.3"]);
        // From the load balancer: the client it forwarded, past the other proxy.
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // From anyone else the header is the client's own word: ignored.
        assert_eq!(
            client_address(ip("198.51.100.7"), &headers, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers, &[]),
            ip("127.0.0.1")
        );
        // A client that prepends an address of its choosing still gets its real one.
        let spoofed = forwarded(&["1.2.3.4", "203.0.113.9"]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        // Nothing usable: the peer.
        for bad in [
            forwarded(&["not-an-address"]),
            HeaderMap::new(),
            forwarded(&["10.0.0.1"]),
        ] {
            assert_eq!(
                client_address(ip("127.0.0.1"), &bad, &trusted),
                ip("127.0.0.1")
            );
        }
    }
}
