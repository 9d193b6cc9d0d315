//! What a statement lightningd sends writes: the one SQL classifier behind
//! the two decisions that depend on it, what a filtered backup leaves out
//! ([`crate::filter`]) and which changes the synchronous remote tier waits
//! for ([`crate::remote::settings::needs_sync`]).
//!
//! lightningd sends expanded SQL of a few shapes (docs/LIGHTNINGD.md):
//! `INSERT [OR x] INTO t`, `REPLACE INTO t`, `UPDATE [OR x] t`,
//! `DELETE FROM t`, `CREATE [UNIQUE] INDEX`, `DROP INDEX`,
//! `CREATE TABLE t`, `ALTER TABLE t ...`, `DROP TABLE t`, and
//! `PRAGMA foreign_keys = ON/OFF`. Anything else is [`Write::Unknown`], and
//! each decision treats that the safe way: the filter keeps it, the
//! synchronous tier waits for it.

/// What one statement changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Rows of one table: INSERT, REPLACE, UPDATE, DELETE.
    Rows { table: &'a str },
    /// The definition of one table: CREATE, ALTER or DROP TABLE.
    Schema { table: &'a str },
    /// No table's rows or definition: an index, a PRAGMA.
    NoTable,
    /// A statement this classifier is not sure about.
    Unknown,
}

impl<'a> Write<'a> {
    /// The table whose rows or definition the statement changes.
    pub fn table(self) -> Option<&'a str> {
        match self {
            Write::Rows { table } | Write::Schema { table } => Some(table),
            Write::NoTable | Write::Unknown => None,
        }
    }
}

/// Classifies one statement. Table names come back unquoted and without a
/// `main.` schema; a name in any other schema is [`Write::Unknown`].
pub fn classify(statement: &str) -> Write<'_> {
    // One write is one statement; a `;` before the end could start a second
    // one, writing another table.
    if statement.trim_end().trim_end_matches(';').contains(';') {
        return Write::Unknown;
    }
    let mut w = Words { rest: statement };
    classify_words(&mut w).unwrap_or(Write::Unknown)
}

fn classify_words<'a>(w: &mut Words<'a>) -> Option<Write<'a>> {
    let first = w.word()?;
    let is = |word: &str, want: &str| word.eq_ignore_ascii_case(want);
    let write = if is(first, "INSERT") {
        let mut next = w.word()?;
        if is(next, "OR") {
            w.word()?; // ROLLBACK | ABORT | REPLACE | FAIL | IGNORE
            next = w.word()?;
        }
        if !is(next, "INTO") {
            return None;
        }
        Write::Rows { table: main_table(w.name()?)? }
    } else if is(first, "REPLACE") {
        if !is(w.word()?, "INTO") {
            return None;
        }
        Write::Rows { table: main_table(w.name()?)? }
    } else if is(first, "UPDATE") {
        let save = w.rest;
        match w.word() {
            Some(or) if is(or, "OR") => {
                w.word()?;
            }
            _ => w.rest = save,
        }
        Write::Rows { table: main_table(w.name()?)? }
    } else if is(first, "DELETE") {
        if !is(w.word()?, "FROM") {
            return None;
        }
        Write::Rows { table: main_table(w.name()?)? }
    } else if is(first, "CREATE") || is(first, "ALTER") || is(first, "DROP") {
        let mut what = w.word()?;
        if is(first, "CREATE") && is(what, "UNIQUE") {
            what = w.word()?;
        }
        if is(what, "INDEX") {
            return Some(Write::NoTable);
        }
        if !is(what, "TABLE") {
            return None;
        }
        let save = w.rest;
        match w.word() {
            // CREATE TABLE IF NOT EXISTS t, DROP TABLE IF EXISTS t
            Some(kw) if is(kw, "IF") => {
                if is(first, "CREATE") && !is(w.word()?, "NOT") {
                    return None;
                }
                if !is(w.word()?, "EXISTS") {
                    return None;
                }
            }
            _ => w.rest = save,
        }
        Write::Schema { table: main_table(w.name()?)? }
    } else if is(first, "PRAGMA") {
        Write::NoTable
    } else {
        return None;
    };
    Some(write)
}

/// A table name in lightningd's database: bare, or `main.t`.
fn main_table(name: &str) -> Option<&str> {
    match name.split_once('.') {
        Some((schema, t)) if schema.eq_ignore_ascii_case("main") && !t.is_empty() && !t.contains('.') => Some(t),
        Some(_) => None,
        None => Some(name),
    }
}

struct Words<'a> {
    rest: &'a str,
}

