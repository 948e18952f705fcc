//! Replays the catalogue reads of captured request logs through two caches of the same size —
//! the server's `quick_cache` (S3-FIFO) and a plain LRU — and prints both hit ratios beside the
//! hit ratio the live server measured on the same trace.
//!
//! `cargo run --release -p benches --bin cache_replay -- <log dir> <capacity in entries>`
//!
//! The replay compares eviction policies only (no TTLs, no invalidation); the live figure
//! includes both, so it is a little lower than a policy replay of the same size.

use contract::RequestRecord;
use std::num::NonZeroUsize;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(capacity)) = (
        args.get(1),
        args.get(2).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: cache_replay <log dir> <capacity in entries>");
        return ExitCode::from(2);
    };
    let mut records: Vec<RequestRecord> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("cannot read {dir}: {err}");
            return ExitCode::FAILURE;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            match serde_json::from_str::<RequestRecord>(line) {
                Ok(r) => records.push(r),
                Err(err) => eprintln!("{}:{}: skipped: {err}", path.display(), n + 1),
            }
        }
    }
    records.sort_by_key(|r| r.ts_ms);
    let reads: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| {
            !r.shed
                && matches!(
                    r.route.as_str(),
                    "GET /api/products" | "GET /api/products/{id}" | "GET /api/search"
                )
        })
        .collect();
    let Some(capacity) = NonZeroUsize::new(capacity) else {
        eprintln!("capacity must be positive");
        return ExitCode::from(2);
    };
    let mut lru = lru::LruCache::<&str, ()>::new(capacity);
    let mut s3 = quick_cache::unsync::Cache::<&str, ()>::new(capacity.get());
    let (mut lru_hits, mut s3_hits) = (0_u64, 0_u64);
    for r in &reads {
        let key = r.path.as_str();
        if lru.get(key).is_some() {
            lru_hits += 1;
        } else {
            lru.put(key, ());
        }
        if s3.get(key).is_some() {
            s3_hits += 1;
        } else {
            s3.insert(key, ());
        }
    }
    let live_hits = reads.iter().filter(|r| r.cache == "hit").count();
    let distinct: std::collections::HashSet<&str> = reads.iter().map(|r| r.path.as_str()).collect();
    let ratio = |hits: usize| {
        if reads.is_empty() {
            0.0
        } else {
            hits as f64 / reads.len() as f64
        }
    };
    println!(
        "catalogue reads: {} ({} distinct keys), capacity {} entries",
        reads.len(),
        distinct.len(),
        capacity
    );
    println!(
        "live server (TTL + invalidation + S3-FIFO): {:.1}%",
        100.0 * ratio(live_hits)
    );
    println!(
        "replay, quick_cache S3-FIFO:                {:.1}%",
        100.0 * ratio(usize::try_from(s3_hits).unwrap_or(0))
    );
    println!(
        "replay, plain LRU:                          {:.1}%",
        100.0 * ratio(usize::try_from(lru_hits).unwrap_or(0))
    );
    ExitCode::SUCCESS
}
