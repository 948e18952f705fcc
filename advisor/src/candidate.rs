//! Candidate indexes for one table access: single columns and pairs, equality columns first
//! (an index seeks on equalities, then can still range-scan or deliver order on the next
//! column), minus whatever an existing index already covers by prefix.

use crate::catalog::Table;
use crate::plan::Access;

/// A B-tree index the advisor might propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Key columns, in order (catalog names).
    pub columns: Vec<String>,
    /// The name it would get.
    pub name: String,
    /// `CREATE INDEX CONCURRENTLY ...` as an operator would run it.
    pub create_sql: String,
    /// `DROP INDEX CONCURRENTLY IF EXISTS ...`, to undo it.
    pub drop_sql: String,
    /// The same index as HypoPG takes it (no name, no `CONCURRENTLY`).
    pub hypothetical_sql: String,
}

/// Why an access produced no candidate: every useful column set is already indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    /// The existing index that serves it.
    pub index: String,
}

/// Candidates for `access` on `table`, at most `max`, most specific ideas first. When every
/// column set was dropped because an index covers it, says which index.
pub fn candidates(access: &Access, table: &Table, max: usize) -> Result<Vec<Candidate>, Covered> {
    // Only names the catalog knows; a name read from the plan that is not a column is dropped.
    let known = |cols: &[String]| -> Vec<String> {
        cols.iter()
            .filter(|c| table.column(c).is_some())
            .cloned()
            .collect()
    };
    let equality = known(&access.equality);
    let range = known(&access.range);
    let mut order = known(&access.order);
    // No sort in the plan because an index delivers the order: that index's leading key
    // columns are the order the statement asks for.
    if order.is_empty()
        && let Some(walked) = &access.order_index
        && let Some(index) = table.indexes.iter().find(|i| &i.name == walked)
    {
        order = index.keys.iter().map_while(Clone::clone).collect();
    }
    let mut sets: Vec<Vec<String>> = Vec::new();
    let mut add = |set: Vec<String>| {
        let distinct = set.len() < 2 || set[0] != set[1];
        if distinct && !sets.contains(&set) {
            sets.push(set);
        }
    };
    for e in &equality {
        add(vec![e.clone()]);
    }
    for (i, a) in equality.iter().enumerate() {
        for b in equality.iter().skip(i + 1) {
            add(vec![a.clone(), b.clone()]);
        }
        for r in &range {
            add(vec![a.clone(), r.clone()]);
        }
        if let Some(o) = order.first() {
            add(vec![a.clone(), o.clone()]);
        }
    }
    for r in &range {
        add(vec![r.clone()]);
    }
    if let Some(o) = order.first() {
        add(vec![o.clone()]);
        if let (Some(r), true) = (range.first(), equality.is_empty()) {
            add(vec![r.clone(), o.clone()]);
        }
        if let Some(o2) = order.get(1) {
            add(vec![o.clone(), o2.clone()]);
        }
    }
    let mut covered_by = None;
    let mut out = Vec::new();
    for set in sets {
        if let Some(index) = table.covering_index(&set) {
            covered_by.get_or_insert_with(|| index.name.clone());
            continue;
        }
        if out.len() < max {
            out.push(build(table, set));
        }
    }
    match (out.is_empty(), covered_by) {
        (true, Some(index)) => Err(Covered { index }),
        _ => Ok(out),
    }
}

fn build(table: &Table, columns: Vec<String>) -> Candidate {
    let quoted: Vec<&str> = columns
        .iter()
        .filter_map(|c| table.column(c).map(|c| c.quoted.as_str()))
        .collect();
    let list = quoted.join(", ");
    let name = index_name(&table.name, &columns);
    Candidate {
        create_sql: format!(
            "CREATE INDEX CONCURRENTLY {name} ON {} ({list})",
            table.quoted
        ),
        drop_sql: format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}.{name}",
            table.quoted_schema
        ),
        hypothetical_sql: format!("CREATE INDEX ON {} ({list})", table.quoted),
        name,
        columns,
    }
}

