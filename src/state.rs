//! The data_version discipline, in one place.
//!
//! lightningd calls `db_write` with the data_version its database will have
//! once the change commits, and only commits if the plugin answers `continue`.
//! [`decide`] maps the journal's tip and the new call to one decision. The
//! plugin uses it to choose what to write; the journal reader uses the same
//! function to check that a journal is continuous and to find which records
//! lightningd actually committed ([`Resolver`]), so the writer and the reader
//! cannot disagree about what a sequence of records means.
//!
//! Two kinds of call (docs/LIGHTNINGD.md, "The db_write hook"):
//! - a transaction: its writes end with lightningd's
//!   `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = N-1`;
//!   it takes the database from N-1 to N, and may never commit (lightningd
//!   can die between the hook and COMMIT; it then sends N again);
//! - an in-place call: a `PRAGMA foreign_keys = ON/OFF` run outside any
//!   transaction, with the *current* data_version and no increment. It has
//!   already taken effect when the hook is called.

use std::fmt;

/// The statement lightningd appends to every transaction (db/exec.c,
/// `db_data_version_incr`), expanded by SQLite with the old version inlined.
pub const INCREMENT_PREFIX: &str = "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A transaction taking the database from data_version N-1 to N.
    Txn,
    /// A PRAGMA-only call at the current data_version N, replayed in place.
    InPlace,
}

/// Why a `db_write` call cannot be classified: it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("db_write carried no statements (cln-replica supports SQLite wallets only)")]
    NoStatements,
    #[error(
        "db_write for data_version {data_version} increments the data_version from {old}, not from {}",
        data_version.wrapping_sub(1)
    )]
    WrongIncrement { data_version: u32, old: u64 },
    #[error("db_write for data_version {data_version} ends with an unparsable increment: {statement}")]
    Unparsable { data_version: u32, statement: String },
}

/// Classifies a `db_write` call by its last statement. A transaction's
/// increment must name N-1 as the old version: anything else means the hook's
/// data_version and the statements disagree, and the call is refused.
pub fn classify<S: AsRef<str>>(data_version: u32, writes: &[S]) -> Result<CallKind, ClassifyError> {
    let Some(last) = writes.last() else {
        return Err(ClassifyError::NoStatements);
    };
    let last = last.as_ref().trim_end();
    let Some(rest) = last.strip_prefix(INCREMENT_PREFIX) else {
        return Ok(CallKind::InPlace);
    };
    let old = rest.trim_end_matches(';').trim();
    match old.parse::<u64>() {
        // The column is 64-bit; lightningd keeps a u32 and binds it.
        Ok(old) if (old as u32).wrapping_add(1) == data_version && old <= u32::MAX as u64 => Ok(CallKind::Txn),
        Ok(old) => Err(ClassifyError::WrongIncrement { data_version, old }),
        Err(_) => Err(ClassifyError::Unparsable { data_version, statement: last.chars().take(160).collect() }),
    }
}

/// What the journal holds at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tip {
    /// No generation exists yet: nothing is stored.
    Empty,
    /// The last stored data_version. `pending_txn` is true when the last
    /// record is a transaction that lightningd may not have committed; false
    /// when the version is known committed (a generation's snapshot, or an
    /// in-place call made at that version).
    At { version: u32, pending_txn: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// N = P + 1 (or an in-place call at P): store it after the tip.
    Append,
    /// A transaction with N = P while P is pending: P never committed, and
    /// the new record supersedes it.
    Supersede,
    /// An in-place call at P - 1 while P is pending: P never committed
    /// (lightningd restarted without it); the record cancels it.
    Abort,
    /// The journal cannot continue from its tip: take a snapshot of the
    /// committed database, which must be at `snapshot_version`, start a new
    /// generation from it, then store the call.
    NewGeneration { reason: NewGenerationReason, snapshot_version: u32 },
    /// The database went backwards relative to the journal: stop lightningd.
    Halt(Backwards),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewGenerationReason {
    /// Nothing stored yet.
    EmptyJournal,
    /// lightningd committed `missed` changes the journal never saw (it ran
    /// without the plugin), after the journal's last version `after`.
    Gap { after: u32, missed: u32 },
    /// The configuration's `filter` differs from the current generation's:
    /// a generation has one filter, so a new one starts (decided by the
    /// engine, not by [`decide`]).
    FilterChanged { from: crate::filter::Filter, to: crate::filter::Filter },
}

/// The database is at `lightningd` while the journal already holds the
/// committed `journal`: a stale copy of the database, or a second node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backwards {
    pub journal: u32,
    pub lightningd: u32,
}

