//! When this server first served each model version, so that `models.max_age_hours` counts a
//! model's age from then rather than from when it was trained.
//!
//! A model committed with the repository (or copied from another machine) was trained long
//! before a newcomer's first `make run`; counting from its training time would retire it
//! before it has seen a request. Counted from its first service here, it serves for the whole
//! limit and then goes stale as any other model would, unless a retrain replaced it.
//!
//! The ledger is a small JSON object in the model folder (`.served.json`, version to Unix ms),
//! so a restart keeps the count going. Where the folder is read-only it lives in memory only
//! and the count starts again with each process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the ledger inside a model folder.
pub const LEDGER_FILE: &str = ".served.json";

/// Versions kept: the serving one, the previous one and a few more.
const KEEP: usize = 8;

/// First-served times per model version.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    first: BTreeMap<u64, i64>,
}

impl Ledger {
    /// The ledger of the model folder `dir` (empty when it has none or it does not parse).
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(LEDGER_FILE);
        let first = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<BTreeMap<String, i64>>(&bytes).ok())
            .map(|m| {
                m.into_iter()
                    .filter_map(|(v, ms)| Some((v.parse().ok()?, ms)))
                    .collect()
            })
            .unwrap_or_default();
        Self { path, first }
    }

    /// When `version` was first served: the recorded time, or `now_ms`, recorded (and written,
    /// best effort) when it is new.
    pub fn first_served(&mut self, version: u64, now_ms: i64) -> i64 {
        if let Some(&ms) = self.first.get(&version) {
            return ms;
        }
        self.first.insert(version, now_ms);
        while self.first.len() > KEEP {
            self.first.pop_first();
        }
        let text: BTreeMap<String, i64> = self
            .first
            .iter()
            .map(|(v, ms)| (v.to_string(), *ms))
            .collect();
        if let Ok(json) = serde_json::to_vec(&text) {
            let tmp = self.path.with_extension("tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
        now_ms
    }

    /// The recorded first-served time of `version`, if any.
    pub fn get(&self, version: u64) -> Option<i64> {
        self.first.get(&version).copied()
    }
}

/// Hours since `since_ms` at `now_ms`.
pub fn age_hours(since_ms: i64, now_ms: i64) -> f64 {
    (now_ms - since_ms) as f64 / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_model_trained_long_ago_counts_its_age_from_its_first_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Trained 30 days before this server first saw it.
        let trained = 1_795_667_983_938_u64;
        let first_run = trained as i64 + 30 * 24 * HOUR;
        let mut ledger = Ledger::open(dir.path());
        let since = ledger.first_served(trained, first_run);
        assert_eq!(since, first_run);
        assert!(
            age_hours(since, first_run) < 168.0,
            "a newcomer starts fresh"
        );

        // A restart a week and an hour later: the count went on, so at the default limit the
        // model is stale.
        let later = first_run + 169 * HOUR;
        let mut reopened = Ledger::open(dir.path());
        let since = reopened.first_served(trained, later);
        assert_eq!(since, first_run, "the ledger survived the restart");
        assert!(age_hours(since, later) > 168.0);
    }

    #[test]
    fn an_unwritable_folder_keeps_the_ledger_in_memory() {
        let mut ledger = Ledger::open(Path::new("/nonexistent/models"));
        assert_eq!(ledger.first_served(7, 1_000), 1_000);
        assert_eq!(ledger.first_served(7, 9_000), 1_000);
        assert_eq!(ledger.get(8), None);
    }

    #[test]
    fn old_versions_leave_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = Ledger::open(dir.path());
        for v in 0..20 {
            ledger.first_served(v, v as i64);
        }
        let reopened = Ledger::open(dir.path());
        assert_eq!(reopened.get(0), None);
        assert_eq!(reopened.get(19), Some(19));
    }
}