/// `idx_<table>_<columns>`, reduced to lowercase letters, digits and underscores (so it never
/// needs quoting and never is a keyword: it starts with `idx_`), within PostgreSQL's 63 bytes.
pub fn index_name(table: &str, columns: &[String]) -> String {
    let mut raw = format!("idx_{table}");
    for c in columns {
        raw.push('_');
        raw.push_str(c);
    }
    let mut name = String::with_capacity(raw.len());
    for ch in raw.chars() {
        let ch = if ch.is_ascii_alphanumeric() {
            ch.to_ascii_lowercase()
        } else {
            '_'
        };
        if !(ch == '_' && name.ends_with('_')) {
            name.push(ch);
        }
    }
    if name.len() > 63 || name != raw {
        // Shortened or changed names could collide; a hash of the real names keeps them apart.
        let mut hash: u32 = 0x811c_9dc5;
        for b in raw.bytes() {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        name.truncate(54);
        name = format!("{}_{hash:08x}", name.trim_end_matches('_'));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Index};

    fn table(indexes: Vec<Index>) -> Table {
        let col = |n: &str| Column {
            name: n.into(),
            quoted: n.into(),
        };
        Table {
            schema: "public".into(),
            name: "products".into(),
            quoted_schema: "public".into(),
            quoted: "public.products".into(),
            columns: ["id", "category", "popularity", "price", "active"]
                .map(col)
                .to_vec(),
            indexes,
        }
    }

    fn access(equality: &[&str], order: &[&str]) -> Access {
        Access {
            schema: "public".into(),
            table: "products".into(),
            alias: "p".into(),
            equality: equality.iter().map(|s| (*s).into()).collect(),
            range: vec![],
            order: order.iter().map(|s| (*s).into()).collect(),
            order_index: None,
        }
    }

    #[test]
    fn equality_column_comes_first_then_pairs_with_the_sort_key() {
        let popular = Index {
            name: "products_popular_idx".into(),
            keys: vec![Some("popularity".into()), Some("id".into())],
        };
        let found = candidates(
            &access(&["category"], &["popularity", "id"]),
            &table(vec![popular]),
            8,
        )
        .expect("candidates");
        let sets: Vec<Vec<String>> = found.iter().map(|c| c.columns.clone()).collect();
        assert_eq!(sets, [vec!["category"], vec!["category", "popularity"]]);
        assert_eq!(
            found[0].create_sql,
            "CREATE INDEX CONCURRENTLY idx_products_category ON public.products (category)"
        );
        assert_eq!(
            found[0].hypothetical_sql,
            "CREATE INDEX ON public.products (category)"
        );
    }

    #[test]
    fn the_order_of_an_index_walked_for_it_is_paired_with_the_filter() {
        let popular = Index {
            name: "products_popular_idx".into(),
            keys: vec![Some("popularity".into()), Some("id".into())],
        };
        let walked = Access {
            order_index: Some("products_popular_idx".into()),
            ..access(&["category"], &[])
        };
        let found = candidates(&walked, &table(vec![popular]), 8).expect("candidates");
        let sets: Vec<Vec<String>> = found.iter().map(|c| c.columns.clone()).collect();
        assert_eq!(sets, [vec!["category"], vec!["category", "popularity"]]);
    }

    #[test]
    fn an_existing_index_on_the_column_means_no_candidate() {
        let category = Index {
            name: "products_category_idx".into(),
            keys: vec![Some("category".into()), Some("popularity".into())],
        };
        let found = candidates(&access(&["category"], &[]), &table(vec![category]), 8);
        let Err(covered) = found else {
            panic!("expected covered, got {found:?}")
        };
        assert_eq!(covered.index, "products_category_idx");
    }

    #[test]
    fn names_not_in_the_catalog_never_reach_sql() {
        let found = candidates(
            &access(&["category\"; DROP TABLE x; --"], &[]),
            &table(vec![]),
            8,
        )
        .expect("no error");
        assert!(found.is_empty());
    }

    #[test]
    fn long_or_odd_names_are_shortened_and_kept_apart() {
        let long = vec!["a".repeat(40), "b".repeat(40)];
        let name = index_name("t", &long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, index_name("t", &["a".repeat(40), "c".repeat(40)]));
        assert!(
            index_name("Odd Table", &["X".into()])
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_eq!(
            index_name("products", &["category".into()]),
            "idx_products_category"
        );
    }
}
