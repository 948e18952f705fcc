//! Home of the project's criterion benchmarks (`benches/benches/`) and k6 load tests
//! (`benches/k6/`); the figures and how to reproduce them are in `docs/benchmarks.md`.
