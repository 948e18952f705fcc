//! Reading `EXPLAIN (FORMAT JSON, VERBOSE)` output: which table columns a plan filters or sorts
//! on after reading rows it could have found through an index.
//!
//! Only the plan's own text is read here (filter and sort-key expressions as PostgreSQL deparses
//! them); nothing is trusted as an identifier until [`crate::catalog`] has matched it against the
//! table's real columns.

use serde_json::Value;

/// How a plan reaches one table (one alias) and what it does with the rows afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Schema, as the verbose plan names it (empty when the plan does not say).
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The alias the statement used (the table name when it used none).
    pub alias: String,
    /// Columns compared with `=` (or `= ANY`) in a scan filter, in order of appearance.
    pub equality: Vec<String>,
    /// Columns compared with `<`, `<=`, `>`, `>=` in a scan filter.
    pub range: Vec<String>,
    /// Leading sort-key columns of a sort above the scan, all on this table.
    pub order: Vec<String>,
    /// The index a filtered scan walks without any index condition: it is walked for its order
    /// (`ORDER BY ... LIMIT`), so its key columns are the order the statement wants, although
    /// the plan shows no sort.
    pub order_index: Option<String>,
}

/// The estimated total cost of the top plan node.
pub fn total_cost(explain: &Value) -> Option<f64> {
    root(explain)?.get("Total Cost")?.as_f64()
}

/// Every table access in the plan whose filter or sort an index could serve.
pub fn accesses(explain: &Value) -> Vec<Access> {
    let mut out = Vec::new();
    if let Some(node) = root(explain) {
        walk(node, &mut out);
    }
    out.retain(|a| !(a.equality.is_empty() && a.range.is_empty() && a.order.is_empty()));
    out
}

/// The root plan node: the JSON format wraps it as `[{"Plan": {...}}]`.
fn root(explain: &Value) -> Option<&Value> {
    explain.get(0)?.get("Plan")
}

/// A scanned relation seen below a node.
#[derive(Debug, Clone)]
struct Relation {
    alias: String,
    schema: String,
    table: String,
}

fn access_for<'a>(out: &'a mut Vec<Access>, rel: &Relation) -> &'a mut Access {
    let pos = out
        .iter()
        .position(|a| a.alias == rel.alias && a.table == rel.table && a.schema == rel.schema);
    let pos = pos.unwrap_or_else(|| {
        out.push(Access {
            schema: rel.schema.clone(),
            table: rel.table.clone(),
            alias: rel.alias.clone(),
            ..Access::default()
        });
        out.len() - 1
    });
    &mut out[pos]
}

fn push_unique(list: &mut Vec<String>, column: String) {
    if !list.contains(&column) {
        list.push(column);
    }
}

