//! The shop API server as a library; `main.rs` is a thin command-line shell over it.
//!
//! - [`config`]: TOML file, environment and flags, merged in that order.
//! - [`app`]: start-up (`Application::build`), shared state, the middleware stack.
//! - [`db`]: the connection pool and the single, parameterized path every statement takes.
//! - [`migrate`]: embedded SQL migrations, applied under an advisory lock.
//! - [`seed`]: the five sample products and a generated catalogue of any size.
//! - [`auth`]: argon2id passwords, bearer tokens, login rate limits, auth extractors.
//! - [`routes`]: one module per resource (catalogue, search, accounts, cart, checkout, orders,
//!   analytics, the optimizer's metrics and dashboard, health, OpenAPI).
//! - [`optimizer`]: the online optimizer on the request path (statistics, prediction,
//!   admission, cache, anomaly detection, request log).
//! - [`error`], [`extract`], [`validate`]: JSON errors and the input checks every route shares.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod migrate;
pub mod routes;
pub mod seed;
pub mod validate;

pub use app::{AppState, Application};
pub use config::Config;
