//! `trainer report`: what the logs say, per route and per statement, slowest first.

use crate::logs::Logs;
use polars::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;

/// One route's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct RouteLine {
    /// Route label.
    pub route: String,
    /// Requests, shed ones included.
    pub requests: u64,
    /// Latency quantiles of served (not shed) requests, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Share of answers with a 5xx status, shed ones excluded.
    pub error_rate: f64,
    /// Share shed by admission.
    pub shed_rate: f64,
    /// Total time served, ms.
    pub total_ms: f64,
}

/// One statement fingerprint's executions.
#[derive(Debug, Clone, Serialize)]
pub struct QueryLine {
    /// Fingerprint.
    pub fingerprint: String,
    /// Normalized statement text, if a log file carried it.
    pub statement: Option<String>,
    /// Executions.
    pub calls: u64,
    /// Total time, ms.
    pub total_ms: f64,
    /// Mean time, ms.
    pub mean_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Mean rows returned or affected.
    pub mean_rows: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Records read.
    pub records: u64,
    /// First and last request time (Unix ms).
    pub window_ms: [i64; 2],
    /// Routes, highest p95 first.
    pub routes: Vec<RouteLine>,
    /// Statements, highest p95 first.
    pub queries: Vec<QueryLine>,
    /// Index advice for the slow statements, when a database was given.
    pub index_advice: Option<advisor::Report>,
}

/// Runs the index advisor on the report's slow statements against the database at `url`.
/// Offline logs carry no parameter values, so the plans are generic ones (`genericPlan`).
///
/// # Errors
/// The database cannot be reached.
pub fn advise(
    report: &Report,
    url: &str,
    options: &advisor::Options,
) -> anyhow::Result<advisor::Report> {
    use anyhow::Context as _;
    let slow: Vec<advisor::SlowQuery> = report
        .queries
        .iter()
        .filter(|q| options.is_slow(q.p95_ms, q.calls))
        .filter_map(|q| {
            Some(advisor::SlowQuery {
                fingerprint: q.fingerprint.clone(),
                statement: q.statement.clone()?,
                calls: q.calls,
                total_ms: q.total_ms,
                p95_ms: q.p95_ms,
                param_sets: Vec::new(),
            })
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to the database for index advice")?;
        let connection = tokio::spawn(connection);
        let advice = advisor::advise(&client, &slow, options).await;
        drop(client);
        let _ = connection.await;
        Ok(advice)
    })
}

fn f64s(df: &DataFrame, name: &str) -> PolarsResult<Vec<f64>> {
    let column = df.column(name)?.cast(&DataType::Float64)?;
    Ok(column.f64()?.iter().map(|v| v.unwrap_or(0.0)).collect())
}

fn u64s(df: &DataFrame, name: &str) -> PolarsResult<Vec<u64>> {
    let column = df.column(name)?.cast(&DataType::UInt64)?;
    Ok(column.u64()?.iter().map(|v| v.unwrap_or(0)).collect())
}

fn strings(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|v| v.unwrap_or_default().to_owned())
        .collect())
}

fn q(name: &str, quantile: f64) -> Expr {
    col(name).quantile(lit(quantile), QuantileMethod::Linear)
}

