//! Accounts: password hashing, bearer tokens, login rate limits, dashboard sessions, and the
//! auth extractors.
//!
//! Auth is an extractor, not a middleware: a handler that takes [`AuthUser`], [`Admin`] or
//! [`AdminView`] cannot run without the right credentials, and routes that need none pay nothing.
//!
//! Dashboard sessions exist because a browser navigating to `/dashboard` cannot send an
//! `Authorization` header: the operator enters the admin token once in a form, and the browser
//! gets a random session id in an `HttpOnly`, `SameSite=Strict` cookie without `Max-Age`, so it
//! lives as long as the browser session (and at most [`DASHBOARD_SESSION_TTL`]). Only read-only
//! GET endpoints accept that cookie ([`AdminView`]); everything that changes state still needs
//! the bearer token, so a cookie riding along on an unintended request can change nothing.

use crate::app::AppState;
use crate::db::Conn;
use crate::error::ApiError;
use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Shared auth state. Immutable after start-up apart from the rate limiters, which are
/// lock-free (governor keeps a GCRA cell per key in a sharded map).
pub struct Auth {
    admin_token: Option<String>,
    /// Bounds concurrent argon2 work (19 MiB and tens of milliseconds each) so a burst of logins
    /// cannot exhaust memory or the blocking thread pool.
    hashing: Semaphore,
    /// A real hash to verify against when the e-mail is unknown, so response time does not
    /// reveal whether an account exists.
    dummy_hash: String,
    per_email: DefaultKeyedRateLimiter<String>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Hourly failed-login limits, shared by every instance through the database.
    pub failed_logins: FailedLogins,
    /// Lifetime of new tokens.
    pub token_ttl_hours: u32,
}

/// Failed logins per account and per client address over an hour, counted in the
/// `login_failures` table so that every instance behind a load balancer enforces one limit.
///
/// The per-minute limits of [`Auth::check_login_rate`] stop a burst cheaply in memory; these stop
/// the slow, patient guessing that stays under them: at most `per_account` wrong passwords for
/// one e-mail address per hour (from anywhere), at most `per_client` from one address (across
/// any number of accounts, as credential stuffing does). A client's IPv6 address counts by its
/// /64 network, which one subscriber usually holds whole. A successful login clears the
/// account's count, not the client's. The price of a per-account limit is that someone who
/// knows an e-mail address can lock its owner out for an hour; the limit is set high enough
/// that this takes a hundred tries, and `/metrics` counts the refusals.
pub struct FailedLogins {
    /// `auth.failed_logins_per_account_per_hour`.
    pub per_account: u32,
    /// `auth.failed_logins_per_client_per_hour`.
    pub per_client: u32,
    /// Wrong passwords (or unknown accounts) this instance has seen.
    pub failures: AtomicU64,
    /// Logins this instance refused because the account was over its hourly limit.
    pub throttled_account: AtomicU64,
    /// Logins this instance refused because the client was over its hourly limit.
    pub throttled_client: AtomicU64,
}

/// The two `login_failures` keys of an attempt: the account's and the client's.
fn failure_keys(email: &str, ip: IpAddr) -> (Vec<u8>, Vec<u8>) {
    let account = Sha256::digest(email.to_lowercase().as_bytes()).to_vec();
    let client = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    };
    (account, client)
}

impl FailedLogins {
    /// Refuses the attempt when the account or the client is over its hourly limit; otherwise
    /// tells whether the account has failures on record (for [`Self::succeeded`]).
    ///
    /// # Errors
    /// 429 with the seconds until the window that holds the limit is over; the database's
    /// errors.
    pub async fn check(&self, conn: &Conn, email: &str, ip: IpAddr) -> Result<bool, ApiError> {
        let (account, client) = failure_keys(email, ip);
        let rows = conn
            .query(
                "SELECT scope, failures, \
                 ceil(extract(epoch FROM window_start + interval '1 hour' - now()))::int8 \
                 FROM login_failures \
                 WHERE ((scope = 'account' AND key = $1) OR (scope = 'client' AND key = $2)) \
                 AND window_start > now() - interval '1 hour'",
                &[&account, &client],
            )
            .await?;
        let mut account_failed = false;
        for row in rows {
            let (scope, failures, left): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
            let (limit, counter) = if scope == "account" {
                account_failed = true;
                (self.per_account, &self.throttled_account)
            } else {
                (self.per_client, &self.throttled_client)
            };
            if u32::try_from(failures).unwrap_or(0) >= limit {
                counter.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::TooManyRequests {
                    retry_after_secs: u64::try_from(left).unwrap_or(1).max(1),
                });
            }
        }
        Ok(account_failed)
    }

    /// Counts a failed attempt against the account and the client; a window over an hour old
    /// starts again at one.
    ///
    /// # Errors
    /// The database's.
    pub async fn failed(&self, conn: &Conn, email: &str, ip: IpAddr) -> Result<(), ApiError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let (account, client) = failure_keys(email, ip);
        conn.execute(
            "INSERT INTO login_failures AS f (scope, key) VALUES ('account', $1), ('client', $2) \
             ON CONFLICT (scope, key) DO UPDATE SET \
             failures = CASE WHEN f.window_start <= now() - interval '1 hour' THEN 1 \
                        ELSE f.failures + 1 END, \
             window_start = CASE WHEN f.window_start <= now() - interval '1 hour' THEN now() \
                            ELSE f.window_start END",
            &[&account, &client],
        )
        .await?;
        Ok(())
    }

    /// Clears the account's count after a successful login.
    ///
    /// # Errors
    /// The database's.
    pub async fn succeeded(&self, conn: &Conn, email: &str) -> Result<(), ApiError> {
        let (account, _) = failure_keys(email, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        conn.execute(
            "DELETE FROM login_failures WHERE scope = 'account' AND key = $1",
            &[&account],
        )
        .await?;
        Ok(())
    }
}

