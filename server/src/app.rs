//! Start-up: state, router, middleware stack, listener and graceful shutdown.
//!
//! [`Application::build`] binds its own listener, so tests can ask for port 0 and learn the
//! real port before serving.

use crate::auth::{Auth, SharedAuth};
use crate::config::Config;
use crate::db::Db;
use crate::error::{ApiError, error_response};
use crate::routes;
use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use optimizer::Optimizer;
use optimizer::middleware::{Host, Pipeline, PoolStatus, optimize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// Everything handlers share: cheap to clone (pools and `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub db: Db,
    /// The configuration the server started with (read-only).
    pub config: Arc<Config>,
    /// Accounts, tokens and login limits.
    pub auth: SharedAuth,
    /// The online optimizer.
    pub optimizer: Arc<Optimizer>,
    /// Set once a shutdown signal arrived: `/readyz` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// The optimizer sees the shop through this: its pool's state and the admin check.
impl Host for AppState {
    fn pool(&self) -> PoolStatus {
        let status = self.db.status();
        PoolStatus {
            waiting: status.waiting,
            available: status.available,
        }
    }

    fn is_admin(&self, headers: &axum::http::HeaderMap) -> bool {
        self.auth.has_admin_token(headers)
    }
}

/// A built server: bound, migrated, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connects the pool, applies migrations, builds the router and binds the listener.
    ///
    /// # Errors
    /// Database unreachable, a migration failed, or the port is taken.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        crate::migrate::run(&config).await?;
        let optimizer = Arc::new(Optimizer::new(&config.optimizer()));
        let db = Db::new(&config, optimizer.balancer())?.with_captures(optimizer.captures());
        let auth = Arc::new(Auth::new(&config.auth)?);
        let address = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let trusted_proxies = config.trusted_proxies()?.into();
        let state = AppState {
            trusted_proxies,
            db,
            config: Arc::new(config),
            auth,
            optimizer,
            draining: Arc::default(),
        };
        let router = router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// Serves until SIGINT or SIGTERM, then drains: `/readyz` answers 503 at once; after SIGTERM
    /// new connections are still taken for `server.drain_grace_ms`; then the listener closes,
    /// the requests in flight finish (for at most `server.drain_timeout_ms`), the background
    /// tasks stop and the request log is flushed.
    ///
    /// # Errors
    /// The listener failed.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let signal = shutdown_signal();
        self.run_until(signal).await
    }

    /// [`Application::run_until_stopped`], with the signal a future: it resolves when the
    /// drain should begin, to whether a grace period comes first (SIGTERM, not SIGINT).
    ///
    /// # Errors
    /// The listener failed.
    pub async fn run_until(
        self,
        signal: impl Future<Output = bool> + Send + 'static,
    ) -> anyhow::Result<()> {
        let maintenance = tokio::spawn(maintenance(self.state.clone()));
        let probes = tokio::spawn(self.state.db.clone().probe());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let optimizer = self.state.optimizer.spawn(async {
            let _ = stopped.await;
        });
        tracing::info!(port = self.port(), "listening");
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = &self.state.config.server;
        let (grace, limit) = (
            Duration::from_millis(server.drain_grace_ms),
            Duration::from_millis(server.drain_timeout_ms),
        );
        let draining = self.state.draining.clone();
        let (closing, mut closed) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let with_grace = signal.await;
            draining.store(true, std::sync::atomic::Ordering::SeqCst);
            if with_grace && !grace.is_zero() {
                tracing::info!(
                    ?grace,
                    "draining: /readyz answers 503, still accepting for the grace period"
                );
                tokio::time::sleep(grace).await;
            }
            tracing::info!("draining: no new connections; waiting for the requests in flight");
            let _ = closing.send(true);
        };
        let serve = axum::serve(self.listener, service).with_graceful_shutdown(shutdown);
        let deadline = async move {
            let _ = closed.wait_for(|c| *c).await;
            tokio::time::sleep(limit).await;
        };
        let result = tokio::select! {
            result = serve.into_future() => result,
            () = deadline => {
                tracing::warn!(?limit, "drain deadline passed: the requests still in flight are cut");
                Ok(())
            }
        };
        maintenance.abort();
        probes.abort();
        let _ = stop.send(());
        let _ = optimizer.await;
        let optimizer = self.state.optimizer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            optimizer.flush_request_log(Duration::from_secs(5))
        })
        .await
        .unwrap_or(false);
        if flushed {
            tracing::info!("drained: request log flushed");
        } else {
            tracing::warn!("drained, but the request log could not be flushed in 5 s");
        }
        result.context("serving HTTP")
    }
}

