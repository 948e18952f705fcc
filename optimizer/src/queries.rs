//! Query tracking: every statement a request runs is timed and collected for that request.
//!
//! The optimizer middleware opens a task-local collector around the handler; `db.rs` pushes
//! each statement into it. A task-local (not a global map) means no locking and no cross-talk
//! between concurrent requests; statements run outside a request (start-up, background tasks)
//! are simply not collected.

use std::cell::RefCell;
use std::time::Duration;

/// One executed statement.
#[derive(Debug, Clone)]
pub struct QueryExec {
    /// The SQL text as the code wrote it (placeholders, never values).
    pub statement: String,
    /// Prepare + execute time.
    pub duration: Duration,
    /// Rows returned or affected.
    pub rows: u64,
}

/// At most this many statements are kept per request (a runaway loop must not grow memory).
const MAX_PER_REQUEST: usize = 64;

tokio::task_local! {
    /// The current request's statements.
    pub static QUERIES: RefCell<Vec<QueryExec>>;
}

/// Records a statement for the current request, if a request is being tracked.
pub fn record(statement: &str, duration: Duration, rows: u64) {
    let _ = QUERIES.try_with(|queries| {
        let mut queries = queries.borrow_mut();
        if queries.len() < MAX_PER_REQUEST {
            queries.push(QueryExec {
                statement: statement.to_owned(),
                duration,
                rows,
            });
        }
    });
}

/// Collapses whitespace so the same statement always normalizes to the same text.
pub fn normalize(statement: &str) -> String {
    statement.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fingerprint of a normalized statement (16 hex digits).
pub fn fingerprint(normalized: &str) -> String {
    format!("{:016x}", contract::fnv1a64(normalized.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_does_not_change_the_fingerprint() {
        let a = normalize("SELECT *\n   FROM products  WHERE id = $1");
        let b = normalize("SELECT * FROM products WHERE id = $1");
        assert_eq!(a, b);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint("SELECT * FROM products WHERE id = $2")
        );
    }
}