/// Builds the report from loaded logs.
///
/// # Errors
/// Only if polars fails on frames this crate built (a bug, not bad input).
pub fn build(logs: &Logs) -> PolarsResult<Report> {
    let served = col("shed").not();
    let routes = logs
        .requests
        .clone()
        .lazy()
        .group_by([col("route")])
        .agg([
            len().alias("requests"),
            q("latency_ms", 0.5).alias("p50_ms"),
            q("latency_ms", 0.95).alias("p95_ms"),
            q("latency_ms", 0.99).alias("p99_ms"),
            col("status")
                .gt_eq(lit(500))
                .and(served.clone())
                .cast(DataType::Float64)
                .sum()
                .alias("errors"),
            served.clone().cast(DataType::Float64).sum().alias("served"),
            col("shed")
                .cast(DataType::Float64)
                .mean()
                .alias("shed_rate"),
            col("latency_ms")
                .cast(DataType::Float64)
                .sum()
                .alias("total_ms"),
        ])
        .sort(
            ["p95_ms"],
            SortMultipleOptions::default().with_order_descending(true),
        )
        .collect()?;
    let queries = logs
        .queries
        .clone()
        .lazy()
        .group_by([col("fingerprint")])
        .agg([
            len().alias("calls"),
            col("duration_ms")
                .cast(DataType::Float64)
                .sum()
                .alias("total_ms"),
            col("duration_ms")
                .cast(DataType::Float64)
                .mean()
                .alias("mean_ms"),
            q("duration_ms", 0.95).alias("p95_ms"),
            col("rows")
                .cast(DataType::Float64)
                .mean()
                .alias("mean_rows"),
        ])
        .sort(
            ["p95_ms"],
            SortMultipleOptions::default().with_order_descending(true),
        )
        .collect()?;

    let names = strings(&routes, "route")?;
    let requests = u64s(&routes, "requests")?;
    let (p50, p95, p99) = (
        f64s(&routes, "p50_ms")?,
        f64s(&routes, "p95_ms")?,
        f64s(&routes, "p99_ms")?,
    );
    let (errors, served_n) = (f64s(&routes, "errors")?, f64s(&routes, "served")?);
    let (shed, total) = (f64s(&routes, "shed_rate")?, f64s(&routes, "total_ms")?);
    let route_lines = (0..names.len())
        .map(|i| RouteLine {
            route: names[i].clone(),
            requests: requests[i],
            p50_ms: p50[i],
            p95_ms: p95[i],
            p99_ms: p99[i],
            error_rate: if served_n[i] > 0.0 {
                errors[i] / served_n[i]
            } else {
                0.0
            },
            shed_rate: shed[i],
            total_ms: total[i],
        })
        .collect();

    let fingerprints = strings(&queries, "fingerprint")?;
    let calls = u64s(&queries, "calls")?;
    let (q_total, q_mean) = (f64s(&queries, "total_ms")?, f64s(&queries, "mean_ms")?);
    let (q_p95, q_rows) = (f64s(&queries, "p95_ms")?, f64s(&queries, "mean_rows")?);
    let query_lines = (0..fingerprints.len())
        .map(|i| QueryLine {
            statement: logs.statements.get(&fingerprints[i]).cloned(),
            fingerprint: fingerprints[i].clone(),
            calls: calls[i],
            total_ms: q_total[i],
            mean_ms: q_mean[i],
            p95_ms: q_p95[i],
            mean_rows: q_rows[i],
        })
        .collect();

    let ts = logs.requests.column("ts_ms")?.i64()?;
    Ok(Report {
        files: logs.files.len(),
        records: logs.read,
        window_ms: [ts.min().unwrap_or(0), ts.max().unwrap_or(0)],
        routes: route_lines,
        queries: query_lines,
        index_advice: None,
    })
}

/// The report as text tables.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let seconds = (report.window_ms[1] - report.window_ms[0]) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "{} records from {} files over {seconds:.1} s\n",
        report.records, report.files
    );
    let _ = writeln!(
        out,
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "route (slowest p95 first)", "requests", "p50 ms", "p95 ms", "p99 ms", "5xx", "shed"
    );
    for r in &report.routes {
        let _ = writeln!(
            out,
            "{:<32} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>6.2}% {:>6.2}%",
            r.route,
            r.requests,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            100.0 * r.error_rate,
            100.0 * r.shed_rate
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>8} {:>11} {:>9} {:>9} {:>9}  statement (slowest p95 first)",
        "fingerprint", "calls", "total ms", "mean ms", "p95 ms", "rows"
    );
    for q in &report.queries {
        let mut text = q.statement.clone().unwrap_or_else(|| "?".to_owned());
        text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.len() > 100 {
            let cut = (0..=100)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>11.1} {:>9.3} {:>9.3} {:>9.1}  {text}",
            q.fingerprint, q.calls, q.total_ms, q.mean_ms, q.p95_ms, q.mean_rows
        );
    }
    if let Some(advice) = &report.index_advice {
        let _ = writeln!(
            out,
            "\nindex advice (generic plans: offline logs carry no parameter values)"
        );
        if let Some(note) = &advice.hypopg_note {
            let _ = writeln!(out, "  HypoPG unavailable, suggestions unverified: {note}");
        }
        if advice.suggestions.is_empty() {
            let _ = writeln!(out, "  no suggestion");
        }
        for s in &advice.suggestions {
            let reduction = s.cost_reduction.map_or_else(
                || "unverified".to_owned(),
                |r| format!("planner cost -{:.1}%", 100.0 * r),
            );
            let _ = writeln!(
                out,
                "  {} ({reduction}, statement {})",
                s.create_sql, s.fingerprint
            );
        }
        for s in &advice.skipped {
            let _ = writeln!(out, "  skipped {}: {}", s.fingerprint, s.reason);
        }
    }
    out
}
