//! Bringing a destination back: a survey of what it holds (its tip, and per
//! generation the base and the records it holds without a hole, each end
//! authenticated), a plan (which generations to fetch, checked against the
//! tip), then the fetch: every object downloaded, authenticated, checked
//! against its name, its journal, its generation's base and its neighbours,
//! and written to disk as it arrives, as an ordinary local journal which the
//! usual restore and verify then read. So a remote restore replays exactly as
//! a local one does, in bounded memory.
//!
//! Refused, naming the object: one that fails authentication (altered,
//! truncated, or swapped for another name), one encrypted with another key,
//! one of another journal or another base, one whose content disagrees with
//! its name, a hole in a generation's records, records without a base; and a
//! destination whose objects do not reach its own tip (newest objects lost or
//! hidden), unless the operator accepts the older state (`--allow-older`).

use super::board::Reach;
use super::crypto::{self, Context, Key};
use super::objects::{self, Entry, Tip};
use super::position;
use super::store::{self, Store};
use crate::journal::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::journal::identity::JournalId;
use crate::journal::layout;
use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Which state to bring back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The generation that reaches furthest.
    Newest,
    /// The newest generation that holds this data_version (and the one
    /// before it if that one is filtered and starts exactly there).
    At(u32),
    /// All of them (verify).
    All,
}

/// One generation at a destination.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSurvey {
    pub generation: u64,
    #[serde(skip)]
    pub header: Option<SegmentHeader>,
    pub base_version: Option<u32>,
    pub base_kind: Option<&'static str>,
    pub filter: Option<&'static str>,
    pub created_unix_ms: Option<u64>,
    /// The last record held with every one before it (0: the base only).
    pub seq: u64,
    /// Its data_version and time (the base's when `seq` is 0).
    pub data_version: Option<u32>,
    pub time_unix_ms: Option<u64>,
    /// The objects that hold records 1..=seq, in order.
    #[serde(skip)]
    pub chain: Vec<(u64, u64, String)>,
    /// Why the generation cannot be restored, or where its records stop.
    pub problem: Option<String>,
    #[serde(skip)]
    pub journal: Option<JournalId>,
}

impl GenerationSurvey {
    pub fn reach(&self) -> Option<Reach> {
        Some(Reach { generation: self.generation, seq: self.seq, data_version: self.data_version? })
    }

    fn restorable(&self) -> bool {
        self.header.is_some() && self.data_version.is_some()
    }
}

/// What a destination holds.
#[derive(Debug, Clone, Serialize)]
pub struct Survey {
    pub destination: String,
    pub tip: Option<Tip>,
    /// Why the tip could not be used.
    pub tip_problem: Option<String>,
    pub generations: Vec<GenerationSurvey>,
}

impl Survey {
    /// The restorable generation that reaches furthest.
    pub fn furthest(&self) -> Option<&GenerationSurvey> {
        let mut best: Option<&GenerationSurvey> = None;
        for g in self.generations.iter().filter(|g| g.restorable()) {
            let r = g.reach().expect("restorable");
            if best.is_none_or(|b| r.at_least(&b.reach().expect("restorable"))) {
                best = Some(g);
            }
        }
        best
    }

    /// The journal the destination holds (its tip's, or its newest base's).
    pub fn journal(&self) -> Option<JournalId> {
        self.tip.map(|t| t.journal).or_else(|| self.generations.iter().rev().find_map(|g| g.journal))
    }
}

fn tip_reach(t: &Tip) -> Reach {
    Reach { generation: t.generation, seq: t.seq, data_version: t.data_version }
}

/// Reads the tip, lists the generations, and authenticates each one's base
/// header and the last object of its records: what the destination holds,
/// without downloading it.
pub fn survey(store: &dyn Store, key: &Key) -> Result<Survey> {
    let mut out = Survey { destination: store.describe(), tip: None, tip_problem: None, generations: vec![] };
    match store::get_bounded(store, objects::TIP_NAME, objects::tip_sealed_max()) {
        Ok(None) => out.tip_problem = Some("the destination has no tip object".into()),
        Ok(Some(sealed)) => match Tip::open(key, &sealed) {
            Ok((t, _)) => out.tip = Some(t),
            Err(e) => out.tip_problem = Some(format!("{e:#}")),
        },
        Err(e) => bail!("cannot read {}: {e}", store.describe()),
    }
    let mut gens: Vec<u64> = store.list("")?.iter().filter_map(|e| objects::parse_generation_dir(e)).collect();
    gens.sort_unstable();
    for g in gens {
        out.generations.push(survey_generation(store, key, g, out.tip.map(|t| t.journal))?);
    }
    Ok(out)
}

