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
use crate::auth::{AdminView, DASHBOARD_COOKIE};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::routes::Routes;
use crate::validate;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use optimizer::anomaly::Action;
use optimizer::series::{self, MAX_POINTS, Point, SAMPLE_SECS};
use optimizer::{Alert, unix_ms};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use utoipa::{IntoParams, ToSchema};

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

/// Most bytes read from the end of the optimizer log for one answer.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/dashboard", page)
        .post("/dashboard/login", login)
        .post("/dashboard/logout", logout)
        .get("/dashboard/assets/{file}", asset)
        .get("/api/ml-metrics/series", series)
        .get("/api/ml-metrics/log", optimizer_log)
}

/// Headers every dashboard response carries.
fn hardened(status: StatusCode, content_type: &'static str, body: impl IntoResponse) -> Response {
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
    if auth.has_dashboard_session(&headers) || auth.has_admin_token(&headers) {
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // The same per-address budget as account sign-ups: guessing tokens costs a client as much
    // as guessing passwords.
    if let Err(err) = state.auth.check_register_rate(peer.ip()) {
        return err.into_response();
    }
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            "<p class=\"error\">Enter the admin token.</p>",
        );
    };
    match state.auth.open_dashboard_session(&form.token) {
        Ok(session) => {
            // No Max-Age: the cookie ends with the browser session. No `Secure`: `make run`
            // serves plain HTTP on localhost; put TLS in front for anything else.
            let cookie = format!("{DASHBOARD_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict");
            redirect_to_dashboard(&cookie)
        }
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
    state.auth.close_dashboard_session(&headers);
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

/// Which part of the history to chart.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// The last this many minutes (1 up to `metrics.retention_hours` × 60; default 60, or the
    /// whole retention if shorter).
    pub minutes: Option<u32>,
    /// At most this many points (10-720, default 240); neighbouring samples are merged.
    pub points: Option<u32>,
}

/// The dashboard's time series.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// Seconds between stored samples.
    pub sample_secs: i64,
    /// Seconds one point covers.
    pub bucket_secs: i64,
    /// Minutes covered.
    pub window_minutes: u32,
    /// How long samples are kept (`metrics.retention_hours`).
    pub retention_hours: u64,
    /// Oldest first; the last point is the live state (`live: true`).
    #[schema(value_type = Vec<Object>)]
    pub points: Vec<Point>,
    /// Optimizer actions in the window, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Action>,
    /// Anomaly alerts in the window, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<Alert>,
}

/// The optimizer's history, downsampled: request rate and latency (actual and predicted) per
/// route, confidence, cache hit rate, anomalous share, optimizations, allocation per priority.
#[utoipa::path(get, path = "/api/ml-metrics/series", tag = "optimizer", params(SeriesParams),
    security(("admin" = [])),
    responses((status = 200, body = Series), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn series(
    State(state): State<AppState>,
    _admin: AdminView,
    Query(params): Query<SeriesParams>,
) -> Result<Json<Series>, ApiError> {
    let retention_hours = state.config.metrics.retention_hours;
    let longest = u32::try_from(retention_hours.saturating_mul(60))
        .unwrap_or(u32::MAX)
        .max(1);
    let minutes = validate::range(
        "minutes",
        params.minutes.unwrap_or(60.min(longest)),
        1,
        longest,
    )?;
    let max_points = validate::range(
        "points",
        params.points.unwrap_or(240),
        10,
        u32::try_from(MAX_POINTS).unwrap_or(u32::MAX),
    )?;
    let max_points = usize::try_from(max_points).unwrap_or(MAX_POINTS);
    let opt = &state.optimizer;
    let start = series::window_start_ms(minutes);
    let width = series::bucket_ms(i64::from(minutes) * 60_000, max_points);
    let live = opt.live_sample();
    let mut points = {
        let mut history = opt
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = history.len() >= opt.settings.history_len.max(1);
        let samples = history.make_contiguous();
        let mut first = samples.partition_point(|s| s.ts_ms < start);
        // Counters start from the sample before the window. When the window reaches the start
        // of a history that retention has already trimmed, the oldest sample only serves as
        // that starting point.
        if first == 0 && full && samples.len() > 1 {
            first = 1;
        }
        let before = first.checked_sub(1).and_then(|i| samples.get(i));
        // One slot for the live point.
        let mut points = series::downsample(&samples[first..], before, width, max_points - 1);
        points.extend(series::live_point(&live, samples.last()));
        points
    };
    points.retain(|p| p.ts_ms >= start);
    let in_window = |ts: i64| ts >= start && ts <= unix_ms();
    let actions = copy_where(&opt.actions, |a: &Action| in_window(a.ts_ms));
    let alerts = copy_where(&opt.alerts, |a: &Alert| in_window(a.ts_ms));
    Ok(Json(Series {
        sample_secs: SAMPLE_SECS,
        bucket_secs: width / 1000,
        window_minutes: minutes,
        retention_hours,
        points,
        actions,
        alerts,
    }))
}

fn copy_where<T: Clone>(
    log: &std::sync::Mutex<std::collections::VecDeque<T>>,
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|item| keep(item))
        .cloned()
        .collect()
}