impl fmt::Display for Backwards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lightningd's database is at data_version {} but the backup already holds data_version {}: \
             the database went backwards (restored from an old copy, or a second node using this backup). \
             Do not run this node on it: broadcasting an old channel state can lose funds. \
             Restore the newest state with `cln-replica restore`, or, if this database is right, \
             move the journal directory aside to start a new backup",
            self.lightningd, self.journal
        )
    }
}

/// `a` is after `b` in data_version order (modulo 2^32: lightningd's
/// counter wraps).
pub fn is_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// Where `n` lies relative to `p`, with u32 wrap-around counting as +1.
fn delta(p: u32, n: u32) -> Delta {
    match n.wrapping_sub(p) {
        0 => Delta::Same,
        1 => Delta::Next,
        u32::MAX => Delta::OneBehind,
        d if d >= 1 << 31 => Delta::Behind,
        d => Delta::Ahead(d),
    }
}

enum Delta {
    Same,
    Next,
    OneBehind,
    Behind,
    Ahead(u32),
}

/// The decision for a call of `kind` with data_version `n` after `tip`.
pub fn decide(tip: Tip, n: u32, kind: CallKind) -> Decision {
    let (p, pending) = match tip {
        Tip::Empty => {
            let snapshot_version = match kind {
                CallKind::Txn => n.wrapping_sub(1),
                CallKind::InPlace => n,
            };
            return Decision::NewGeneration { reason: NewGenerationReason::EmptyJournal, snapshot_version };
        }
        Tip::At { version, pending_txn } => (version, pending_txn),
    };
    let backwards = |lightningd| Decision::Halt(Backwards { journal: p, lightningd });
    match kind {
        // lightningd's committed database is at n - 1.
        CallKind::Txn => match delta(p, n) {
            Delta::Next => Decision::Append,
            Delta::Same if pending => Decision::Supersede,
            Delta::Same | Delta::OneBehind | Delta::Behind => backwards(n.wrapping_sub(1)),
            Delta::Ahead(d) => Decision::NewGeneration {
                reason: NewGenerationReason::Gap { after: p, missed: d - 1 },
                snapshot_version: n.wrapping_sub(1),
            },
        },
        // lightningd's committed database is at n.
        CallKind::InPlace => match delta(p, n) {
            Delta::Same => Decision::Append,
            Delta::OneBehind if pending => Decision::Abort,
            Delta::OneBehind | Delta::Behind => backwards(n),
            Delta::Next | Delta::Ahead(_) => {
                // If the tip was pending it committed (lightningd moved on);
                // either way the versions after it were never seen.
                let missed = n.wrapping_sub(p);
                Decision::NewGeneration { reason: NewGenerationReason::Gap { after: p, missed }, snapshot_version: n }
            }
        },
    }
}

/// The tip after a call of `kind` at `n` was stored.
pub fn tip_after(n: u32, kind: CallKind) -> Tip {
    Tip::At { version: n, pending_txn: kind == CallKind::Txn }
}

/// Turns a generation's records, in journal order, into the records
/// lightningd committed, in order: a transaction is held back until the next
/// record shows that it was not superseded or aborted.
///
/// `T` is whatever the caller carries per record (a location, a payload).
#[derive(Debug)]
pub struct Resolver<T> {
    tip: Tip,
    pending: Option<(u32, T)>,
}

/// What the [`Resolver`] learnt about a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<T> {
    /// lightningd committed it (a transaction), or ran it (in place).
    Committed { version: u32, kind: CallKind, item: T },
    /// A transaction lightningd never committed: the same data_version came
    /// again (superseded), or an in-place call at the version before it
    /// (aborted).
    Cancelled { version: u32, item: T },
}

/// A record that cannot follow the records before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discontinuity {
    pub tip: Tip,
    pub data_version: u32,
    pub kind: CallKind,
}

impl fmt::Display for Discontinuity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            CallKind::Txn => "transaction",
            CallKind::InPlace => "in-place record",
        };
        match self.tip {
            Tip::Empty => write!(f, "{kind} for data_version {} before any snapshot", self.data_version),
            Tip::At { version, pending_txn } => write!(
                f,
                "{kind} for data_version {} cannot follow data_version {version}{}",
                self.data_version,
                if pending_txn { " (pending)" } else { "" }
            ),
        }
    }
}

