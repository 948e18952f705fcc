//! Home of the project's criterion benchmarks (`benches/benches/`) and k6 load tests
//! (`benches/k6/`). The benchmarks arrive with the optimizer and the ONNX models; this crate
//! exists now so the workspace layout is the one `DESIGN.md` describes.
