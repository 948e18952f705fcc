//! The ML dashboard: `GET /dashboard`, one page whose HTML, script and style sheet are embedded
//! in the binary (`server/assets/dashboard/`, no build step), its sign-in form, and the two data
//! endpoints it polls besides `/api/ml-metrics`: the downsampled time series and the tail of the
//! optimizer's action log.
//!
//! Sign-in: without a session the page answers 401 with a plain HTML form (no script) that posts
//! the admin token to `/dashboard/login`; the server checks it in constant time and answers with
//! a session cookie (see [`crate::auth`]). Every dashboard response carries a strict
//! Content-Security-Policy: scripts, styles and requests only from this origin, no inline
//! script or style, no framing.

use crate::app::AppState;
use crate::auth::{Auth, DASHBOARD_COOKIE};
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::routes::Routes;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

const PAGE_HTML: &str = include_str!("../../assets/dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../../assets/dashboard/login.html");
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
const ICON: &str = include_str!("../../assets/dashboard/favicon.svg");

/// Where the login page shows why it is shown.
const MESSAGE_SLOT: &str = "<!--message-->";

/// The policy every dashboard response carries: nothing from elsewhere, nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/dashboard", page)
        .post("/dashboard/login", login)
        .post("/dashboard/logout", logout)
        .get("/dashboard/assets/{file}", asset)
}

/// Headers every dashboard response carries.
pub(crate) fn hardened(
    status: StatusCode,
    content_type: &'static str,
    body: impl IntoResponse,
) -> Response {
    let headers = [
        (CONTENT_TYPE, content_type),
        (HeaderName::from_static("content-security-policy"), CSP),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
        (HeaderName::from_static("x-frame-options"), "DENY"),
        (HeaderName::from_static("referrer-policy"), "no-referrer"),
    ];
    (status, headers, body).into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = hardened(status, "text/html; charset=utf-8", body);
    // The page is the same for everyone, but whether it is shown depends on the session.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sign-in form with a fixed message (never request input, so nothing to escape).
fn login_page(status: StatusCode, message: &'static str) -> Response {
    html(status, LOGIN_HTML.replacen(MESSAGE_SLOT, message, 1))
}

fn admin_disabled(state: &AppState) -> bool {
    state.config.auth.admin_token.is_none()
}

const DISABLED: &str = "<p class=\"error\">Admin access is disabled on this server: start it \
    with an admin token (ADMIN_TOKEN or auth.admin_token).</p>";

/// The dashboard, or the sign-in form with 401 when the request has no session.
async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let auth = &state.auth;
    let session = async {
        if !Auth::has_dashboard_cookie(&headers) {
            return Ok(false);
        }
        auth.has_dashboard_session(&state.db.conn().await?, &headers)
            .await
    };
    let signed_in = auth.has_admin_token(&headers)
        || match session.await {
            Ok(open) => open,
            Err(err) => return err.into_response(),
        };
    if signed_in {
        html(StatusCode::OK, PAGE_HTML.to_owned())
    } else if admin_disabled(&state) {
        login_page(StatusCode::UNAUTHORIZED, DISABLED)
    } else {
        login_page(StatusCode::UNAUTHORIZED, "")
    }
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginForm {
    /// The admin token.
    pub token: String,
}

/// Exchanges the admin token for a session cookie, then sends the browser to the dashboard.
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // The same per-address budget as account sign-ups: guessing tokens costs a client as much
    // as guessing passwords.
    if let Err(err) = state.auth.check_register_rate(client) {
        return err.into_response();
    }
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            "<p class=\"error\">Enter the admin token.</p>",
        );
    };
    let opened = async {
        let conn = state.db.conn().await?;
        state.auth.open_dashboard_session(&conn, &form.token).await
    };
    match opened.await {
        Ok(session) => {
            // No Max-Age: the cookie ends with the browser session. No `Secure`: `make run`
            // serves plain HTTP on localhost; put TLS in front for anything else.
            let cookie = format!("{DASHBOARD_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
            redirect_to_dashboard(&cookie)
        }
        Err(err @ ApiError::Unavailable { .. }) => err.into_response(),
        Err(_) if admin_disabled(&state) => login_page(StatusCode::UNAUTHORIZED, DISABLED),
        Err(_) => login_page(
            StatusCode::UNAUTHORIZED,
            "<p class=\"error\">That is not the admin token.</p>",
        ),
    }
}

fn redirect_to_dashboard(cookie: &str) -> Response {
    let mut response = hardened(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("/dashboard"));
    if let Ok(value) = HeaderValue::from_str(cookie) {
        headers.insert(SET_COOKIE, value);
    }
    response
}

/// Ends the session and forgets the cookie.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let closed = async {
        let conn = state.db.conn().await?;
        state.auth.close_dashboard_session(&conn, &headers).await
    };
    if let Err(err) = closed.await {
        return err.into_response();
    }
    redirect_to_dashboard(&format!(
        "{DASHBOARD_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
}

/// The page's script, style sheet and icon. They hold no data, so they need no session; the
/// page and the endpoints it reads do.
async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "dashboard.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "dashboard.css" => ("text/css; charset=utf-8", STYLE),
        "favicon.svg" => ("image/svg+xml", ICON),
        _ => {
            return ApiError::NotFound("asset").into_response();
        }
    };
    let mut response = hardened(StatusCode::OK, content_type, body);
    // Revalidate every time: the files change with the binary, and they are small.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for name in ["dashboard.js", "dashboard.css", "favicon.svg"] {
            let reference = format!("/dashboard/assets/{name}");
            assert!(
                PAGE_HTML.contains(&reference),
                "index.html should use {reference}"
            );
        }
        assert!(LOGIN_HTML.contains(MESSAGE_SLOT));
        assert!(
            !PAGE_HTML.contains("<script>") && !LOGIN_HTML.contains("<script"),
            "no inline script: the policy would block it"
        );
    }
}
