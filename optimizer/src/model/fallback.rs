//! What the request path calls to predict (the model first, online statistics otherwise) and to
//! score (the model's and the online verdicts combined).

use super::{Models, Stale};
use crate::anomaly::{self, OnlineScorer, Outcome};
use crate::predictor::{OnlinePredictor, Prediction};
use crate::stats::Stats;
use contract::FeatureVector;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Predicts with the model, or with online statistics when it is stale or absent.
pub struct ModelPredictor {
    models: Arc<Models>,
    online: OnlinePredictor,
    stats: Arc<Stats>,
}

impl ModelPredictor {
    /// A predictor asking `models` first.
    pub fn new(models: Arc<Models>, stats: Arc<Stats>) -> Self {
        Self {
            models,
            online: OnlinePredictor::new(stats.clone()),
            stats,
        }
    }

    /// The model's prediction, else the online one with the reason; `join` as for
    /// [`Models::predict`]. Either way the other's answer rides along (`model_ms`,
    /// `online_ms`), for the shadow evaluation and the logs.
    pub async fn predict(&self, route: usize, features: &FeatureVector, join: bool) -> Prediction {
        let online = self.online.predict(route);
        let answer = self
            .models
            .predict(route, features, &self.stats, join)
            .await;
        let model_ms = answer.as_ref().map_or([0.0; 2], |p| p.model_ms);
        let chosen = match answer {
            Ok(prediction) if prediction.stale.is_none() => prediction,
            Ok(Prediction { stale, .. }) => {
                self.models.counters.fallbacks.fetch_add(1, Relaxed);
                Prediction { stale, ..online }
            }
            Err(stale) => {
                if stale != Stale::Busy {
                    self.models.counters.fallbacks.fetch_add(1, Relaxed);
                }
                Prediction {
                    stale: Some(stale),
                    ..online
                }
            }
        };
        Prediction {
            model_ms,
            online_ms: online.online_ms,
            ..chosen
        }
    }
}

/// Scores with the model and the online statistics together, or with online statistics alone
/// when the model is stale or absent.
pub struct ModelScorer {
    models: Arc<Models>,
    online: OnlineScorer,
}

impl ModelScorer {
    /// A scorer asking `models` and the online statistics.
    pub fn new(models: Arc<Models>, stats: Arc<Stats>) -> Self {
        Self {
            models,
            online: OnlineScorer::new(stats),
        }
    }

    /// The model's and the online statistics' verdicts combined ([`anomaly::combine`]): the
    /// online one alone when the model cannot answer; `join` as for [`Models::predict`].
    pub async fn score(
        &self,
        route: usize,
        features: &FeatureVector,
        outcome: &Outcome,
        join: bool,
    ) -> f32 {
        let model = self.models.score(features, outcome, join).await.ok();
        anomaly::combine(model, self.online.judge(route, outcome))
    }
}