impl<T> Resolver<T> {
    /// Starts at a generation's base: its snapshot is committed at `base_version`.
    pub fn new(base_version: u32) -> Self {
        Resolver { tip: Tip::At { version: base_version, pending_txn: false }, pending: None }
    }

    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// Feeds the next record; `emit` receives, in order, each record now
    /// known to be committed (or, for in-place records, applied), and each
    /// transaction now known never to have been committed.
    pub fn push(
        &mut self,
        n: u32,
        kind: CallKind,
        item: T,
        mut emit: impl FnMut(Resolution<T>),
    ) -> Result<(), Discontinuity> {
        let decision = decide(self.tip, n, kind);
        match decision {
            Decision::Append => {
                if let Some((version, item)) = self.pending.take() {
                    emit(Resolution::Committed { version, kind: CallKind::Txn, item });
                }
            }
            Decision::Supersede | Decision::Abort => {
                if let Some((version, item)) = self.pending.take() {
                    emit(Resolution::Cancelled { version, item });
                }
            }
            Decision::NewGeneration { .. } | Decision::Halt(_) => {
                return Err(Discontinuity { tip: self.tip, data_version: n, kind });
            }
        }
        match kind {
            CallKind::Txn => self.pending = Some((n, item)),
            CallKind::InPlace => emit(Resolution::Committed { version: n, kind, item }),
        }
        self.tip = tip_after(n, kind);
        Ok(())
    }

    /// The transaction held back so far (always the last record pushed, if
    /// it is a transaction): acknowledged, not yet known committed.
    pub fn pending(&self) -> Option<&(u32, T)> {
        self.pending.as_ref()
    }

    /// The data_version of everything emitted so far: the tip, or the
    /// version before a pending transaction.
    pub fn confirmed_version(&self) -> Option<u32> {
        match self.tip {
            Tip::Empty => None,
            Tip::At { version, pending_txn: true } => Some(version.wrapping_sub(1)),
            Tip::At { version, pending_txn: false } => Some(version),
        }
    }

    /// The last transaction, which nothing after it confirms or cancels:
    /// acknowledged to lightningd, possibly never committed by it.
    pub fn finish(self) -> Option<(u32, T)> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallKind::*;

    fn at(version: u32, pending_txn: bool) -> Tip {
        Tip::At { version, pending_txn }
    }

    fn incr(old: u32) -> String {
        format!("{INCREMENT_PREFIX}{old}")
    }

    #[test]
    fn classify_by_the_increment_statement() {
        assert_eq!(classify(5, &["INSERT INTO t VALUES (1);".to_string(), incr(4)]), Ok(Txn));
        assert_eq!(classify(5, &["PRAGMA foreign_keys = OFF;"]), Ok(InPlace));
        assert_eq!(classify(0, &[incr(u32::MAX)]), Ok(Txn), "wrap-around is +1");
        assert!(classify(5, &[incr(3)]).unwrap_err().to_string().contains("from 3"));
        assert!(classify(5, &[format!("{INCREMENT_PREFIX}x")]).is_err());
        assert!(classify::<&str>(5, &[]).is_err());
        // The increment must be the last statement to make a transaction.
        assert_eq!(classify(5, &[incr(4), "PRAGMA foreign_keys = ON;".into()]), Ok(InPlace));
    }

    #[test]
    fn every_transition_of_a_transaction() {
        assert_eq!(
            decide(Tip::Empty, 1, Txn),
            Decision::NewGeneration { reason: NewGenerationReason::EmptyJournal, snapshot_version: 0 }
        );
        assert_eq!(decide(at(7, false), 8, Txn), Decision::Append);
        assert_eq!(decide(at(7, true), 8, Txn), Decision::Append);
        assert_eq!(decide(at(7, true), 7, Txn), Decision::Supersede);
        assert_eq!(decide(at(7, false), 7, Txn), Decision::Halt(Backwards { journal: 7, lightningd: 6 }));
        assert_eq!(decide(at(7, true), 6, Txn), Decision::Halt(Backwards { journal: 7, lightningd: 5 }));
        assert_eq!(decide(at(7, false), 3, Txn), Decision::Halt(Backwards { journal: 7, lightningd: 2 }));
        assert_eq!(
            decide(at(7, true), 10, Txn),
            Decision::NewGeneration { reason: NewGenerationReason::Gap { after: 7, missed: 2 }, snapshot_version: 9 }
        );
        assert_eq!(decide(at(u32::MAX, true), 0, Txn), Decision::Append, "wrap-around is +1");
        assert_eq!(decide(at(u32::MAX, true), u32::MAX, Txn), Decision::Supersede);
        assert!(matches!(decide(at(2, false), u32::MAX, Txn), Decision::Halt(_)));
    }

