//! The watcher: polls the manifest, loads and checks a new model off the request path, swaps
//! it in, retires an aged one, and starts background retraining every `training_interval`.

use super::{Models, Stale, ledger, load, onnx, retrain};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Models {
    /// Checks the manifest and the serving model's age (blocking: reads files and may load a
    /// model; the watcher runs it on a blocking thread).
    pub fn poll(&self) {
        let dir = self.config.dir.clone();
        let text = std::fs::read_to_string(dir.join(contract::manifest::MANIFEST_FILE)).ok();
        let changed = {
            let mut status = self.status();
            let changed = text != status.seen;
            status.seen.clone_from(&text);
            changed
        };
        if changed {
            match text {
                Some(_) => self.load(&dir),
                None => {
                    if self.current.load().is_none() {
                        self.set_state(
                            Some(Stale::NoModel),
                            format!("no manifest in {}", dir.display()),
                        );
                    }
                }
            }
        }
        self.check_age(crate::unix_ms());
    }

    fn load(&self, dir: &std::path::Path) {
        let runtime = onnx::runtime(self.config.ort_library.as_deref());
        if let Err(e) = &runtime {
            tracing::warn!(error = %e, "ONNX Runtime unavailable; online statistics answer");
        }
        let started = Instant::now();
        match load::load(dir, runtime, self.sessions, self.config.memo_cells) {
            Ok(set) => {
                let version = set.manifest.version;
                let trained = set.manifest.trained_at.clone();
                self.current.store(Some(Arc::new(set)));
                self.drift.reset();
                self.consecutive_errors.store(0, Relaxed);
                self.counters.loads.fetch_add(1, Relaxed);
                {
                    let now = crate::unix_ms();
                    let mut status = self.status();
                    status.loaded_at_ms = Some(now);
                    status
                        .ledger
                        .get_or_insert_with(|| ledger::Ledger::open(dir))
                        .first_served(version, now);
                }
                tracing::info!(version, "model loaded");
                self.event(
                    "model-loaded",
                    format!(
                        "version {version} (trained {trained}) from {} checked and swapped in ({} ms)",
                        dir.display(),
                        started.elapsed().as_millis()
                    ),
                );
                self.set_state(None, format!("version {version} serving"));
            }
            Err(e) => {
                self.counters.rejections.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "model refused; the previous one (if any) keeps serving");
                self.status().last_rejection = Some((crate::unix_ms(), e.to_string()));
                let keeps = self.current.load().is_some();
                self.event(
                    "model-rejected",
                    format!(
                        "{}: {e}; {}",
                        dir.display(),
                        if keeps {
                            "the previous model keeps serving"
                        } else {
                            "online statistics answer"
                        }
                    ),
                );
                if !keeps {
                    self.set_state(Some(e.reason()), e.to_string());
                }
            }
        }
    }

    /// Retires the serving model when this server first served it longer than
    /// `models.max_age_hours` before `now_ms` ([`ledger`]), and lets it serve again when the
    /// limit was raised.
    fn check_age(&self, now_ms: i64) {
        let Some(set) = self.current.load_full() else {
            return;
        };
        let max = self.config.max_age_hours;
        let version = set.manifest.version;
        let since = self
            .status()
            .ledger
            .as_ref()
            .and_then(|l| l.get(version))
            .unwrap_or(i64::try_from(version).unwrap_or(0));
        let age_hours = ledger::age_hours(since, now_ms);
        let aged = max > 0.0 && age_hours > max;
        match self.stale() {
            None if aged => self.set_state(
                Some(Stale::Aged),
                format!(
                    "version {} was first served here {age_hours:.2} h ago, the limit is {max} h",
                    set.manifest.version
                ),
            ),
            Some(Stale::Aged) if !aged => {
                self.set_state(None, format!("version {} serving", set.manifest.version));
            }
            _ => {}
        }
    }

    /// Starts the watcher: polls the manifest every `reload_interval_ms`, and retrains every
    /// `training_interval` minutes when that is set: with `pg`, only while holding the training
    /// lock ([`retrain::training_lock`]), so that one instance of many trains at a time.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        training_interval_minutes: u64,
        log_dir: PathBuf,
        pg: Option<tokio_postgres::Config>,
    ) -> tokio::task::JoinHandle<()> {
        let models = self.clone();
        tokio::spawn(async move {
            let period = std::time::Duration::from_millis(models.config.reload_interval_ms);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let training = (training_interval_minutes > 0)
                .then(|| std::time::Duration::from_secs(training_interval_minutes * 60));
            let mut last_training = Instant::now();
            loop {
                tick.tick().await;
                let polled = models.clone();
                let _ = tokio::task::spawn_blocking(move || polled.poll()).await;
                if let Some(every) = training
                    && last_training.elapsed() >= every
                    && !models.retraining.load(Relaxed)
                {
                    last_training = Instant::now();
                    let (m, logs, pg) = (models.clone(), log_dir.clone(), pg.clone());
                    // In the background, bounded by training_timeout_secs; `retrain::run`
                    // refuses to start a second run beside an admin-triggered one.
                    drop(tokio::spawn(async move {
                        let lock = match &pg {
                            Some(pg) => match retrain::training_lock(pg).await {
                                Ok(Some(lock)) => Some(lock),
                                Ok(None) => {
                                    tracing::info!(
                                        "another instance is training; this one skips its turn"
                                    );
                                    return;
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, "no training lock (database away); training skipped");
                                    return;
                                }
                            },
                            None => None,
                        };
                        let _ =
                            tokio::task::spawn_blocking(move || retrain::run_if(&m, &logs, true))
                                .await;
                        drop(lock);
                    }));
                }
            }
        })
    }
}
