//! Registration, login, logout and the caller's own account.

use crate::app::AppState;
use crate::auth::{AuthUser, new_token, token_hash};
use crate::error::{ApiError, ErrorBody, on_constraint};
use crate::extract::{ClientAddr, Json};
use crate::routes::Routes;
use crate::validate;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .post("/api/auth/register", register)
        .post("/api/auth/login", login)
        .post("/api/auth/logout", logout)
        .get("/api/me", me)
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// E-mail address (unique, case-insensitive), like `name@example.com`.
    #[schema(schema_with = email_schema)]
    pub email: String,
    /// Password, 8 to 128 characters.
    #[schema(schema_with = validate::password_schema)]
    pub password: String,
    /// Display name.
    #[schema(schema_with = validate::text_100_or_null)]
    pub name: Option<String>,
}

/// Credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// E-mail address.
    #[schema(schema_with = validate::text_254)]
    pub email: String,
    /// Password.
    pub password: String,
}

/// A user as the user sees themself.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    pub id: i64,
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
}

/// A bearer token for `Authorization: Bearer <token>`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The token; shown once, stored only as a hash.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// Whose it is.
    pub user: User,
}

/// The OpenAPI schema of a new account's e-mail address, as [`check_email`] sees it: one `@`,
/// no white space or control character, something before the `@`, and a domain with a dot
/// inside it.
fn email_schema() -> utoipa::openapi::Object {
    let inner = &validate::VISIBLE[2..];
    let (any, no_dot) = (format!("[^@{inner}"), format!("[^@.{inner}"));
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(5))
        .max_length(Some(254))
        .pattern(Some(format!("^{any}+@{no_dot}{any}*\\.{any}*{no_dot}$")))
        .build()
}

fn check_email(email: &str) -> Result<&str, ApiError> {
    let email = validate::text("email", email, 254)?;
    let well_formed = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !email.chars().any(char::is_whitespace)
        && email.matches('@').count() == 1;
    if !well_formed {
        return Err(ApiError::unprocessable(
            "invalid_email",
            "email must look like name@example.com",
        ));
    }
    Ok(email)
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(8..=128).contains(&chars) || password.contains('\0') {
        return Err(ApiError::unprocessable(
            "weak_password",
            "password must be 8 to 128 characters",
        ));
    }
    Ok(())
}

async fn start_session(state: &AppState, user: User) -> Result<Session, ApiError> {
    let (token, hash) = new_token();
    let conn = state.db.conn().await?;
    let ttl = f64::from(state.auth.token_ttl_hours);
    let row = conn
        .query_one(
            "INSERT INTO sessions (token_hash, user_id, expires_at) \
             VALUES ($1, $2, now() + make_interval(hours => $3::float8::int)) RETURNING expires_at",
            &[&hash, &user.id, &ttl],
        )
        .await?;
    Ok(Session {
        token,
        expires_at: row.get(0),
        user,
    })
}

/// Create an account and sign in.
#[utoipa::path(post, path = "/api/auth/register", tag = "accounts", request_body = Register,
    responses((status = 201, body = Session), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<Register>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    state.auth.check_register_rate(client)?;
    let email = check_email(&body.email)?.to_owned();
    check_password(&body.password)?;
    let name = body
        .name
        .as_deref()
        .map(|n| validate::text("name", n, 100))
        .transpose()?
        .map(str::to_owned);
    let hash = state.auth.hash_password(body.password).await?;
    let conn = state.db.conn().await?;
    let row = conn
        .query_one(
            "INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3) RETURNING id",
            &[&email, &hash, &name],
        )
        .await
        .map_err(|e| {
            on_constraint(e, |c| {
                (c == "users_email_key")
                    .then(|| ApiError::conflict("email_taken", "an account with this email exists"))
            })
        })?;
    drop(conn);
    let session = start_session(
        &state,
        User {
            id: row.get(0),
            email,
            name,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// Sign in with e-mail and password. Attempts are rate-limited per e-mail and per client (per
/// minute in memory), and failed ones per account and per client over an hour across every
/// instance (`auth.failed_logins_per_*_per_hour`): over a limit, 429 with `Retry-After`.
#[utoipa::path(post, path = "/api/auth/login", tag = "accounts", request_body = Login,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    let email = validate::text("email", &body.email, 254)?;
    let ip = client;
    state.auth.check_login_rate(email, ip)?;
    let limits = &state.auth.failed_logins;
    let conn = state.db.conn().await?;
    let account_failed = limits.check(&conn, email, ip).await?;
    let row = conn
        .query_opt(
            "SELECT id, email, name, password_hash FROM users WHERE lower(email) = lower($1)",
            &[&email],
        )
        .await?;
    drop(conn);
    let stored = row.as_ref().map(|r| r.get::<_, String>(3));
    let verified = state.auth.verify_password(body.password, stored).await?;
    let Some(row) = row.filter(|_| verified) else {
        limits.failed(&state.db.conn().await?, email, ip).await?;
        return Err(ApiError::Unauthorized("wrong email or password"));
    };
    if account_failed {
        limits.succeeded(&state.db.conn().await?, email).await?;
    }
    let user = User {
        id: row.get(0),
        email: row.get(1),
        name: row.get(2),
    };
    Ok(Json(start_session(&state, user).await?))
}

/// Revoke the token used for this request.
#[utoipa::path(post, path = "/api/auth/logout", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.trim())
        .unwrap_or_default();
    let conn = state.db.conn().await?;
    conn.execute(
        "DELETE FROM sessions WHERE token_hash = $1 AND user_id = $2",
        &[&token_hash(token), &user.id],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<User>, ApiError> {
    let conn = state.db.conn().await?;
    let row = conn
        .query_one(
            "SELECT id, email, name FROM users WHERE id = $1",
            &[&user.id],
        )
        .await?;
    Ok(Json(User {
        id: row.get(0),
        email: row.get(1),
        name: row.get(2),
    }))
}