/// Walks the plan bottom-up; returns the relations scanned in this subtree, so that a sort can
/// tell which table its keys belong to.
fn walk(node: &Value, out: &mut Vec<Access>) -> Vec<Relation> {
    let mut relations = Vec::new();
    if let Some(children) = node.get("Plans").and_then(Value::as_array) {
        for child in children {
            relations.extend(walk(child, out));
        }
    }
    if let Some(table) = node.get("Relation Name").and_then(Value::as_str) {
        let rel = Relation {
            alias: node
                .get("Alias")
                .and_then(Value::as_str)
                .unwrap_or(table)
                .to_owned(),
            schema: node
                .get("Schema")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            table: table.to_owned(),
        };
        // A filter (not an index condition) means rows were read and then thrown away: the
        // columns it compares are what a better index would seek on.
        if let Some(filter) = node.get("Filter").and_then(Value::as_str) {
            let (equality, range) = filter_columns(filter, &rel.alias);
            if !equality.is_empty() || !range.is_empty() {
                let walked_for_order = matches!(
                    node.get("Node Type").and_then(Value::as_str),
                    Some("Index Scan" | "Index Only Scan")
                ) && node.get("Index Cond").is_none();
                let access = access_for(out, &rel);
                for c in equality {
                    push_unique(&mut access.equality, c);
                }
                for c in range {
                    push_unique(&mut access.range, c);
                }
                if walked_for_order {
                    access.order_index = node
                        .get("Index Name")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
            }
        }
        relations.push(rel);
    }
    let kind = node.get("Node Type").and_then(Value::as_str);
    if matches!(kind, Some("Sort" | "Incremental Sort"))
        && let Some(keys) = node.get("Sort Key").and_then(Value::as_array)
    {
        let mut on: Option<Relation> = None;
        let mut columns = Vec::new();
        // Only the leading keys that are plain columns of one table: an index can deliver
        // that prefix of the order, nothing after a key it cannot.
        for key in keys.iter().filter_map(Value::as_str) {
            let Some((qualifier, column)) = sort_key_column(key) else {
                break;
            };
            let rel = match qualifier {
                Some(q) => relations.iter().find(|r| r.alias == q),
                None if relations.len() == 1 => relations.first(),
                None => None,
            };
            let Some(rel) = rel else { break };
            match &on {
                Some(first) if first.alias != rel.alias => break,
                Some(_) => {}
                None => on = Some(rel.clone()),
            }
            columns.push(column);
        }
        if let Some(rel) = on {
            let access = access_for(out, &rel);
            if access.order.is_empty() {
                access.order = columns;
            }
        }
    }
    relations
}

/// A lexical token of a deparsed expression.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A possibly qualified name; `quoted` when any part was double-quoted.
    Name {
        parts: Vec<String>,
        quoted: bool,
    },
    /// A literal or parameter: `'text'`, `42`, `$1`.
    Lit,
    Open,
    Close,
    Cast,
    Op(String),
    Other,
}

/// Words that are never column names when they appear unquoted in a deparsed expression.
const KEYWORDS: [&str; 17] = [
    "and", "or", "not", "is", "null", "true", "false", "any", "all", "some", "array", "case",
    "when", "then", "else", "end", "distinct",
];

fn is_keyword(parts: &[String], quoted: bool) -> bool {
    !quoted && parts.len() == 1 && KEYWORDS.iter().any(|k| parts[0].eq_ignore_ascii_case(k))
}

fn tokenize(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            // A string literal; '' is an escaped quote.
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Lit);
        } else if c == '"' || c.is_alphabetic() || c == '_' {
            let mut parts = Vec::new();
            let mut quoted = false;
            loop {
                let mut part = String::new();
                if chars.get(i) == Some(&'"') {
                    quoted = true;
                    i += 1;
                    while i < chars.len() {
                        if chars[i] == '"' {
                            if chars.get(i + 1) == Some(&'"') {
                                part.push('"');
                                i += 2;
                                continue;
                            }
                            i += 1;
                            break;
                        }
                        part.push(chars[i]);
                        i += 1;
                    }
                } else {
                    while i < chars.len()
                        && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                    {
                        part.push(chars[i]);
                        i += 1;
                    }
                }
                parts.push(part);
                let next_is_name = chars
                    .get(i + 1)
                    .is_some_and(|n| *n == '"' || n.is_alphabetic() || *n == '_');
                if chars.get(i) == Some(&'.') && next_is_name {
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Tok::Name { parts, quoted });
        } else if c.is_ascii_digit() || c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Lit);
        } else if c == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Tok::Cast);
            i += 2;
        } else if "<>=~!@#%^&|`?+-*/".contains(c) {
            let mut op = String::new();
            while i < chars.len() && "<>=~!@#%^&|`?+-*/".contains(chars[i]) {
                op.push(chars[i]);
                i += 1;
            }
            out.push(Tok::Op(op));
        } else {
            out.push(Tok::Other);
            i += 1;
        }
    }
    out
}