/// Name of the dashboard session cookie.
pub const DASHBOARD_COOKIE: &str = "shop_dashboard";
/// Longest life of a dashboard session, even if the browser stays open.
pub const DASHBOARD_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Open dashboard sessions kept at most (in the `dashboard_sessions` table, shared by every
/// instance); the oldest is dropped beyond that, so repeated logins cannot grow the table.
pub const MAX_DASHBOARD_SESSIONS: i64 = 64;

/// argon2id with the OWASP password storage parameters (m = 19 MiB, t = 2, p = 1).
fn argon2() -> Argon2<'static> {
    #[allow(clippy::unwrap_used)] // constant, valid parameters
    let params = Params::new(19 * 1024, 2, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
}

impl Auth {
    /// Builds the auth state from configuration.
    ///
    /// # Errors
    /// Hashing the dummy password failed (should not happen).
    pub fn new(config: &crate::config::AuthConfig) -> anyhow::Result<Self> {
        let dummy_hash = hash_blocking("not a real password").context("hashing dummy password")?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
        Ok(Self {
            admin_token: config.admin_token.clone(),
            hashing: Semaphore::new(workers),
            dummy_hash,
            per_email: RateLimiter::keyed(quota(config.login_attempts_per_minute)),
            per_ip: RateLimiter::keyed(quota(config.login_attempts_per_ip_per_minute)),
            failed_logins: FailedLogins {
                per_account: config.failed_logins_per_account_per_hour,
                per_client: config.failed_logins_per_client_per_hour,
                failures: AtomicU64::new(0),
                throttled_account: AtomicU64::new(0),
                throttled_client: AtomicU64::new(0),
            },
            token_ttl_hours: config.token_ttl_hours,
        })
    }

    /// Counts one login attempt for this e-mail and client address.
    ///
    /// # Errors
    /// 429 with the wait until the next allowed attempt.
    pub fn check_login_rate(&self, email: &str, ip: IpAddr) -> Result<(), ApiError> {
        let now = DefaultClock::default().now();
        let refuse = |not_until: governor::NotUntil<_>| ApiError::TooManyRequests {
            retry_after_secs: not_until.wait_time_from(now).as_secs().max(1),
        };
        // The address first: a client over its limit must not grow the per-e-mail map by
        // trying a new address each time.
        self.per_ip.check_key(&ip).map_err(refuse)?;
        self.per_email
            .check_key(&email.to_lowercase())
            .map_err(refuse)?;
        Ok(())
    }

    /// Counts one registration from this client address.
    ///
    /// # Errors
    /// 429 with the wait until the next allowed attempt.
    pub fn check_register_rate(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.per_ip
            .check_key(&ip)
            .map_err(|not_until| ApiError::TooManyRequests {
                retry_after_secs: not_until
                    .wait_time_from(DefaultClock::default().now())
                    .as_secs()
                    .max(1),
            })
    }

    /// Drops rate-limit state for keys not seen lately, so the maps stay bounded.
    pub fn forget_idle_keys(&self) {
        self.per_email.retain_recent();
        self.per_ip.retain_recent();
    }

    /// Runs argon2 work on the blocking pool, at most `hashing` permits at a time.
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable {
                retry_after_secs: 1,
            })?;
        Ok(tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task")?)
    }

    /// Hashes a new password off the async runtime.
    ///
    /// # Errors
    /// 503 if the hashing pool is closed; 500 if hashing failed.
    pub async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        self.hashing(move || hash_blocking(&password))
            .await?
            .map_err(ApiError::Internal)
    }

    /// Checks a password against a stored hash (or the dummy hash when there is no account).
    ///
    /// # Errors
    /// 503 if the hashing pool is closed; 500 if the task failed.
    pub async fn verify_password(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self
            .hashing(move || {
                PasswordHash::new(&hash).is_ok_and(|parsed| {
                    argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
            })
            .await?;
        Ok(known && ok)
    }

    fn is_admin_token(&self, presented: &str) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token else {
            return Err(ApiError::Unauthorized(
                "admin access is disabled on this server (no ADMIN_TOKEN configured)",
            ));
        };
        if bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("invalid admin token"))
        }
    }

    /// Whether the request carries the admin token (used to allow raising priority).
    pub fn has_admin_token(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_ok_and(|token| self.is_admin_token(token).is_ok())
    }

    /// Exchanges the admin token for a new dashboard session id (the cookie value), stored in
    /// the database so that every instance accepts it.
    ///
    /// # Errors
    /// 401 when the token is wrong or admin access is disabled; 503 when the database is away.
    pub async fn open_dashboard_session(
        &self,
        conn: &Conn,
        presented: &str,
    ) -> Result<String, ApiError> {
        self.is_admin_token(presented.trim())?;
        let (session, hash) = new_token();
        conn.execute(
            "INSERT INTO dashboard_sessions (hash, expires_at) \
             VALUES ($1, now() + make_interval(secs => $2))",
            &[&hash, &DASHBOARD_SESSION_TTL.as_secs_f64()],
        )
        .await?;
        conn.execute(
            "DELETE FROM dashboard_sessions WHERE expires_at <= now() OR hash IN \
             (SELECT hash FROM dashboard_sessions ORDER BY expires_at DESC OFFSET $1)",
            &[&MAX_DASHBOARD_SESSIONS],
        )
        .await?;
        Ok(session)
    }

    /// Ends the dashboard session named by the request's cookie, if any.
    ///
    /// # Errors
    /// The database is away.
    pub async fn close_dashboard_session(
        &self,
        conn: &Conn,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if let Some(session) = cookie(headers, DASHBOARD_COOKIE) {
            conn.execute(
                "DELETE FROM dashboard_sessions WHERE hash = $1",
                &[&token_hash(session)],
            )
            .await?;
        }
        Ok(())
    }

    /// Whether the request carries the cookie of an open dashboard session (opened on any
    /// instance).
    ///
    /// # Errors
    /// The database is away.
    pub async fn has_dashboard_session(
        &self,
        conn: &Conn,
        headers: &HeaderMap,
    ) -> Result<bool, ApiError> {
        // Sessions can only exist while admin access is enabled, but say so explicitly.
        if self.admin_token.is_none() {
            return Ok(false);
        }
        let Some(session) = cookie(headers, DASHBOARD_COOKIE) else {
            return Ok(false);
        };
        let row = conn
            .query_opt(
                "SELECT 1 FROM dashboard_sessions WHERE hash = $1 AND expires_at > now()",
                &[&token_hash(session)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Whether the request carries a dashboard cookie at all (no database needed to say no).
    pub fn has_dashboard_cookie(headers: &HeaderMap) -> bool {
        cookie(headers, DASHBOARD_COOKIE).is_some()
    }
}

/// The value of the cookie `name`, from any `Cookie` header of the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, value)| *key == name && !value.is_empty() && value.len() <= 512)
        .map(|(_, value)| value)
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| anyhow::anyhow!("argon2 salt: {err}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("argon2: {err}"))
}

/// A fresh random bearer token (256 bits) and the hash stored for it.
pub fn new_token() -> (String, Vec<u8>) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "shop_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = token_hash(&token);
    (token, hash)
}

/// What the sessions table stores for a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(AUTHORIZATION).ok_or(ApiError::Unauthorized(
        "missing bearer token (Authorization: Bearer <token>)",
    ))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>",
        ))?
        .trim();
    if token.is_empty() || token.len() > 512 {
        return Err(ApiError::Unauthorized("malformed bearer token"));
    }
    Ok(token)
}