/// The full router with its middleware stack (outermost first).
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    let timeout = Timeouts {
        request: Duration::from_millis(state.config.server.request_timeout_ms),
        // Comparing and loading a candidate after the trainer stops takes seconds, not more.
        retrain: Duration::from_secs(state.config.models.training_timeout_secs + 60),
    };
    routes::router()
        .into_router()
        .fallback(|| async {
            error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        })
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(CatchPanicLayer::custom(|_| {
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal server error",
                    )
                }))
                .layer(middleware::from_fn_with_state(timeout, request_timeout))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes))
                .layer(middleware::from_fn_with_state(
                    state.db.clone(),
                    write_position,
                ))
                .layer(middleware::from_fn_with_state(
                    Pipeline::new(state.optimizer.clone(), state.clone()),
                    optimize::<AppState>,
                )),
        )
        .with_state(state)
}

/// How long a request may run.
#[derive(Clone, Copy)]
struct Timeouts {
    /// Any request: `server.request_timeout_ms`.
    request: Duration,
    /// `POST /api/ml-metrics/retrain`, which answers with the run's verdict: the trainer's own
    /// limit (`models.training_timeout_secs`) and a margin, not the request limit.
    retrain: Duration,
}

/// Answers 503 JSON when a request runs past its time ([`Timeouts`]).
async fn request_timeout(State(limits): State<Timeouts>, request: Request, next: Next) -> Response {
    let limit = if request.method() == axum::http::Method::POST
        && request.uri().path() == "/api/ml-metrics/retrain"
    {
        limits.retrain
    } else {
        limits.request
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            retry_after_secs: 1,
        }
        .into_response(),
    }
}

/// With read replicas, a successful write's response carries the primary's WAL position after
/// it (`x-write-lsn`, and the `write_lsn` cookie for browsers): sent back, it keeps the client's
/// reads on targets that have replayed the write, on any instance. Outside the optimizer's
/// middleware, so the extra statement is not counted as the request's.
async fn write_position(State(db): State<Db>, request: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, Method, header::SET_COOKIE};
    let writes = db.has_replicas()
        && !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
    let mut response = next.run(request).await;
    if writes
        && response.status().is_success()
        && let Ok(lsn) = db.position().await
    {
        let lsn = optimizer::balance::format_lsn(lsn);
        let cookie = format!(
            "{}={lsn}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            crate::extract::WRITE_LSN_COOKIE,
            crate::extract::WRITE_LSN_COOKIE_SECS
        );
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&lsn) {
            headers.insert(crate::extract::WRITE_LSN_HEADER, value);
        }
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(SET_COOKIE, value);
        }
    }
    response
}

/// Hourly housekeeping: expired sessions (login and dashboard), old idempotency keys, idle
/// rate-limit keys.
async fn maintenance(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        state.auth.forget_idle_keys();
        let result = async {
            let conn = state.db.conn().await?;
            conn.execute("DELETE FROM sessions WHERE expires_at < now()", &[])
                .await?;
            conn.execute(
                "DELETE FROM dashboard_sessions WHERE expires_at < now()",
                &[],
            )
            .await?;
            conn.execute(
                "DELETE FROM login_failures WHERE window_start < now() - interval '1 hour'",
                &[],
            )
            .await?;
            conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'",
                &[],
            )
            .await?;
            Ok::<_, ApiError>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "maintenance failed; will retry next hour");
        }
    }
}

/// Resolves on SIGTERM (true: drain with the grace period) or SIGINT (false: at once).
async fn shutdown_signal() -> bool {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let with_grace = tokio::select! {
        () = ctrl_c => false,
        () = terminate => true,
    };
    tracing::info!(
        signal = if with_grace { "SIGTERM" } else { "SIGINT" },
        "shutting down"
    );
    with_grace
}
