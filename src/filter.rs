//! `filter = "caches"`: leaving out of the backup the tables lightningd only
//! uses as caches of the chain and rebuilds by rescanning it (docs/CACHES.md
//! has the evidence for each table).
//!
//! The filter works on whole statements, by the one table a statement writes.
//! A statement it cannot classify (anything but a plain INSERT, REPLACE,
//! UPDATE or DELETE on a named table) is kept, and so is every statement on a
//! table not in [`CACHE_TABLES`]: the filter can only err towards keeping.

use serde::{Deserialize, Serialize};

/// The tables `filter = "caches"` leaves out. Only `utxoset`: lightningd
/// fills it with every P2WSH output of every block it processes and rebuilds
/// it when it processes those blocks again (`--rescan`). `blocks` is not a
/// cache (foreign-key target of `outputs`, `transactions`, `channeltxs`),
/// nor is anything holding channel state.
pub const CACHE_TABLES: &[&str] = &["utxoset"];

/// What a generation leaves out. Recorded in every segment header
/// (docs/FORMAT.md), so `status`, `verify` and `restore` know a backup is
/// filtered and a generation's records and snapshot agree on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Everything lightningd writes is kept.
    #[default]
    None,
    /// The statements on [`CACHE_TABLES`] are left out, and the snapshot holds
    /// those tables empty.
    Caches,
}

impl Filter {
    /// The value stored in the segment header.
    pub fn code(self) -> u32 {
        match self {
            Filter::None => 0,
            Filter::Caches => 1,
        }
    }

    pub fn from_code(code: u32) -> Option<Filter> {
        match code {
            0 => Some(Filter::None),
            1 => Some(Filter::Caches),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Caches => "caches",
        }
    }

    /// The tables this filter leaves out.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Filter::None => &[],
            Filter::Caches => CACHE_TABLES,
        }
    }

    /// Whether the backup keeps this statement.
    pub fn keeps(self, statement: &str) -> bool {
        match self {
            Filter::None => true,
            Filter::Caches => match table_written(statement) {
                Some(t) => !CACHE_TABLES.iter().any(|c| t.eq_ignore_ascii_case(c)),
                None => true,
            },
        }
    }
}

/// The table a data-changing statement writes, or `None` when the statement
/// is not one this parser is sure about (DDL, PRAGMA, WITH ..., anything
/// odd). Understands `INSERT [OR x] INTO t`, `REPLACE INTO t`,
/// `UPDATE [OR x] t`, `DELETE FROM t`, with `t` bare, quoted ("t", `t`,
/// [t]) or schema-qualified as `main.t`; lightningd writes the first forms.
pub fn table_written(statement: &str) -> Option<&str> {
    // One call's write is one statement; a `;` before the end could start a
    // second one, writing another table. Such text is not classified (the
    // statements on cache tables carry no text literals that could hold one).
    if statement.trim_end().trim_end_matches(';').contains(';') {
        return None;
    }
    let mut w = Words { rest: statement };
    let first = w.word()?;
    let table = if first.eq_ignore_ascii_case("INSERT") {
        let mut next = w.word()?;
        if next.eq_ignore_ascii_case("OR") {
            w.word()?; // ROLLBACK | ABORT | REPLACE | FAIL | IGNORE
            next = w.word()?;
        }
        if !next.eq_ignore_ascii_case("INTO") {
            return None;
        }
        w.name()?
    } else if first.eq_ignore_ascii_case("REPLACE") {
        if !w.word()?.eq_ignore_ascii_case("INTO") {
            return None;
        }
        w.name()?
    } else if first.eq_ignore_ascii_case("UPDATE") {
        let save = w.rest;
        match w.word() {
            Some(or) if or.eq_ignore_ascii_case("OR") => {
                w.word()?;
            }
            _ => w.rest = save,
        }
        w.name()?
    } else if first.eq_ignore_ascii_case("DELETE") {
        if !w.word()?.eq_ignore_ascii_case("FROM") {
            return None;
        }
        w.name()?
    } else {
        return None;
    };
    // A schema-qualified name: only `main.` is lightningd's database.
    match table.split_once('.') {
        Some((schema, t)) if schema.eq_ignore_ascii_case("main") && !t.is_empty() => Some(t),
        Some(_) => None,
        None => Some(table),
    }
}

struct Words<'a> {
    rest: &'a str,
}

