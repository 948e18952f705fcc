//! `advise` against real PostgreSQL (`DATABASE_URL`, a role that may create databases; HypoPG
//! installed on the server): a fresh database per test with a table of 50,000 rows in 200
//! kinds, and a statement filtering on the unindexed kind.

use advisor::{Options, Param, SlowQuery, advise};
use tokio_postgres::{Client, NoTls};

const STATEMENT: &str = "SELECT id, n FROM items WHERE kind = $1";

/// A fresh database holding `items`; dropped again when the returned guard goes.
struct Scratch {
    client: Client,
    base: String,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&base, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("DATABASE_URL must name a running PostgreSQL (run tests with `make test`)");
    tokio::spawn(connection);
    client
}

async fn scratch(with_hypopg: bool) -> Scratch {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("advisor_test_{}_{nanos}", std::process::id());
    connect(&base)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (prefix, query) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(b, q)| (b, Some(q)));
    let prefix = prefix.rsplit_once('/').map_or(prefix, |(p, _)| p);
    let url = match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    };
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, kind text NOT NULL, n int NOT NULL);
             INSERT INTO items SELECT g, 'k' || (g % 200), g % 1000 FROM generate_series(1, 50000) g;
             ANALYZE items;",
        )
        .await
        .expect("items");
    if with_hypopg {
        client
            .batch_execute("CREATE EXTENSION hypopg")
            .await
            .expect("hypopg is installed (postgresql-15-hypopg)");
    }
    Scratch { client, base, name }
}

fn slow(param_sets: Vec<Vec<Param>>) -> SlowQuery {
    SlowQuery {
        fingerprint: "f".into(),
        statement: STATEMENT.into(),
        calls: 100,
        total_ms: 1000.0,
        p95_ms: 150.0,
        param_sets,
    }
}

fn kind(value: &str) -> Vec<Vec<Param>> {
    vec![vec![Param {
        type_oid: tokio_postgres::types::Type::TEXT.oid(),
        value: Some(value.as_bytes().to_vec()),
    }]]
}

fn options() -> Options {
    Options {
        create_extension: false,
        ..Options::default()
    }
}

#[tokio::test]
async fn captured_parameters_lead_to_a_verified_index_on_the_filtered_column() {
    let db = scratch(true).await;
    let report = advise(&db.client, &[slow(kind("k7"))], &options()).await;
    assert!(report.hypopg_available);
    assert_eq!(report.suggestions.len(), 1, "{report:?}");
    let s = &report.suggestions[0];
    assert_eq!(s.columns, ["kind"]);
    assert!(s.verified && !s.generic_plan);
    assert!(s.cost_reduction.is_some_and(|r| r >= 0.5), "{s:?}");
    assert_eq!(
        s.create_sql,
        "CREATE INDEX CONCURRENTLY idx_items_kind ON public.items (kind)"
    );
    // Only planned: nothing was built.
    let built: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'items'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(built, 1, "only the primary key");
}

#[tokio::test]
async fn without_captured_parameters_the_generic_plan_is_used_and_said() {
    let db = scratch(true).await;
    let report = advise(&db.client, &[slow(vec![])], &options()).await;
    assert_eq!(report.suggestions.len(), 1, "{report:?}");
    assert!(report.suggestions[0].generic_plan);
    assert!(report.suggestions[0].verified);
}

#[tokio::test]
async fn without_hypopg_the_report_says_so_and_suggestions_are_unverified() {
    let db = scratch(false).await;
    let report = advise(&db.client, &[slow(kind("k7"))], &options()).await;
    assert!(!report.hypopg_available);
    assert!(
        report
            .hypopg_note
            .as_deref()
            .is_some_and(|n| n.contains("hypopg"))
    );
    assert_eq!(report.suggestions.len(), 1, "{report:?}");
    assert!(!report.suggestions[0].verified);
    assert_eq!(report.suggestions[0].cost_after, None);
}

#[tokio::test]
async fn statements_below_the_minimum_calls_are_not_advised_on() {
    let db = scratch(true).await;
    let few = SlowQuery {
        calls: options().min_calls - 1,
        ..slow(kind("k7"))
    };
    let report = advise(&db.client, &[few], &options()).await;
    assert!(report.suggestions.is_empty());
    assert!(report.skipped.is_empty(), "not even considered");
}

#[tokio::test]
async fn parameters_are_never_spliced_into_sql() {
    let db = scratch(true).await;
    // A value that would end the statement if it were pasted into the text.
    let hostile = "k7'; DROP TABLE items; --";
    let report = advise(&db.client, &[slow(kind(hostile))], &options()).await;
    // Planned with the value as one text parameter: pasted into the SQL it would not even parse
    // as a single statement, and there would be no advice.
    assert_eq!(report.suggestions.len(), 1, "{report:?}");
    let still_there: i64 = db
        .client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("items still exists")
        .get(0);
    assert_eq!(still_there, 50_000);
}