    #[test]
    fn every_transition_of_an_in_place_call() {
        assert_eq!(
            decide(Tip::Empty, 4, InPlace),
            Decision::NewGeneration { reason: NewGenerationReason::EmptyJournal, snapshot_version: 4 }
        );
        // The real migration sequence: 1 (txn), 1 (PRAGMA OFF), 2 (txn), 2 (PRAGMA ON).
        assert_eq!(decide(at(1, true), 1, InPlace), Decision::Append, "a PRAGMA is not a rewind");
        assert_eq!(decide(at(1, false), 1, InPlace), Decision::Append);
        assert_eq!(decide(at(2, true), 1, InPlace), Decision::Abort);
        assert_eq!(decide(at(2, false), 1, InPlace), Decision::Halt(Backwards { journal: 2, lightningd: 1 }));
        assert_eq!(decide(at(9, true), 3, InPlace), Decision::Halt(Backwards { journal: 9, lightningd: 3 }));
        assert_eq!(
            decide(at(2, true), 5, InPlace),
            Decision::NewGeneration { reason: NewGenerationReason::Gap { after: 2, missed: 3 }, snapshot_version: 5 }
        );
        assert_eq!(decide(at(0, true), u32::MAX, InPlace), Decision::Abort, "wrap-around");
    }

    fn resolve(base: u32, calls: &[(u32, CallKind)]) -> Result<(Vec<usize>, Option<usize>), Discontinuity> {
        let mut r = Resolver::new(base);
        let mut out = vec![];
        for (i, &(n, k)) in calls.iter().enumerate() {
            r.push(n, k, i, |res| {
                if let Resolution::Committed { item, .. } = res {
                    out.push(item)
                }
            })?;
        }
        Ok((out, r.finish().map(|(_, i)| i)))
    }

    #[test]
    fn resolver_applies_the_real_migration_sequence_whole() {
        let calls = [(1, Txn), (1, InPlace), (2, Txn), (2, InPlace), (3, Txn)];
        assert_eq!(resolve(0, &calls).unwrap(), (vec![0, 1, 2, 3], Some(4)));
    }

    #[test]
    fn resolver_drops_superseded_and_aborted_transactions() {
        // 5 sent twice: the first never committed.
        assert_eq!(resolve(3, &[(4, Txn), (5, Txn), (5, Txn), (6, Txn)]).unwrap(), (vec![0, 2], Some(3)));
        // 2 pending, then lightningd restarts and issues a PRAGMA at 1.
        assert_eq!(resolve(0, &[(1, Txn), (2, Txn), (1, InPlace), (2, Txn)]).unwrap(), (vec![0, 2], Some(3)));
        // Superseded twice.
        assert_eq!(resolve(0, &[(1, Txn), (1, Txn), (1, Txn)]).unwrap(), (vec![], Some(2)));
    }

    #[test]
    fn resolver_names_what_it_cancels() {
        let mut r = Resolver::new(3);
        let mut seen = vec![];
        for (i, (n, k)) in [(4, Txn), (4, Txn), (5, Txn), (4, InPlace)].into_iter().enumerate() {
            r.push(n, k, i, |res| seen.push(res)).unwrap();
        }
        assert_eq!(
            seen,
            [
                Resolution::Cancelled { version: 4, item: 0 },
                Resolution::Committed { version: 4, kind: Txn, item: 1 },
                Resolution::Cancelled { version: 5, item: 2 },
                Resolution::Committed { version: 4, kind: InPlace, item: 3 },
            ]
        );
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn resolver_rejects_discontinuities() {
        assert!(resolve(0, &[(2, Txn)]).is_err(), "gap inside a generation");
        assert!(resolve(5, &[(5, Txn)]).is_err(), "repeat of the committed base");
        assert!(resolve(0, &[(1, Txn), (2, InPlace)]).is_err());
        assert!(resolve(3, &[(4, Txn), (4, InPlace), (4, Txn)]).is_err(), "4 was confirmed");
    }
}