impl<'a> Words<'a> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// A keyword: ASCII letters only.
    fn word(&mut self) -> Option<&'a str> {
        self.skip_space();
        let end = self.rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w)
    }

    /// A table name, unquoted. Quoted names with anything but identifier
    /// characters inside, and names followed by something other than
    /// whitespace, `(` or `;`-free continuation, are refused.
    fn name(&mut self) -> Option<&'a str> {
        self.skip_space();
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        let (name, rest) = match self.rest.chars().next()? {
            q @ ('"' | '`' | '[') => {
                let close = if q == '[' { ']' } else { q };
                let inner = &self.rest[1..];
                let end = inner.find(close)?;
                (&inner[..end], &inner[end + 1..])
            }
            _ => {
                let end = self.rest.find(|c: char| !ident(c)).unwrap_or(self.rest.len());
                self.rest.split_at(end)
            }
        };
        if name.is_empty() || !name.chars().all(ident) {
            return None;
        }
        // What follows a table name: whitespace, a column list, or the end.
        if !(rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == '(')) {
            return None;
        }
        self.rest = rest;
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_lightningds_statements() {
        let cases = [
            ("INSERT INTO utxoset (txid, outnum) VALUES (X'00', 1);", Some("utxoset")),
            ("INSERT OR IGNORE INTO utxoset(txid) VALUES (1)", Some("utxoset")),
            ("insert into \"utxoset\" values (1)", Some("utxoset")),
            ("UPDATE utxoset SET spendheight = 5 WHERE txid = X'00' AND outnum = 1;", Some("utxoset")),
            ("UPDATE OR REPLACE channels SET state = 2", Some("channels")),
            ("DELETE FROM utxoset WHERE spendheight IS NOT NULL AND spendheight < 100;", Some("utxoset")),
            ("DELETE FROM blocks WHERE height > 110;", Some("blocks")),
            ("REPLACE INTO vars (name, intval) VALUES ('x', 1)", Some("vars")),
            ("  \n INSERT INTO main.utxoset VALUES (1)", Some("utxoset")),
            ("UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 4", Some("vars")),
            ("UPDATE [utxoset] SET x = 1", Some("utxoset")),
        ];
        for (s, want) in cases {
            assert_eq!(table_written(s), want, "{s}");
        }
    }

    #[test]
    fn unclassifiable_statements_are_kept() {
        for s in [
            "PRAGMA foreign_keys = OFF;",
            "CREATE TABLE utxoset (txid BLOB)",
            "ALTER TABLE utxoset RENAME TO utxoset_old",
            "DROP TABLE utxoset",
            "WITH x AS (SELECT 1) DELETE FROM utxoset",
            "INSERT INTO other.utxoset VALUES (1)",
            "INSERT INTO utxoset_old SELECT * FROM utxoset",
            "DELETE utxoset",
            "INSERT INTO \"utx oset\" VALUES (1)",
            "INSERT INTO utxoset;DELETE FROM channels",
            "INSERT INTO utxoset VALUES (1); DELETE FROM channels WHERE id = 1",
            "",
            "INSERT",
        ] {
            assert!(Filter::Caches.keeps(s), "{s} must be kept");
        }
        assert_eq!(table_written("INSERT INTO utxoset;DELETE FROM channels"), None);
    }

    #[test]
    fn caches_drops_only_utxoset_and_none_drops_nothing() {
        let drop = "INSERT INTO utxoset (txid) VALUES (X'01')";
        assert!(!Filter::Caches.keeps(drop));
        assert!(Filter::None.keeps(drop));
        for keep in [
            "INSERT INTO blocks (height, hash, prev_hash) VALUES (1, X'00', NULL)",
            "DELETE FROM blocks WHERE height > 5",
            "UPDATE channels SET state = 3 WHERE id = 1",
            "INSERT INTO transactions (id, blockheight) VALUES (X'00', 5)",
            "INSERT INTO channeltxs (channel_id, type) VALUES (1, 2)",
            "UPDATE outputs SET spend_height = 5",
            "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 4",
        ] {
            assert!(Filter::Caches.keeps(keep), "{keep}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for f in [Filter::None, Filter::Caches] {
            assert_eq!(Filter::from_code(f.code()), Some(f));
        }
        assert_eq!(Filter::from_code(7), None);
    }
}