/// How much of the log to show.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// The last this many lines (1-2000, default 200), from at most the last 64 KiB.
    pub lines: Option<u32>,
}

/// The tail of the optimizer's action log (`telemetry.optimizer_log`, by default
/// `logs/ml-optimizer.log`): one JSON object per line, newest last. Empty until the optimizer
/// has acted. The file's path is in the `x-log-file` header.
#[utoipa::path(get, path = "/api/ml-metrics/log", tag = "optimizer", params(LogParams),
    security(("admin" = [])),
    responses((status = 200, description = "The last lines, text/plain"), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn optimizer_log(
    State(state): State<AppState>,
    _admin: AdminView,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiError> {
    let lines = validate::range("lines", params.lines.unwrap_or(200), 1, 2000)?;
    let path = state.config.telemetry.optimizer_log.clone();
    let shown = path.display().to_string();
    let text = tokio::task::spawn_blocking(move || tail(&path, lines))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(ApiError::Internal)?;
    let mut response = hardened(StatusCode::OK, "text/plain; charset=utf-8", text);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&shown) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-log-file"), value);
    }
    Ok(response)
}

/// The last `lines` complete lines of the file, reading at most [`LOG_TAIL_BYTES`]; empty when
/// the file does not exist yet.
fn tail(path: &PathBuf, lines: u32) -> anyhow::Result<String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(err.into()),
    };
    let len = file.metadata()?.len();
    let from = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // A read that starts mid-file starts mid-line: drop that partial first line.
    let text = if from > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    let all: Vec<&str> = text.lines().collect();
    let keep = usize::try_from(lines).unwrap_or(usize::MAX).min(all.len());
    let mut out = all[all.len() - keep..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_tail_keeps_the_last_whole_lines() {
        let dir = std::env::temp_dir().join(format!("dash-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ml-optimizer.log");
        let mut file = std::fs::File::create(&path).expect("file");
        for i in 0..10_000 {
            writeln!(file, "{{\"n\":{i}}}").expect("write");
        }
        drop(file);
        let text = tail(&path, 3).expect("tail");
        assert_eq!(text, "{\"n\":9997}\n{\"n\":9998}\n{\"n\":9999}\n");
        let long = tail(&path, 2000).expect("tail");
        assert!(long.len() <= usize::try_from(LOG_TAIL_BYTES).unwrap_or(usize::MAX));
        assert!(
            long.lines()
                .all(|l| l.starts_with("{\"n\":") && l.ends_with('}')),
            "no partial line"
        );
        assert_eq!(
            tail(&dir.join("missing.log"), 10).expect("tail"),
            "",
            "no log yet, no lines"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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
