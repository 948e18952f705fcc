//! ONNX Runtime on the request path: the process-wide environment and small pools of sessions.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) from the configured path or
//! `ORT_DYLIB_PATH`. `ort` panics when the file is missing, so the path is checked first and
//! the initialisation runs under `catch_unwind`; any failure is remembered and reported, and the
//! server stays on online statistics.
//!
//! A [`Pool`] holds a few sessions of one model, each behind its own `std::sync::Mutex` together
//! with reused input tensors and preallocated outputs (`Session::run` takes `&mut self`). A
//! request takes the first session it can `try_lock`; it never waits: when every session is
//! busy it answers from online statistics instead (counted as `busy`). A std mutex, not a tokio
//! one, because it is held for a few microseconds of CPU work and never across an `.await`.
//!
//! Under load a call costs far more than in a tight loop: between two requests the handler,
//! hyper and the database driver push ONNX Runtime's code and the trees out of the CPU caches,
//! and one cold call measured ~25 µs against ~3 µs warm (`docs/benchmarks.md`). [`Pool::run_joined`] therefore
//! lets concurrent requests share a call: the first to arrive yields to the scheduler once, the
//! requests that reach the same point meanwhile add their rows, and one run answers them all.

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, TryLockError};
use tokio::sync::oneshot;

/// The environment variable naming the ONNX Runtime library when the configuration does not.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The process-wide environment, or why there is none. ONNX Runtime allows one environment per
/// process and a library can be loaded once, so the first caller's path wins.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The library path: the configured one, else `ORT_DYLIB_PATH`.
pub fn library_path(configured: Option<&Path>) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(DYLIB_ENV).map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

