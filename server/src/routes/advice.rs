//! `POST /api/ml-metrics/index-advice` (admin): run an index advisor pass now and answer with
//! its result, so operators (and tests) need not wait for the periodic pass.

use crate::app::AppState;
use crate::auth::Admin;
use crate::error::ErrorBody;
use crate::extract::Json;
use crate::routes::Routes;
use axum::extract::State;
use optimizer::advice::AdviceView;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().post("/api/ml-metrics/index-advice", advise_now)
}

/// Runs an index advisor pass now (after any running one) and returns the advisor's view: slow
/// statements, suggestions with their verified cost reduction, skipped statements and why, and
/// automatically built indexes with their measured outcome. The same view is `indexAdvice` in
/// `/api/ml-metrics`.
#[utoipa::path(post, path = "/api/ml-metrics/index-advice", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, description = "The advisor's view after the pass (as `indexAdvice` in /api/ml-metrics)"),
        (status = 401, body = ErrorBody)))]
pub async fn advise_now(State(state): State<AppState>, _admin: Admin) -> Json<AdviceView> {
    Json(state.optimizer.advise_now().await)
}
