//! What the system catalog says about a table: its columns (with their correctly quoted names)
//! and the key columns of its existing B-tree indexes.
//!
//! Every identifier the advisor ever writes into SQL comes from here, quoted by PostgreSQL's own
//! `quote_ident`; names read from a plan are only used to look columns up.

use crate::Error;
use tokio_postgres::Client;

/// A column: its name and its name quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The name as stored (`attname`).
    pub name: String,
    /// The name as SQL must spell it.
    pub quoted: String,
}

/// An existing, valid B-tree index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Index name.
    pub name: String,
    /// Key columns in order; `None` for an expression.
    pub keys: Vec<Option<String>>,
}

/// An ordinary table with its columns and B-tree indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `schema`, quoted.
    pub quoted_schema: String,
    /// `schema.table`, both quoted.
    pub quoted: String,
    /// Columns, in table order.
    pub columns: Vec<Column>,
    /// Valid B-tree indexes.
    pub indexes: Vec<Index>,
}

impl Table {
    /// The column called `name`, if the table has one.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The existing index whose leading key columns are exactly `columns`, if any: it already
    /// serves whatever an index on `columns` would.
    pub fn covering_index(&self, columns: &[String]) -> Option<&Index> {
        self.indexes.iter().find(|index| {
            index.keys.len() >= columns.len()
                && index
                    .keys
                    .iter()
                    .zip(columns)
                    .all(|(key, column)| key.as_deref() == Some(column.as_str()))
        })
    }
}

/// Reads an ordinary table from the catalog. An empty `schema` means "the one the search path
/// finds" (plans that were not explained verbosely do not name the schema).
///
/// # Errors
/// A database error.
pub async fn table(client: &Client, schema: &str, name: &str) -> Result<Option<Table>, Error> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, quote_ident(n.nspname), \
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $2 AND c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND (n.nspname = $1 OR ($1 = '' AND pg_table_is_visible(c.oid))) \
             LIMIT 1",
            &[&schema, &name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.get(0);
    let columns = client
        .query(
            "SELECT attname::text, quote_ident(attname) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            quoted: r.get(1),
        })
        .collect();
    let indexes = client
        .query(
            "SELECT ic.relname::text, i.indnkeyatts, \
                    ARRAY(SELECT a.attname::text \
                          FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                          LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.ord) \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1 AND i.indisvalid AND am.amname = 'btree' \
             ORDER BY ic.relname",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            let key_count: i16 = r.get(1);
            let mut keys: Vec<Option<String>> = r.get(2);
            keys.truncate(usize::try_from(key_count).unwrap_or(0));
            Index {
                name: r.get(0),
                keys,
            }
        })
        .collect();
    Ok(Some(Table {
        schema: row.get(1),
        name: name.to_owned(),
        quoted_schema: row.get(2),
        quoted: row.get(3),
        columns,
        indexes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn products() -> Table {
        Table {
            schema: "public".into(),
            name: "products".into(),
            quoted_schema: "public".into(),
            quoted: "public.products".into(),
            columns: vec![],
            indexes: vec![Index {
                name: "products_popular_idx".into(),
                keys: vec![Some("popularity".into()), Some("id".into())],
            }],
        }
    }

    #[test]
    fn an_index_covers_the_prefixes_of_its_keys_only() {
        let t = products();
        let cols = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(t.covering_index(&cols(&["popularity"])).is_some());
        assert!(t.covering_index(&cols(&["popularity", "id"])).is_some());
        assert!(t.covering_index(&cols(&["id"])).is_none());
        assert!(t.covering_index(&cols(&["category"])).is_none());
        assert!(
            t.covering_index(&cols(&["popularity", "id", "x"]))
                .is_none()
        );
    }
}