/// A signed-in user, resolved from the bearer token.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    /// The user's id.
    pub id: i64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = token_hash(bearer(&parts.headers)?);
        let conn = state.db.conn().await?;
        let row = conn
            .query_opt(
                "SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at > now()",
                &[&hash],
            )
            .await?;
        match row {
            Some(row) => Ok(Self { id: row.get(0) }),
            None => Err(ApiError::Unauthorized("invalid or expired token")),
        }
    }
}

/// Proof that the request carries the admin token. Admin endpoints are closed when no token is
/// configured.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.is_admin_token(bearer(&parts.headers)?)?;
        Ok(Self)
    }
}

/// Proof that the request may read admin data: the admin token as a bearer, or, on GET and
/// HEAD only, the cookie of an open dashboard session. For read-only endpoints the dashboard
/// polls; anything that changes state takes [`Admin`].
#[derive(Debug, Clone, Copy)]
pub struct AdminView;

impl FromRequestParts<AppState> for AdminView {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let reads =
            parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
        if parts.headers.contains_key(AUTHORIZATION) || !reads {
            state.auth.is_admin_token(bearer(&parts.headers)?)?;
        } else if !Auth::has_dashboard_cookie(&parts.headers)
            || !state
                .auth
                .has_dashboard_session(&state.db.conn().await?, &parts.headers)
                .await?
        {
            return Err(ApiError::Unauthorized(
                "admin token required (Authorization: Bearer <token>, or sign in at /dashboard)",
            ));
        }
        Ok(Self)
    }
}

/// The shared handle handlers see.
pub type SharedAuth = Arc<Auth>;
