//! `/api/stress-test` (admin, low priority): real CPU and database work on demand, to provoke
//! the anomalies the optimizer must notice.

use crate::app::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query};
use crate::routes::Routes;
use crate::validate;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().get("/api/stress-test", stress_test)
}

/// How hard to push.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StressParams {
    /// Work multiplier, 1-1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    pub complexity: Option<u32>,
}

/// What the stress test did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StressReport {
    /// The complexity run.
    pub complexity: u32,
    /// CPU time spent hashing (ms).
    pub cpu_ms: f64,
    /// Database time (ms).
    pub db_ms: f64,
    /// Rows the database matched (so the work cannot be optimized away).
    pub matched: i64,
}

/// Real CPU and database work that grows with `complexity`, to provoke anomalies (admin).
#[utoipa::path(get, path = "/api/stress-test", tag = "optimizer", params(StressParams), security(("admin" = [])),
    responses((status = 200, body = StressReport), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn stress_test(
    State(state): State<AppState>,
    _admin: Admin,
    Query(params): Query<StressParams>,
) -> Result<Json<StressReport>, ApiError> {
    let complexity = validate::range("complexity", params.complexity.unwrap_or(10), 1, 1000)?;
    let cpu = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut digest = [0_u8; 32];
        for _ in 0..complexity * 2_000 {
            digest = Sha256::digest(digest).into();
        }
        std::hint::black_box(digest);
        started.elapsed()
    })
    .await
    .map_err(anyhow::Error::from)?;
    let conn = state.db.conn().await?;
    let started = Instant::now();
    let n = i32::try_from(complexity * 2_000).unwrap_or(i32::MAX);
    let row = conn
        .query_one(
            "SELECT count(*) FROM generate_series(1, $1) g WHERE md5(g::text) LIKE 'a%'",
            &[&n],
        )
        .await?;
    Ok(Json(StressReport {
        complexity,
        cpu_ms: cpu.as_secs_f64() * 1000.0,
        db_ms: started.elapsed().as_secs_f64() * 1000.0,
        matched: row.get(0),
    }))
}