/// Removes `::type` casts (type names may be several words, carry `[]` or a type modifier), so
/// that `(category)::text = 'x'::text` reads as `(category) = 'x'`.
fn strip_casts(tokens: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] != Tok::Cast {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += 1;
        while let Some(Tok::Name { parts, quoted }) = tokens.get(i) {
            if is_keyword(parts, *quoted) {
                break;
            }
            i += 1;
        }
        // `character varying(100)`: a parenthesized list of literals right after the type.
        if tokens.get(i) == Some(&Tok::Open) {
            let mut j = i + 1;
            while matches!(tokens.get(j), Some(Tok::Lit | Tok::Other)) {
                j += 1;
            }
            if tokens.get(j) == Some(&Tok::Close) && j > i + 1 {
                i = j + 1;
            }
        }
        // `text[]`: the tokenizer reads brackets as `Other`.
        while tokens.get(i) == Some(&Tok::Other) {
            i += 1;
        }
    }
    out
}

/// The column an operand is, if it is a bare (possibly parenthesized) column of `alias`.
fn operand_column(tokens: &[Tok], alias: &str) -> Option<String> {
    let mut t = tokens;
    while t.len() >= 2 && t[0] == Tok::Open && t[t.len() - 1] == Tok::Close {
        t = &t[1..t.len() - 1];
    }
    match t {
        [Tok::Name { parts, quoted }] if !is_keyword(parts, *quoted) => match parts.as_slice() {
            [column] => Some(column.clone()),
            [qualifier, column] if qualifier == alias => Some(column.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The operand ending just before `end` (exclusive): a name, or a parenthesized group that is
/// not a function call's argument list.
fn left_operand(tokens: &[Tok], end: usize) -> Option<&[Tok]> {
    let last = end.checked_sub(1)?;
    match tokens.get(last)? {
        Tok::Name { .. } | Tok::Lit => Some(&tokens[last..end]),
        Tok::Close => {
            let mut depth = 0_i32;
            let mut j = last;
            loop {
                match tokens[j] {
                    Tok::Close => depth += 1,
                    Tok::Open => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                j = j.checked_sub(1)?;
            }
            // `lower(email)`: the column sits inside a function, which a plain index cannot serve.
            if j > 0 && matches!(tokens[j - 1], Tok::Name { .. }) {
                return None;
            }
            Some(&tokens[j..end])
        }
        _ => None,
    }
}

/// The operand starting at `start`.
fn right_operand(tokens: &[Tok], start: usize) -> Option<&[Tok]> {
    match tokens.get(start)? {
        Tok::Name { .. } => {
            if tokens.get(start + 1) == Some(&Tok::Open) {
                return None;
            }
            Some(&tokens[start..=start])
        }
        Tok::Lit => Some(&tokens[start..=start]),
        Tok::Open => {
            let mut depth = 0_i32;
            for (j, tok) in tokens.iter().enumerate().skip(start) {
                match tok {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    return Some(&tokens[start..=j]);
                }
            }
            None
        }
        _ => None,
    }
}

/// Columns of `alias` that a filter compares with a value: `(equality, range)`.
pub fn filter_columns(filter: &str, alias: &str) -> (Vec<String>, Vec<String>) {
    let tokens = strip_casts(tokenize(filter));
    let mut equality = Vec::new();
    let mut range = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let Tok::Op(op) = tok else { continue };
        let list = match op.as_str() {
            "=" => &mut equality,
            "<" | "<=" | ">" | ">=" => &mut range,
            _ => continue,
        };
        let left = left_operand(&tokens, i).and_then(|t| operand_column(t, alias));
        let right = right_operand(&tokens, i + 1).and_then(|t| operand_column(t, alias));
        // Exactly one side a column: `column = value`. Two columns of the same row compared
        // with each other is not something an index seeks on.
        let column = match (left, right) {
            (Some(c), None) | (None, Some(c)) => c,
            _ => continue,
        };
        push_unique(list, column);
    }
    (equality, range)
}

/// `p.popularity DESC NULLS LAST` → `(Some("p"), "popularity")`; expressions → `None`.
fn sort_key_column(key: &str) -> Option<(Option<String>, String)> {
    let mut tokens = strip_casts(tokenize(key));
    while let Some(Tok::Name {
        parts,
        quoted: false,
    }) = tokens.last()
    {
        let word = parts.join(".").to_ascii_lowercase();
        if ["asc", "desc", "nulls", "first", "last"].contains(&word.as_str()) {
            tokens.pop();
        } else {
            break;
        }
    }
    let mut t = tokens.as_slice();
    while t.len() >= 2 && t[0] == Tok::Open && t[t.len() - 1] == Tok::Close {
        t = &t[1..t.len() - 1];
    }
    match t {
        [Tok::Name { parts, quoted }] if !is_keyword(parts, *quoted) => match parts.as_slice() {
            [column] => Some((None, column.clone())),
            [qualifier, column] => Some((Some(qualifier.clone()), column.clone())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn casts_and_parentheses_do_not_hide_the_compared_column() {
        let (eq, range) = filter_columns(
            "(p.active AND ((p.category)::text = 'electronics'::text))",
            "p",
        );
        assert_eq!(eq, ["category"]);
        assert!(range.is_empty(), "a bare boolean is not a comparison");
    }

    #[test]
    fn ranges_in_lists_and_quoted_names_are_read() {
        let (eq, range) = filter_columns(
            "((created_at >= '2024-01-01 00:00:00+00'::timestamp with time zone) AND (\"Odd \"\"Col\" = ANY ('{a,b}'::character varying(10)[])) AND (price < 10.5))",
            "o",
        );
        assert_eq!(eq, ["Odd \"Col"]);
        assert_eq!(range, ["created_at", "price"]);
    }

    #[test]
    fn columns_inside_functions_or_of_other_aliases_are_ignored() {
        let (eq, _) = filter_columns(
            "((lower((u.email)::text) = 'a@b.c'::text) AND (i.quantity = 3) AND (u.id = u.parent))",
            "u",
        );
        assert!(eq.is_empty(), "{eq:?}");
    }

    #[test]
    fn a_literal_containing_operators_is_not_read_as_a_comparison() {
        let (eq, range) = filter_columns("((name)::text = 'a = b AND c < d'::text)", "products");
        assert_eq!(eq, ["name"]);
        assert!(range.is_empty());
    }

    #[test]
    fn sort_keys_map_to_the_scanned_table_of_their_alias() {
        let plan = json!([{"Plan": {
            "Node Type": "Limit", "Total Cost": 120.5,
            "Plans": [{
                "Node Type": "Sort", "Sort Key": ["p.popularity DESC", "p.id"],
                "Plans": [{
                    "Node Type": "Nested Loop",
                    "Plans": [
                        {"Node Type": "Seq Scan", "Relation Name": "products", "Schema": "public",
                         "Alias": "p", "Filter": "(p.active AND ((p.category)::text = 'toys'::text))"},
                        {"Node Type": "Index Scan", "Relation Name": "inventory", "Schema": "public",
                         "Alias": "i", "Index Cond": "(i.product_id = p.id)"}
                    ]
                }]
            }]
        }}]);
        assert_eq!(total_cost(&plan), Some(120.5));
        let found = accesses(&plan);
        assert_eq!(
            found,
            [Access {
                schema: "public".into(),
                table: "products".into(),
                alias: "p".into(),
                equality: vec!["category".into()],
                range: vec![],
                order: vec!["popularity".into(), "id".into()],
                order_index: None,
            }]
        );
    }

    #[test]
    fn an_index_walked_only_for_its_order_is_remembered() {
        let plan = json!([{"Plan": {
            "Node Type": "Limit",
            "Plans": [{"Node Type": "Index Scan", "Index Name": "products_popular_idx",
                       "Relation Name": "products", "Schema": "public", "Alias": "p",
                       "Filter": "((p.category)::text = 'rare'::text)"}]
        }}]);
        let found = accesses(&plan);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].equality, ["category"]);
        assert!(found[0].order.is_empty());
        assert_eq!(
            found[0].order_index.as_deref(),
            Some("products_popular_idx")
        );
    }

    #[test]
    fn a_sort_led_by_an_expression_gives_no_order_columns() {
        let plan = json!([{"Plan": {
            "Node Type": "Sort", "Sort Key": ["(ts_rank_cd(p.search, '''x'''::tsquery)) DESC", "p.id"],
            "Plans": [{"Node Type": "Seq Scan", "Relation Name": "products", "Alias": "p"}]
        }}]);
        assert!(accesses(&plan).is_empty());
    }
}
