//! HTTP routes, one module per resource, merged here.

pub mod accounts;
pub mod advice;
pub mod analytics;
pub mod cart;
pub mod checkout;
pub mod dashboard;
pub mod health;
pub mod ml;
pub mod openapi;
pub mod orders;
pub mod products;
pub mod retrain;
pub mod search;

use crate::app::AppState;
use axum::Router;

/// Every route of the API.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(products::router())
        .merge(search::router())
        .merge(accounts::router())
        .merge(cart::router())
        .merge(checkout::router())
        .merge(orders::router())
        .merge(analytics::router())
        .merge(health::router())
        .merge(ml::router())
        .merge(advice::router())
        .merge(retrain::router())
        .merge(dashboard::router())
        .merge(openapi::router())
}