fn base_header(store: &dyn Store, key: &Key, g: u64) -> Result<(SegmentHeader, Context)> {
    let name = objects::base_name(g);
    let r = store.get(&name)?.ok_or_else(|| anyhow!("generation {g} has no base object ({name} is missing)"))?;
    let (ctx, mut r) = crypto::open_reader(key, &name, r, objects::base_header_sealed_max())
        .map_err(|e| anyhow!("object {name} refused: {e}"))?;
    let h = objects::read_base_header(g, &ctx, &mut r).map_err(|e| anyhow!("object {name} refused: {e:#}"))?;
    Ok((h, ctx))
}

fn survey_generation(store: &dyn Store, key: &Key, g: u64, journal: Option<JournalId>) -> Result<GenerationSurvey> {
    let mut s = GenerationSurvey {
        generation: g,
        header: None,
        base_version: None,
        base_kind: None,
        filter: None,
        created_unix_ms: None,
        seq: 0,
        data_version: None,
        time_unix_ms: None,
        chain: vec![],
        problem: None,
        journal: None,
    };
    let entries = store.list(&objects::generation_dir(g))?;
    let (header, ctx) = match base_header(store, key, g) {
        Ok(x) => x,
        Err(e) => {
            s.problem = Some(format!("{e:#}"));
            return Ok(s);
        }
    };
    s.journal = Some(ctx.journal);
    if journal.is_some_and(|j| j != ctx.journal) {
        s.problem = Some(format!(
            "object {} belongs to another journal (id {}, the tip's is {}): refused",
            objects::base_name(g),
            ctx.journal,
            journal.expect("some")
        ));
        return Ok(s);
    }
    s.base_version = Some(header.base_version);
    s.base_kind = Some(header.base_kind.name());
    s.filter = Some(header.filter.name());
    s.created_unix_ms = Some(header.created_unix_ms);
    s.data_version = Some(header.base_version);
    s.time_unix_ms = Some(header.created_unix_ms);
    let mut ranges: Vec<(u64, u64, String)> = vec![];
    for e in &entries {
        match objects::parse_entry(e) {
            Entry::Base => {}
            Entry::Records { first, last } => ranges.push((first, last, format!("{}{e}", objects::generation_dir(g)))),
            Entry::Unknown(name) => {
                s.problem = Some(format!(
                    "generation {g} holds an object cln-replica did not write: {}{name}",
                    objects::generation_dir(g)
                ));
                s.header = Some(header);
                s.data_version = None;
                return Ok(s);
            }
        }
    }
    s.header = Some(header);
    // The chain of objects from record 1 without a hole, preferring at each
    // step the object that reaches furthest. Its last object is read back: a
    // name anyone can plant is not trusted until it authenticates; one that
    // does not is left out and the chain rebuilt without it.
    let mut refused = vec![];
    loop {
        let (chain, hole) = build_chain(&ranges);
        let Some((first, last, name)) = chain.last().cloned() else {
            s.problem = hole;
            break;
        };
        let sealed = store::get_bounded(store, &name, objects::records_sealed_max())?;
        let checked = sealed
            .ok_or_else(|| anyhow!("missing (it was listed a moment ago)"))
            .and_then(|b| crypto::open(key, &name, &b, objects::records_sealed_max()).map_err(|e| anyhow!("{e}")))
            .and_then(|(c, plain)| {
                if c != ctx {
                    bail!("it belongs to another journal or another base of generation {g}");
                }
                objects::decode_records(g, first, last, &plain)
            });
        match checked {
            Ok(recs) => {
                let h = recs.last().expect("decode_records checked the count").header;
                s.seq = last;
                s.data_version = Some(h.data_version);
                s.time_unix_ms = Some(h.time_unix_ms);
                s.chain = chain;
                s.problem = hole;
                break;
            }
            Err(e) => {
                refused.push(format!("object {name} refused: {e:#}"));
                ranges.retain(|r| r.2 != name);
            }
        }
    }
    if !refused.is_empty() {
        let p = refused.join("; ");
        s.problem = Some(match s.problem.take() {
            Some(h) => format!("{p}; {h}"),
            None => p,
        });
    }
    Ok(s)
}

/// The objects holding records 1.. without a hole, and a description of the
/// first hole after them, if objects follow it.
fn build_chain(ranges: &[(u64, u64, String)]) -> (Vec<(u64, u64, String)>, Option<String>) {
    let mut chain: Vec<(u64, u64, String)> = vec![];
    let mut next = 1u64;
    loop {
        let best = ranges.iter().filter(|r| r.0 <= next && r.1 >= next).max_by_key(|r| r.1);
        match best {
            Some(r) => {
                next = r.1 + 1;
                chain.push(r.clone());
            }
            None => break,
        }
    }
    let after = ranges.iter().filter(|r| r.0 > next).min_by_key(|r| r.0);
    let hole = after.map(|r| {
        format!(
            "records {next}..={} are missing (no object holds them{}; the next object is {})",
            r.0 - 1,
            chain.last().map(|p| format!("; the previous object is {}", p.2)).unwrap_or_default(),
            r.2
        )
    });
    (chain, hole)
}

