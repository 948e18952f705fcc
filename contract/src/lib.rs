//! The small crate the server and the trainer share.
//!
//! It will hold the request and query log record format, the fixed-order feature vector with
//! its schema fingerprint, and the model manifest (see `DESIGN.md`, "Training and serving never
//! drift"). It stays free of heavy dependencies (no axum, polars or ort) so that both sides can
//! depend on it cheaply. The shop API issue only lays out the crate; its types arrive with the
//! optimizer.
