//! Liveness and readiness probes for load balancers and orchestrators.

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::routes::Routes;
use axum::extract::State;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/healthz", healthz)
        .get("/readyz", readyz)
}

/// Probe answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when healthy.
    pub status: &'static str,
}

/// The process is up (does not touch the database).
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The server can reach PostgreSQL within a second.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    // Draining: take this instance out of rotation while the requests in flight finish.
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::Unavailable {
            retry_after_secs: 1,
        });
    }
    let probe = async {
        let conn = state.db.conn().await?;
        conn.query_one("SELECT 1", &[]).await?;
        Ok::<_, ApiError>(())
    };
    match tokio::time::timeout(Duration::from_secs(1), probe).await {
        Ok(Ok(())) => Ok(Json(Health { status: "ok" })),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness probe failed");
            Err(ApiError::Unavailable {
                retry_after_secs: 1,
            })
        }
        Err(_) => Err(ApiError::Unavailable {
            retry_after_secs: 1,
        }),
    }
}
