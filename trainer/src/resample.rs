//! Synthetic volume from a real capture: draws records at random (with replacement) and lays
//! them out at the capture's average rate, so a 1,000,000-row training run can be measured
//! without an hour of load testing. Only the timestamps change; every record is a real one.

use crate::logs::{find_files, for_each_record};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `rows` records drawn from the logs at `spec` to `out`, or with `files` over 1 to that
/// many files `requests-NNNN.ndjson` in the folder `out` (as a server's rotated logs: the
/// trainer reads files in parallel); returns how many were written.
///
/// # Errors
/// Unreadable or invalid logs (named by file and line), or an I/O error writing `out`.
pub fn resample(
    spec: &str,
    rows: usize,
    out: &Path,
    files: usize,
    seed: u64,
) -> anyhow::Result<usize> {
    let mut records = Vec::new();
    for path in find_files(spec)? {
        for_each_record(&path, |_, record| {
            records.push(record);
            Ok(())
        })?;
    }
    anyhow::ensure!(!records.is_empty(), "no records in {spec}");
    records.sort_by_key(|r| r.ts_ms);
    let first = records[0].ts_ms;
    let span = (records[records.len() - 1].ts_ms - first).max(1);
    let step_ms = span as f64 / records.len() as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let files = files.max(1);
    if files > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let per_file = rows.div_ceil(files);
    for f in 0..files {
        let path = if files > 1 {
            out.join(format!("requests-{f:04}.ndjson"))
        } else {
            out.to_owned()
        };
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        for k in f * per_file..((f + 1) * per_file).min(rows) {
            let mut record = records[rng.random_range(0..records.len())].clone();
            let offset = (k as f64 * step_ms) as i64;
            record.ts_ms = first + offset;
            serde_json::to_writer(&mut writer, &record)?;
            writer.write_all(b"\n")?;
        }
        writer
            .flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows)
}
