//! Comparing two SQLite databases table by table and row by row: the
//! central assertion of the tests and of `demo`.
//!
//! Rows are compared as sorted lists of whole rows (every column), not by
//! rowid: lightningd VACUUMs after migrations without telling the hook, which
//! may renumber the rowids of tables without an INTEGER PRIMARY KEY.

use anyhow::{Context, Result};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Differences found (empty when the databases hold the same data), at most
/// a few per table.
pub fn compare_files(a: &Path, b: &Path) -> Result<Vec<String>> {
    let open = |p: &Path| {
        Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open {}", p.display()))
    };
    compare(&open(a)?, &open(b)?)
}

fn schema(conn: &Connection) -> Result<Vec<(String, String, Option<String>)>> {
    let mut stmt = conn.prepare(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A cell with a total order, so rows can be sorted and searched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Null,
    Integer(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<Value> for Cell {
    fn from(v: Value) -> Cell {
        match v {
            Value::Null => Cell::Null,
            Value::Integer(i) => Cell::Integer(i),
            Value::Real(f) => Cell::Real(f.to_bits()),
            Value::Text(t) => Cell::Text(t),
            Value::Blob(b) => Cell::Blob(b),
        }
    }
}

fn rows(conn: &Connection, table: &str) -> Result<Vec<Vec<Cell>>> {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let ncols = conn.prepare(&format!("SELECT * FROM {quoted} LIMIT 0"))?.column_count();
    let order: Vec<String> = (1..=ncols).map(|i| i.to_string()).collect();
    let sql = if ncols == 0 {
        format!("SELECT * FROM {quoted}")
    } else {
        format!("SELECT * FROM {quoted} ORDER BY {}", order.join(", "))
    };
    let mut stmt = conn.prepare(&sql)?;
    let out = stmt.query_map([], |r| {
        (0..ncols).map(|i| r.get::<_, Value>(i).map(Cell::from)).collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let mut out: Vec<Vec<Cell>> = out.collect::<rusqlite::Result<_>>()?;
    // SQLite's ORDER BY and Cell's order differ across types; sort again.
    out.sort();
    Ok(out)
}

fn show(row: &[Cell]) -> String {
    let cells: Vec<String> = row
        .iter()
        .map(|v| match v {
            Cell::Null => "NULL".into(),
            Cell::Integer(i) => i.to_string(),
            Cell::Real(f) => f64::from_bits(*f).to_string(),
            Cell::Text(t) => format!("'{}'", t.chars().take(40).collect::<String>()),
            Cell::Blob(b) => format!("x'{}'", b.iter().take(16).map(|x| format!("{x:02x}")).collect::<String>()),
        })
        .collect();
    format!("({})", cells.join(", "))
}

pub fn compare(a: &Connection, b: &Connection) -> Result<Vec<String>> {
    let mut out = vec![];
    let (sa, sb) = (schema(a)?, schema(b)?);
    if sa != sb {
        for x in sa.iter().filter(|x| !sb.contains(x)) {
            out.push(format!("schema: {} {} only in the first database (or different)", x.0, x.1));
        }
        for x in sb.iter().filter(|x| !sa.contains(x)) {
            out.push(format!("schema: {} {} only in the second database (or different)", x.0, x.1));
        }
    }
    for (kind, name, _) in &sa {
        if kind != "table" || !sb.iter().any(|(k, n, _)| k == kind && n == name) {
            continue;
        }
        let (ra, rb) = (rows(a, name)?, rows(b, name)?);
        if ra == rb {
            continue;
        }
        out.push(format!("table {name}: {} rows against {}", ra.len(), rb.len()));
        let mut shown = 0;
        for r in ra.iter().filter(|r| rb.binary_search(r).is_err()).take(3) {
            out.push(format!("  only in the first: {}", show(r)));
            shown += 1;
        }
        for r in rb.iter().filter(|r| ra.binary_search(r).is_err()).take(3) {
            out.push(format!("  only in the second: {}", show(r)));
            shown += 1;
        }
        if shown == 0 {
            out.push("  (same rows, different multiplicities)".into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_row_and_schema_differences() {
        let a = Connection::open_in_memory().unwrap();
        let b = Connection::open_in_memory().unwrap();
        for c in [&a, &b] {
            c.execute_batch("CREATE TABLE t (x INTEGER, y BLOB); INSERT INTO t VALUES (1, x'00'), (2, NULL);").unwrap();
        }
        assert!(compare(&a, &b).unwrap().is_empty());
        b.execute_batch("UPDATE t SET y = x'01' WHERE x = 1").unwrap();
        let d = compare(&a, &b).unwrap();
        assert!(d.iter().any(|l| l.contains("only in the first: (1, x'00')")), "{d:?}");
        b.execute_batch("UPDATE t SET y = x'00' WHERE x = 1; CREATE INDEX i ON t(x);").unwrap();
        let d = compare(&a, &b).unwrap();
        assert!(d.iter().any(|l| l.contains("index i")), "{d:?}");
    }
}
