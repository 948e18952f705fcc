//! The optimizer's actions (healing, model changes, index advice, retraining): one shape, kept
//! in memory for `/api/ml-metrics` and the dashboard, and appended as a JSON line to the action
//! log (`telemetry.optimizer_log`, by default `logs/ml-optimizer.log`).
//!
//! Actions are rare (a few per minute at most), so the file is written directly under a std
//! mutex, never from the request path.

use serde::Serialize;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// One optimizer action.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Unix ms.
    pub ts_ms: i64,
    /// What was done: `heal`, `undo`, `model-serving`, `index-suggested`, ...
    pub action: String,
    /// Why, in words.
    pub reason: String,
    /// Anomalous share of requests when it was decided.
    pub anomaly_rate: f64,
    /// What the action concerned, for actions that have more to say (the index advisor's
    /// statement, index and costs); flattened into the object.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// A bounded in-memory log, oldest dropped first. A std mutex: held for a push or a copy,
/// never across an `.await`.
pub struct Recent<T> {
    items: Mutex<VecDeque<T>>,
    max: usize,
}

impl<T: Clone> Recent<T> {
    /// At most `max` items.
    pub fn new(max: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends, dropping the oldest beyond the bound.
    pub fn push(&self, item: T) {
        let mut items = self.lock();
        items.push_back(item);
        while items.len() > self.max {
            items.pop_front();
        }
    }

    /// The items `keep` accepts, oldest first.
    pub fn copy_where(&self, keep: impl Fn(&T) -> bool) -> Vec<T> {
        self.lock()
            .iter()
            .filter(|item| keep(item))
            .cloned()
            .collect()
    }

    /// The newest item.
    pub fn last(&self) -> Option<T> {
        self.lock().back().cloned()
    }

    /// Runs `read` on the items, oldest first, under the lock.
    pub fn with<R>(&self, read: impl FnOnce(&mut VecDeque<T>) -> R) -> R {
        read(&mut self.lock())
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.max
    }
}

/// Actions kept in memory.
const MAX_ACTIONS: usize = 500;

/// The action log: in memory and on disk.
pub struct Actions {
    file: ActionLog,
    recent: Recent<Action>,
}

impl Actions {
    /// Actions appended to the file at `path` (created on first write).
    pub fn new(path: PathBuf) -> Self {
        Self {
            file: ActionLog::new(path),
            recent: Recent::new(MAX_ACTIONS),
        }
    }

    /// Records an action.
    pub fn record(&self, action: Action) {
        tracing::info!(action = %action.action, reason = %action.reason, "optimizer action");
        self.file.write(&action);
        self.recent.push(action);
    }

    /// The actions kept in memory that `keep` accepts, oldest first.
    pub fn copy_where(&self, keep: impl Fn(&Action) -> bool) -> Vec<Action> {
        self.recent.copy_where(keep)
    }
}

/// The optimizer's action log (`logs/ml-optimizer.log`): JSON lines, rare, written directly.
struct ActionLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl ActionLog {
    /// A log at `path` (created on first write).
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Appends one JSON line. Errors are logged once per attempt and otherwise ignored: the
    /// optimizer must not fail because its log cannot be written.
    fn write<T: Serialize>(&self, event: &T) {
        let mut guard = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            if let Some(parent) = self.path.parent() {
                let _ = fs::create_dir_all(parent);
            }
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => *guard = Some(f),
                Err(err) => {
                    tracing::warn!(error = %err, path = %self.path.display(), "cannot open optimizer log");
                    return;
                }
            }
        }
        if let (Some(f), Ok(mut line)) = (guard.as_mut(), serde_json::to_vec(event)) {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }
}
