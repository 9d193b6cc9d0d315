//! `filter = "caches"`: leaving out of the backup the tables lightningd only
//! uses as caches of the chain and rebuilds by rescanning it (docs/CACHES.md
//! has the evidence for each table).
//!
//! The filter works on whole statements, by the one table whose rows a
//! statement writes ([`crate::sql`]). A statement that writes no rows or that
//! the classifier is not sure about is kept, and so is every statement on a
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

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

/// The table whose rows a statement writes, or `None` when it writes no
/// table's rows or is not a statement [`crate::sql`] is sure about.
pub fn table_written(statement: &str) -> Option<&str> {
    match crate::sql::classify(statement) {
        crate::sql::Write::Rows { table } => Some(table),
        _ => None,
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