impl<'a> Words<'a> {
    /// A keyword: ASCII letters only.
    fn word(&mut self) -> Option<&'a str> {
        self.rest = self.rest.trim_start();
        let end = self.rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w)
    }

    /// A table name, unquoted. A quoted name with anything but identifier
    /// characters inside, or a name followed by anything but whitespace, a
    /// column list or the end, is refused.
    fn name(&mut self) -> Option<&'a str> {
        self.rest = self.rest.trim_start();
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
        if !(rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == '(' || c == ';')) {
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
    fn every_shape_lightningd_sends() {
        let cases = [
            ("INSERT INTO utxoset (txid, outnum) VALUES (X'00', 1);", Write::Rows { table: "utxoset" }),
            ("INSERT OR IGNORE INTO utxoset(txid) VALUES (1)", Write::Rows { table: "utxoset" }),
            ("insert into \"utxoset\" values (1)", Write::Rows { table: "utxoset" }),
            ("INSERT INTO payments SELECT * FROM temp_payments;", Write::Rows { table: "payments" }),
            ("UPDATE utxoset SET spendheight = 5 WHERE txid = X'00' AND outnum = 1;", Write::Rows { table: "utxoset" }),
            ("UPDATE OR REPLACE channels SET state = 2", Write::Rows { table: "channels" }),
            ("UPDATE main.channels SET state = 2", Write::Rows { table: "channels" }),
            ("DELETE FROM blocks WHERE height > 110;", Write::Rows { table: "blocks" }),
            ("REPLACE INTO vars (name, intval) VALUES ('x', 1)", Write::Rows { table: "vars" }),
            ("  \n INSERT INTO main.utxoset VALUES (1)", Write::Rows { table: "utxoset" }),
            ("UPDATE [utxoset] SET x = 1", Write::Rows { table: "utxoset" }),
            ("CREATE TABLE version (version INTEGER)", Write::Schema { table: "version" }),
            ("CREATE TABLE IF NOT EXISTS penalty_bases (x)", Write::Schema { table: "penalty_bases" }),
            ("ALTER TABLE payments RENAME TO temp_payments;", Write::Schema { table: "payments" }),
            ("ALTER TABLE \"channels\" ADD COLUMN x INTEGER", Write::Schema { table: "channels" }),
            ("DROP TABLE temp_payments;", Write::Schema { table: "temp_payments" }),
            ("DROP TABLE IF EXISTS x", Write::Schema { table: "x" }),
            ("CREATE INDEX channel_idx ON htlc_sigs (channelid)", Write::NoTable),
            ("CREATE UNIQUE INDEX if NOT EXISTS x ON y (z)", Write::NoTable),
            ("DROP INDEX channel_idx", Write::NoTable),
            ("PRAGMA foreign_keys = OFF;", Write::NoTable),
        ];
        for (s, want) in cases {
            assert_eq!(classify(s), want, "{s}");
        }
    }

    #[test]
    fn anything_unsure_is_unknown() {
        for s in [
            "WITH x AS (SELECT 1) DELETE FROM utxoset",
            "INSERT INTO other.utxoset VALUES (1)",
            "UPDATE a.b.c SET x = 1",
            "DELETE utxoset",
            "INSERT INTO \"utx oset\" VALUES (1)",
            "INSERT INTO utxoset;DELETE FROM channels",
            "INSERT INTO utxoset VALUES (1); DELETE FROM channels WHERE id = 1",
            "CREATE VIEW v AS SELECT 1",
            "ATTACH DATABASE 'x' AS y",
            "VACUUM INTO '/tmp/x'",
            "",
            "INSERT",
        ] {
            assert_eq!(classify(s), Write::Unknown, "{s}");
        }
    }

    /// Every statement of the two traces recorded from a real lightningd
    /// (a first start with all migrations, and a three-node workload) is of
    /// a known shape.
    #[test]
    fn every_statement_of_the_recorded_traces_is_classified() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for name in ["cln-v26.06-first-start.jsonl.zst", "cln-v26.06-realnode.jsonl.zst"] {
            let bytes = zstd::decode_all(std::fs::File::open(dir.join(name)).unwrap()).unwrap();
            for line in String::from_utf8(bytes).unwrap().lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                for w in v["params"]["writes"].as_array().unwrap() {
                    let s = w.as_str().unwrap();
                    assert_ne!(classify(s), Write::Unknown, "{name}: {}", &s[..s.len().min(200)]);
                    seen += 1;
                }
            }
        }
        assert!(seen > 70_000, "{seen} statements");
    }
}