/// The ONNX Runtime environment, initialised on first use from `library`.
///
/// # Errors
/// No library configured, the file is missing, or ONNX Runtime refused to start; the message
/// says which.
pub fn runtime(library: Option<&Path>) -> Result<&'static Environment, String> {
    RUNTIME
        .get_or_init(|| {
            let path = library_path(library).ok_or_else(|| {
                format!("no ONNX Runtime library configured ([models] ort_library or {DYLIB_ENV})")
            })?;
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist (run scripts/ort.sh)",
                    path.display()
                ));
            }
            // `ort` may panic inside the loader on a broken library; a model is optional, so
            // that must not take the server down.
            let built = std::panic::catch_unwind(|| {
                ort::init_from(&path)
                    .map_err(|e| e.to_string())?
                    .with_name("shop")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| e.to_string())
            });
            match built {
                Ok(Ok(env)) => Ok(env),
                Ok(Err(e)) => Err(format!("ONNX Runtime {}: {e}", path.display())),
                Err(_) => Err(format!("ONNX Runtime {} panicked on load", path.display())),
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Why a pooled run gave no answer.
#[derive(Debug, Clone)]
pub enum RunError {
    /// Every session was busy with another request.
    Busy,
    /// ONNX Runtime failed. Every row of a shared run gets the same `first` flag, so that the
    /// failure can be counted once per run rather than once per row.
    Failed {
        /// What ONNX Runtime said.
        message: String,
        /// `true` until the first row's request takes it (`swap(false)`) to count the failure.
        first: Arc<AtomicBool>,
    },
}

impl RunError {
    fn failed(message: String) -> Self {
        Self::Failed {
            message,
            first: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// Most outputs per row of any model here (the latency model's p50 and p90).
pub const MAX_OUTPUTS: usize = 2;

/// Most rows one run answers; a request arriving at a full batch runs alone.
pub const MAX_BATCH: usize = 64;

/// The tensors for one batch size: the reused input and the options that hold the
/// preallocated output.
struct Shaped {
    input: Tensor<f32>,
    options: RunOptions<HasSelectedOutputs>,
}

impl Shaped {
    fn new(rows: usize, width: usize, (output_name, outputs): (&str, usize)) -> ort::Result<Self> {
        let input = Tensor::<f32>::new(&Allocator::default(), [rows, width])?;
        let output = Tensor::<f32>::new(&Allocator::default(), [rows, outputs])?;
        let options = RunOptions::new()?.with_outputs(
            OutputSelector::no_default()
                .with(output_name.to_owned())
                .preallocate(output_name.to_owned(), output),
        );
        Ok(Self { input, options })
    }
}

/// One session with its tensors per batch size (made on first use of that size).
struct Runner {
    session: Session,
    output_name: String,
    shapes: Vec<Option<Shaped>>,
}

impl Runner {
    /// Runs `rows` (row-major, `rows.len() / width` of them) and writes the answers to `out`.
    fn run(&mut self, rows: &[f32], width: usize, out: &mut [f32]) -> ort::Result<()> {
        let n = rows.len() / width;
        let outputs = out.len() / n.max(1);
        if n == 0 || n > self.shapes.len() {
            return Err(ort::Error::new(format!("{n} rows in one run")));
        }
        let shaped = match &mut self.shapes[n - 1] {
            Some(shaped) => shaped,
            slot @ None => slot.insert(Shaped::new(n, width, (&self.output_name, outputs))?),
        };
        let (_, data) = shaped.input.extract_tensor_mut();
        data.copy_from_slice(rows);
        // Unnamed inputs (an array, no allocation); the model has exactly one.
        let answers = self
            .session
            .run_with_options(ort::inputs![&shaped.input], &shaped.options)?;
        let (_, values) = answers[0].try_extract_tensor::<f32>()?;
        if values.len() != out.len() {
            return Err(ort::Error::new(format!(
                "model answered {} values, expected {}",
                values.len(),
                out.len()
            )));
        }
        out.copy_from_slice(values);
        Ok(())
    }
}

/// Rows waiting for a shared run, and where each answer goes.
#[derive(Default)]
struct Waiting {
    rows: Vec<f32>,
    answers: Vec<oneshot::Sender<Result<[f32; MAX_OUTPUTS], RunError>>>,
}

/// The request that opened a batch; runs it when done or dropped (a client hanging up must not
/// leave the others waiting).
struct Leader<'a>(&'a Pool);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Threads numbered in the order they first run a model: a thread tries "its" session first
/// (its number modulo the pool size), so with as many sessions as worker threads each session's
/// buffers and model stay in one core's cache instead of moving between cores on every request.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD: usize = THREADS.fetch_add(1, Ordering::Relaxed);
}

/// Sessions of one model, answering one row per call or the rows of concurrent requests in one.
pub struct Pool {
    runners: Box<[Mutex<Runner>]>,
    width: usize,
    outputs: usize,
    waiting: Mutex<Waiting>,
    /// ONNX Runtime calls made (a joined run counts once).
    calls: AtomicU64,
}

impl Pool {
    /// Builds `sessions` sessions of the model in `bytes`, taking rows of `width` floats and
    /// answering `outputs` floats in its output `output_name`: one intra- and inter-op thread
    /// each, no spinning (a spinning thread pool would burn the cores the requests need).
    ///
    /// # Errors
    /// ONNX Runtime refused the model or the options, or the model's output is not
    /// `output_name` (a model from another contract).
    pub fn new(
        env: &Environment,
        bytes: &[u8],
        sessions: usize,
        width: usize,
        (output_name, outputs): (&str, usize),
    ) -> ort::Result<Self> {
        if outputs > MAX_OUTPUTS {
            return Err(ort::Error::new(format!(
                "{outputs} outputs per row, at most {MAX_OUTPUTS} supported"
            )));
        }
        let mut runners = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            // One intra-op thread also keeps a row's answer bit-identical whether it runs alone
            // or in a shared batch, which the kept answers rely on (`memo`).
            let session = Session::builder(env)?
                .with_intra_threads(1)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)?
                .with_inter_op_spinning(false)?
                .commit_from_memory(bytes)?;
            let found = session.outputs().first().map(|o| o.name().to_owned());
            if found.as_deref() != Some(output_name) {
                return Err(ort::Error::new(format!(
                    "the model answers {found:?}, expected the output {output_name:?}"
                )));
            }
            let mut shapes: Vec<Option<Shaped>> = (0..MAX_BATCH).map(|_| None).collect();
            shapes[0] = Some(Shaped::new(1, width, (output_name, outputs))?);
            runners.push(Mutex::new(Runner {
                session,
                output_name: output_name.to_owned(),
                shapes,
            }));
        }
        Ok(Self {
            runners: runners.into_boxed_slice(),
            width,
            outputs,
            waiting: Mutex::new(Waiting::default()),
            calls: AtomicU64::new(0),
        })
    }

    /// Floats per input row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Floats per answer.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// A metadata value of the model (from the first session).
    pub fn metadata(&self, key: &str) -> Option<String> {
        let runner = self.runners.first()?;
        let runner = runner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        runner.session.metadata().ok()?.custom(key)
    }

    /// Runs one row through the calling thread's session, or the next free one, never waiting
    /// for a busy one.
    ///
    /// # Errors
    /// [`RunError::Busy`] when all sessions are in use, [`RunError::Failed`] when ONNX Runtime
    /// fails.
    pub fn run(&self, row: &[f32], out: &mut [f32]) -> Result<(), RunError> {
        debug_assert_eq!(row.len(), self.width);
        self.run_rows(row, out)
    }

    /// [`Pool::run`] into an answer array (the first [`Pool::outputs`] values set).
    ///
    /// # Errors
    /// As [`Pool::run`].
    pub fn run_one(&self, row: &[f32]) -> Result<[f32; MAX_OUTPUTS], RunError> {
        let mut out = [0.0; MAX_OUTPUTS];
        self.run(row, &mut out[..self.outputs])?;
        Ok(out)
    }

    /// ONNX Runtime calls so far (a joined run of many rows counts once).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Runs any number of rows (up to [`MAX_BATCH`]) in one call.
    fn run_rows(&self, rows: &[f32], out: &mut [f32]) -> Result<(), RunError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let n = self.runners.len();
        let start = THREAD.with(|t| *t);
        for i in 0..n {
            let mut runner = match self.runners[(start + i) % n].try_lock() {
                Ok(guard) => guard,
                // A panic while holding it cannot leave the session half-run in a way that
                // matters: the next run overwrites input and output.
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            return runner
                .run(rows, self.width, out)
                .map_err(|e| RunError::failed(e.to_string()));
        }
        Err(RunError::Busy)
    }

    /// Runs one row together with the rows of concurrent requests (see the module docs): the
    /// first caller yields once and then runs every row that arrived meanwhile in one call;
    /// the others wait for its answer. Costs a scheduler round trip, so for when other requests
    /// are in flight.
    ///
    /// # Errors
    /// As [`Pool::run`], for the whole batch.
    pub async fn run_joined(&self, row: &[f32]) -> Result<[f32; MAX_OUTPUTS], RunError> {
        debug_assert_eq!(row.len(), self.width);
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.answers.len() >= MAX_BATCH {
                drop(waiting);
                return self.run_one(row);
            }
            waiting.rows.extend_from_slice(row);
            waiting.answers.push(answer);
            waiting.answers.len() == 1
        };
        if first {
            let leader = Leader(self);
            tokio::task::yield_now().await;
            drop(leader);
        }
        // The sender is only dropped unanswered if the run panicked.
        answered.await.unwrap_or(Err(RunError::Busy))
    }

    /// Runs the waiting rows, if any, and hands out the answers.
    fn flush(&self) {
        let Waiting { rows, answers } =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        if answers.is_empty() {
            return;
        }
        let mut out = [0.0_f32; MAX_BATCH * MAX_OUTPUTS];
        let out = &mut out[..answers.len() * self.outputs];
        let result = self.run_rows(&rows, out);
        for (i, answer) in answers.into_iter().enumerate() {
            let _ = answer.send(result.clone().map(|()| {
                let mut one = [0.0; MAX_OUTPUTS];
                one[..self.outputs].copy_from_slice(&out[i * self.outputs..(i + 1) * self.outputs]);
                one
            }));
        }
    }

    /// Runs one row, yielding the thread until a session is free: for work off the request
    /// path (probe checks, comparing models) that must not fall back to online statistics.
    ///
    /// # Errors
    /// ONNX Runtime failed.
    pub fn run_waiting(&self, row: &[f32], out: &mut [f32]) -> Result<(), String> {
        loop {
            match self.run(row, out) {
                Ok(()) => return Ok(()),
                Err(RunError::Busy) => std::thread::yield_now(),
                Err(RunError::Failed { message, .. }) => return Err(message),
            }
        }
    }
}
