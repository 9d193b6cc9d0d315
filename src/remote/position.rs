//! Where a worker resumes: from the destination's authenticated tip, never
//! from its listing (anyone who can write to the destination can plant a
//! name; nobody without the key can make a tip).
//!
//! At start a worker reads `tip`, opens it (authenticated, bound to this
//! journal's id and to the base of the generation it names), checks that it
//! is not past the local journal, and reads back the object that holds the
//! tip's last record (a records object in full; the first chunk of a base).
//! Then it continues after that record. Without a tip the destination is new
//! (or has lost everything): the worker starts at the newest local
//! generation, and an object found already there is read back and
//! authenticated before it counts (see the worker's `put`).

use super::crypto::{Context, Key};
use super::objects::{self, Tip};
use super::store::{self, Store};
use crate::journal::identity::JournalId;
use crate::journal::reader::Generation;
use crate::journal::ProgressState;
use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Where to start shipping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At the newest local generation, its base first.
    Newest,
    /// At this generation, its base first.
    Generation(u64),
    /// After record `seq` of `generation` (0: after its base).
    After { generation: u64, seq: u64 },
}

/// The outcome of reading a destination's tip.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub tip: Option<Tip>,
    pub start: Start,
    /// Said in the log: why the worker starts where it does.
    pub note: String,
}

/// The last record of a local generation (0 if none): the most a tip in it can name.
fn local_last_seq(journal: &Path, g: &Generation, progress: &ProgressState) -> Result<u64> {
    if g.number == progress.generation {
        return Ok(progress.seq);
    }
    let mut scanner = g.records_from_last_segment()?;
    for r in scanner.by_ref() {
        r.map_err(|e| anyhow!("the local journal {} is damaged: {e}", journal.display()))?;
    }
    Ok(scanner.tail().and_then(|t| t.last).map_or(0, |h| h.seq))
}

/// Reads the destination's tip and decides where to resume.
pub fn resume(
    store: &dyn Store,
    key: &Key,
    journal_id: JournalId,
    journal: &Path,
    progress: &ProgressState,
) -> Result<Resumed> {
    let Some(sealed) = store::get_bounded(store, objects::TIP_NAME, objects::tip_sealed_max())? else {
        return Ok(Resumed {
            tip: None,
            start: Start::Newest,
            note: "no tip: a new destination (or one that lost it); starting at the newest generation".into(),
        });
    };
    let (tip, base) = Tip::open(key, &sealed).map_err(|e| {
        anyhow!(
            "{e:#}: another node (or another key) uses this location, or the tip was tampered with; give this node its \
             own prefix"
        )
    })?;
    if tip.journal != journal_id {
        bail!(
            "the destination holds another journal's copy (journal id {}, this journal is {journal_id}): another \
             node, or a journal that was started anew, uses the same location; give this node its own prefix",
            tip.journal
        );
    }
    let local = match Generation::open(journal, tip.generation) {
        Ok(g) => g,
        Err(_) if tip.generation > progress.generation => bail!(
            "the destination's tip (generation {} record {}) is past this journal's newest generation {}: refusing \
             to ship into it (was the local journal replaced by an older copy?)",
            tip.generation,
            tip.seq,
            progress.generation
        ),
        Err(_) => {
            return Ok(Resumed {
                tip: Some(tip),
                start: Start::Newest,
                note: format!(
                    "its tip is in generation {}, no longer kept locally; starting at the newest generation",
                    tip.generation
                ),
            })
        }
    };
    if Context::base_hash(&local.header) != base {
        bail!(
            "the destination's generation {} is not this journal's generation {} (its base differs): refusing to \
             continue it",
            tip.generation,
            tip.generation
        );
    }
    let last = local_last_seq(journal, &local, progress)?;
    if tip.seq > last {
        bail!(
            "the destination's tip (generation {} record {}) is past this journal's last record {} of that \
             generation: refusing to ship into it (was the local journal replaced by an older copy?)",
            tip.generation,
            tip.seq,
            last
        );
    }
    // The object holding the tip's record must be there and authentic.
    let name = tip.object_name();
    let ctx = objects::context(journal_id, &local.header);
    match read_back(store, key, &name, &ctx, tip.object_first, tip.seq) {
        Ok(()) => Ok(Resumed {
            tip: Some(tip),
            start: Start::After { generation: tip.generation, seq: tip.seq },
            note: format!("holds generation {} up to record {} (its tip, read back)", tip.generation, tip.seq),
        }),
        Err(e) => Ok(Resumed {
            tip: Some(tip),
            start: Start::Generation(tip.generation),
            note: format!(
                "its tip names {name}, which does not read back ({e:#}): shipping generation {} again from its base",
                tip.generation
            ),
        }),
    }
}

/// Reads back `name` and checks it authenticates as this journal's object
/// `first..=last` of the context's generation (the base when `last` is 0: its
/// first chunk, which holds its header).
pub fn read_back(store: &dyn Store, key: &Key, name: &str, ctx: &Context, first: u64, last: u64) -> Result<()> {
    if last == 0 {
        let r = store.get(name)?.ok_or_else(|| anyhow!("missing"))?;
        let (got, mut r) = super::crypto::open_reader(key, name, r, objects::base_header_sealed_max())?;
        if got != *ctx {
            bail!("it belongs to another journal or base");
        }
        objects::read_base_header(ctx.generation, &got, &mut r)?;
        return Ok(());
    }
    let sealed = store::get_bounded(store, name, objects::records_sealed_max())?.ok_or_else(|| anyhow!("missing"))?;
    let (got, plain) = super::crypto::open(key, name, &sealed, objects::records_sealed_max())?;
    if got != *ctx {
        bail!("it belongs to another journal or base");
    }
    objects::decode_records(ctx.generation, first, last, &plain)?;
    Ok(())
}
