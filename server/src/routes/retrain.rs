//! `POST /api/ml-metrics/retrain` (admin): train on the request logs now, as `training_interval`
//! does in the background, so operators (and tests) need not wait for the next interval.

use crate::app::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::routes::Routes;
use axum::extract::State;
use optimizer::model::retrain::RetrainStatus;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().post("/api/ml-metrics/retrain", retrain_now)
}

/// Runs the trainer on the server's request logs and waits for it (at most
/// `training_timeout_secs`). The new model is adopted only if it predicts the most recent logged
/// requests (the ones it was not trained on) better than the serving model; the model watcher
/// then loads it. Answers with the training status (also `model.retrain` in /api/ml-metrics).
#[utoipa::path(post, path = "/api/ml-metrics/retrain", tag = "optimizer", security(("admin" = [])),
    responses((status = 200, description = "The training status after the run: runs, adopted, lastOutcome"),
        (status = 401, body = ErrorBody),
        (status = 409, description = "A training run is already in progress", body = ErrorBody)))]
pub async fn retrain_now(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<RetrainStatus>, ApiError> {
    state
        .optimizer
        .retrain_now(state.config.telemetry.log_dir.clone())
        .await?
        .map(Json)
        .ok_or(ApiError::Conflict {
            code: "training_in_progress",
            message: "a training run is already in progress".into(),
        })
}
