//! Explaining a statement with the parameters it really ran with, and HypoPG's hypothetical
//! indexes.
//!
//! Parameters travel as captured wire-format bytes through the extended protocol, exactly as
//! the application sent them: nothing is ever spliced into the SQL text. The statement text
//! itself is the application's own SQL (placeholders, never values). Without captured
//! parameters (offline logs), a statement is explained with PostgreSQL's generic plan instead,
//! the plan it would use for parameter values it knows nothing about.

use crate::{Error, Param};
use bytes::BytesMut;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Captured bytes sent back as they came: accepts whatever type the statement declares, since
/// the bytes were encoded for that very type.
#[derive(Debug)]
struct Raw<'a>(Option<&'a [u8]>);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// How a statement's parameters are known to the planner.
#[derive(Debug, Clone, Copy)]
pub enum Planning<'a> {
    /// Values captured from a real execution.
    Captured(&'a [Param]),
    /// None: the generic plan.
    Generic,
}

/// `EXPLAIN (FORMAT JSON, VERBOSE)` of `statement` (nothing is executed).
///
/// # Errors
/// The statement does not plan, or the parameters do not match its placeholders.
pub async fn explain(
    client: &Client,
    statement: &str,
    planning: Planning<'_>,
) -> Result<Value, Error> {
    match planning {
        Planning::Captured(params) => explain_captured(client, statement, params).await,
        Planning::Generic => explain_generic(client, statement).await,
    }
}

/// The generic plan (PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`): the statement is prepared
/// by name and explained as `EXECUTE` with every parameter NULL under
/// `plan_cache_mode = force_generic_plan`, so the values are never looked at. Prepared afresh
/// each time, since a cached generic plan would not notice a new hypothetical index.
async fn explain_generic(client: &Client, statement: &str) -> Result<Value, Error> {
    // The extended protocol refuses several statements in one text: once this succeeds, the
    // text is one statement and can go into PREPARE without smuggling in another.
    let count = client.prepare(statement).await?.params().len();
    client
        .batch_execute(&format!("PREPARE advisor_generic AS {statement}"))
        .await?;
    let explained = async {
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await?;
        let sql = if count == 0 {
            "EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE advisor_generic".to_owned()
        } else {
            format!(
                "EXPLAIN (FORMAT JSON, VERBOSE) EXECUTE advisor_generic({})",
                vec!["NULL"; count].join(", ")
            )
        };
        let row = client.query_one(&sql, &[]).await?;
        Ok::<_, Error>(row.try_get::<_, Value>(0)?)
    }
    .await;
    let cleanup = client
        .batch_execute("DEALLOCATE advisor_generic; RESET plan_cache_mode")
        .await;
    let explained = explained?;
    cleanup?;
    Ok(explained)
}

async fn explain_captured(
    client: &Client,
    statement: &str,
    params: &[Param],
) -> Result<Value, Error> {
    let sql = format!("EXPLAIN (FORMAT JSON, VERBOSE) {statement}");
    let types: Option<Vec<Type>> = params.iter().map(|p| Type::from_oid(p.type_oid)).collect();
    // With the captured types the bytes are read exactly as they were written; a type the
    // driver does not know (an enum) is left to the server, which infers the same type from
    // the same statement.
    let prepared = match types {
        Some(types) => client.prepare_typed(&sql, &types).await?,
        None => client.prepare(&sql).await?,
    };
    if prepared.params().len() != params.len() {
        return Err(Error::Params {
            expected: prepared.params().len(),
            given: params.len(),
        });
    }
    let raw: Vec<Raw<'_>> = params.iter().map(|p| Raw(p.value.as_deref())).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = raw.iter().map(|r| r as &(dyn ToSql + Sync)).collect();
    let row = client.query_one(&prepared, &refs).await?;
    Ok(row.try_get::<_, Value>(0)?)
}

/// Whether HypoPG can be used on this connection's database; with `create`, tries to create
/// the extension first. `Err` carries why not, in words.
pub async fn hypopg(client: &Client, create: bool) -> Result<(), String> {
    let installed = client
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read pg_extension: {e}"))?
        .get::<_, i64>(0)
        > 0;
    if !installed {
        if !create {
            return Err("the hypopg extension is not installed in this database".into());
        }
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS hypopg")
            .await
            .map_err(|e| format!("CREATE EXTENSION hypopg failed: {}", db_message(&e)))?;
    }
    // Clears leftovers of an earlier, interrupted pass on this session.
    client
        .batch_execute("SELECT hypopg_reset()")
        .await
        .map_err(|e| format!("hypopg_reset failed: {}", db_message(&e)))?;
    Ok(())
}

/// The planner's total cost for `statement`, summed over `plannings`, if the hypothetical index
/// `create_sql` existed.
///
/// # Errors
/// HypoPG refused the index, or the statement no longer plans.
pub async fn cost_with(
    client: &Client,
    create_sql: &str,
    statement: &str,
    plannings: &[Planning<'_>],
) -> Result<f64, Error> {
    client
        .execute(
            "SELECT indexrelid FROM hypopg_create_index($1)",
            &[&create_sql],
        )
        .await?;
    let total = total_cost(client, statement, plannings).await;
    // Always reset, even when an explain failed: the next candidate must be judged alone.
    let reset = client.batch_execute("SELECT hypopg_reset()").await;
    let total = total?;
    reset?;
    Ok(total)
}

/// The planner's total cost for `statement`, summed over `plannings`.
///
/// # Errors
/// The statement does not plan with one of them.
pub async fn total_cost(
    client: &Client,
    statement: &str,
    plannings: &[Planning<'_>],
) -> Result<f64, Error> {
    let mut total = 0.0;
    for planning in plannings {
        let plan = explain(client, statement, *planning).await?;
        total += crate::plan::total_cost(&plan)
            .ok_or_else(|| Error::Plan("no total cost in the plan".into()))?;
    }
    Ok(total)
}

/// A database error's own message (the driver's `Display` says only "db error").
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}