/// What to fetch, decided up front.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Generations to fetch, oldest first, with the last record of each.
    pub generations: Vec<(u64, u64)>,
    /// The state the newest of them reaches.
    pub reach: Reach,
    pub time_unix_ms: u64,
    /// Said before restoring (an older state accepted, generations left out).
    pub notes: Vec<String>,
}

/// Why a restore from this destination is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{destination} holds no restorable generation{}", if .problems.is_empty() { String::new() } else { format!(": {}", .problems.join("; ")) })]
    Nothing { destination: String, problems: Vec<String> },
    #[error("{0}")]
    NotAt(String),
    /// The objects do not reach what the tip says the destination held.
    #[error("{0}")]
    BehindTip(String),
}

fn describe_time(ms: u64) -> String {
    crate::clock::format_unix_ms(ms)
}

/// Decides which generations to fetch. Without `allow_older`, refuses a
/// destination whose objects do not reach its tip, or that has no tip.
pub fn plan(s: &Survey, which: Which, allow_older: bool) -> Result<Plan, PlanError> {
    let problems: Vec<String> = s.generations.iter().filter_map(|g| g.problem.clone()).collect();
    let nothing = || PlanError::Nothing { destination: s.destination.clone(), problems: problems.clone() };
    let restorable: Vec<&GenerationSurvey> = s.generations.iter().filter(|g| g.restorable()).collect();
    let chosen: Vec<&GenerationSurvey> = match which {
        Which::All => {
            if let Some(p) = s.generations.iter().find_map(|g| g.problem.clone()) {
                return Err(PlanError::NotAt(p));
            }
            restorable.clone()
        }
        Which::Newest => vec![s.furthest().ok_or_else(nothing)?],
        Which::At(v) => {
            let holds = |g: &GenerationSurvey| g.base_version.is_some_and(|b| b <= v) && g.data_version >= Some(v);
            let Some(g) = restorable.iter().rev().find(|g| holds(g)) else {
                if restorable.is_empty() {
                    return Err(nothing());
                }
                return Err(PlanError::NotAt(format!(
                    "no generation at {} holds data_version {v} (they hold: {})",
                    s.destination,
                    restorable
                        .iter()
                        .map(|g| format!(
                            "generation {} {}..={}",
                            g.generation,
                            g.base_version.unwrap_or(0),
                            g.data_version.unwrap_or(0)
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let filtered_at_base = g.base_version == Some(v) && g.filter != Some(crate::filter::Filter::None.name());
            let before = restorable.iter().rev().find(|p| p.generation < g.generation && holds(p));
            match before {
                // Fetch the whole one before as well: the restore prefers it.
                Some(p) if filtered_at_base => vec![*p, *g],
                _ => vec![*g],
            }
        }
    };
    let newest = *chosen.last().ok_or_else(nothing)?;
    let reach = newest.reach().expect("restorable");
    let mut notes = vec![];
    match (&s.tip, which) {
        (_, Which::At(_)) => {}
        (None, _) => {
            let why = s.tip_problem.clone().unwrap_or_else(|| "no tip".into());
            if !allow_older {
                return Err(PlanError::BehindTip(format!(
                    "{}: {why}, so nothing says whether the objects found (up to data_version {}) are its newest. \
                     Restore from another destination, or give --allow-older to accept this state",
                    s.destination, reach.data_version
                )));
            }
            notes.push(format!("{}: {why}; accepted with --allow-older", s.destination));
        }
        (Some(t), _) => {
            if !reach.at_least(&tip_reach(t)) {
                let tip_gen = s.generations.iter().find(|g| g.generation == t.generation);
                let missing = match tip_gen {
                    None => format!("generation {} is missing entirely", t.generation),
                    Some(g) if g.header.is_none() => g.problem.clone().unwrap_or_default(),
                    Some(g) => format!(
                        "records {}..={} of generation {} are missing{}",
                        g.seq + 1,
                        t.seq,
                        t.generation,
                        g.problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
                    ),
                };
                let why = format!(
                    "{}: its tip (written {}, counter {}) says it held generation {} up to record {} (data_version \
                     {}, of {}), but the objects found reach only generation {} record {} (data_version {}): {missing}. \
                     Its newest objects were lost or are hidden",
                    s.destination,
                    describe_time(t.written_unix_ms),
                    t.counter,
                    t.generation,
                    t.seq,
                    t.data_version,
                    describe_time(t.time_unix_ms),
                    reach.generation,
                    reach.seq,
                    reach.data_version
                );
                if !allow_older {
                    return Err(PlanError::BehindTip(format!(
                        "{why}. Restore from another destination, or give --allow-older to accept the older state"
                    )));
                }
                notes.push(format!("{why}; accepted with --allow-older"));
            }
        }
    }
    Ok(Plan {
        generations: chosen.iter().map(|g| (g.generation, g.seq)).collect(),
        reach,
        time_unix_ms: newest.time_unix_ms.unwrap_or(0),
        notes,
    })
}

#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub generations: Vec<u64>,
    pub objects: u64,
    pub bytes: u64,
}

/// Downloads the planned generations into `into` (an empty directory), laid
/// out as a local journal, writing as it fetches.
pub fn fetch(store: &dyn Store, key: &Key, s: &Survey, p: &Plan, into: &Path) -> Result<Fetched> {
    let mut out = Fetched::default();
    if let Some(j) = s.journal() {
        fs::write(into.join(crate::journal::identity::ID_FILE), format!("{j}\n"))
            .context("cannot write the journal id")?;
    }
    for &(g, seq) in &p.generations {
        let gs = s.generations.iter().find(|x| x.generation == g).expect("planned from the survey");
        write_generation(store, key, gs, seq, into, &mut out)?;
        out.generations.push(g);
    }
    Ok(out)
}

fn write_generation(
    store: &dyn Store,
    key: &Key,
    gs: &GenerationSurvey,
    upto: u64,
    into: &Path,
    out: &mut Fetched,
) -> Result<()> {
    let g = gs.generation;
    let dir = layout::generation_dir(into, g);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The base, streamed to the snapshot file.
    let name = objects::base_name(g);
    let r = store.get(&name)?.ok_or_else(|| anyhow!("object {name} is missing (it was listed a moment ago)"))?;
    let (ctx, mut r) = crypto::open_reader(key, &name, r, objects::base_header_sealed_max())
        .map_err(|e| anyhow!("object {name} refused: {e}"))?;
    let header = objects::read_base_header(g, &ctx, &mut r).map_err(|e| anyhow!("object {name} refused: {e:#}"))?;
    if Some(&header) != gs.header.as_ref() {
        bail!("object {name} changed while it was being restored");
    }
    let snap_path = dir.join(layout::SNAPSHOT_FILE);
    let mut snap =
        std::io::BufWriter::with_capacity(1 << 20, fs::File::create(&snap_path).context("cannot create the snapshot")?);
    objects::copy_base_snapshot(&header, r, &mut snap).map_err(|e| anyhow!("object {name} refused: {e:#}"))?;
    snap.flush().context("cannot write the snapshot")?;
    out.objects += 1;
    out.bytes += header.snapshot_bytes;
    // The records, block-aligned as the writer places them, after a header
    // block written once their length is known.
    let block = header.block_bytes as u64;
    let path = layout::segment_path(&dir, 1);
    let mut seg = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    seg.write_all(&vec![0u8; block as usize])?;
    let mut written = 0u64;
    let mut next = 1u64;
    let padding = vec![0u8; block as usize];
    for (first, last, name) in gs.chain.iter().filter(|c| c.0 <= upto) {
        let sealed = store::get_bounded(store, name, objects::records_sealed_max())?
            .ok_or_else(|| anyhow!("object {name} is missing (it was listed a moment ago)"))?;
        let (c, plain) = crypto::open(key, name, &sealed, objects::records_sealed_max())
            .map_err(|e| anyhow!("object {name} refused: {e}"))?;
        if c != ctx {
            bail!("object {name} refused: it belongs to another journal or another base of generation {g}");
        }
        out.objects += 1;
        out.bytes += plain.len() as u64;
        let recs =
            objects::decode_records(g, *first, *last, &plain).map_err(|e| anyhow!("object {name} refused: {e:#}"))?;
        for r in &recs {
            if r.header.seq < next || r.header.seq > upto {
                continue;
            }
            assert_eq!(r.header.seq, next, "the chain has no hole and decode_records checked the sequence");
            seg.write_all(&r.bytes)?;
            let pad = (r.bytes.len() as u64).next_multiple_of(block) - r.bytes.len() as u64;
            seg.write_all(&padding[..pad as usize])?;
            written += r.bytes.len() as u64 + pad;
            next += 1;
        }
    }
    if next != upto + 1 {
        bail!("generation {g}: records {next}..={upto} were not found although the survey saw them");
    }
    let segment_bytes = block + written.max(block);
    let mut f = seg.into_inner().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    f.set_len(segment_bytes)?;
    let seg_header = SegmentHeader { segment: 1, segment_bytes, ..header.clone() };
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    head.copy_from_slice(&seg_header.encode());
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&head)?;
    Ok(())
}

/// Checks that `name` at `store` is this journal's object (for tests and the
/// conformance suite).
pub fn check_object(store: &dyn Store, key: &Key, name: &str, ctx: &Context, first: u64, last: u64) -> Result<()> {
    position::read_back(store, key, name, ctx, first, last)
}
