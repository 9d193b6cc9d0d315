//! Bringing a destination back: every object is downloaded, authenticated,
//! checked against its name and its neighbours, and written out as an
//! ordinary local journal, which the usual restore and verify then read. So
//! a remote restore replays exactly as a local one does.
//!
//! Refused, naming the object: one that fails authentication (altered,
//! truncated, or swapped for another name), one encrypted with another key,
//! one whose content disagrees with its name, a hole in a generation's
//! sequence of records, records without a base.

use super::crypto::{self, Key};
use super::objects::{self, Entry};
use super::store::Store;
use crate::journal::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::journal::layout;
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Which generations to bring back.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    /// The newest generation with a base.
    Newest,
    /// The newest generation whose base is at or before this data_version
    /// (and the one before it if that one is filtered and starts exactly there).
    At(u32),
    /// All of them (verify).
    All,
}

#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub generations: Vec<u64>,
    pub objects: u64,
    pub bytes: u64,
    /// Generations found without a base (being uploaded, or damaged).
    pub skipped: Vec<String>,
}

fn get_open(store: &dyn Store, key: &Key, name: &str) -> Result<Vec<u8>> {
    let sealed = store.get(name)?.ok_or_else(|| anyhow!("object {name} is missing (it was listed a moment ago)"))?;
    crypto::open(key, name, &sealed).map_err(|e| anyhow!("object {name} refused: {e}"))
}

/// Downloads generations from `store` into `into` (an empty directory),
/// laid out as a local journal.
pub fn fetch(store: &dyn Store, key: &Key, which: Which, into: &Path) -> Result<Fetched> {
    let mut gens: Vec<u64> = store.list("")?.iter().filter_map(|e| objects::parse_generation_dir(e)).collect();
    gens.sort_unstable();
    if gens.is_empty() {
        bail!("{} holds no generation: nothing to restore (has the plugin shipped to it?)", store.describe());
    }
    let mut out = Fetched::default();
    let mut chosen_done = false;
    for &g in gens.iter().rev() {
        if chosen_done {
            break;
        }
        let base_name = objects::base_name(g);
        let entries = store.list(&objects::generation_dir(g))?;
        if !entries.iter().any(|e| e == "base") {
            let why = format!("generation {g} has no base object ({base_name} is missing)");
            match which {
                Which::All => bail!("{why}"),
                _ => {
                    out.skipped.push(why);
                    continue;
                }
            }
        }
        let plain = get_open(store, key, &base_name)?;
        let (header, snapshot) =
            objects::decode_base(g, &plain).map_err(|e| anyhow!("object {base_name} refused: {e:#}"))?;
        out.objects += 1;
        out.bytes += plain.len() as u64;
        match which {
            Which::At(v) if header.base_version > v => continue,
            // The generation before a filtered one may reach v with its
            // caches kept: fetch it too, the restore prefers it.
            Which::At(v) if header.base_version == v && header.filter != crate::filter::Filter::None => {}
            Which::All => {}
            _ => chosen_done = true,
        }
        write_generation(store, key, g, &header, &snapshot, &entries, into, &mut out)?;
        out.generations.push(g);
    }
    if out.generations.is_empty() {
        match which {
            Which::At(v) => bail!("no generation at {} starts at or before data_version {v}", store.describe()),
            _ => bail!("no complete generation at {}: {}", store.describe(), out.skipped.join("; ")),
        }
    }
    out.generations.sort_unstable();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn write_generation(
    store: &dyn Store,
    key: &Key,
    g: u64,
    header: &SegmentHeader,
    snapshot: &[u8],
    entries: &[String],
    into: &Path,
    out: &mut Fetched,
) -> Result<u64> {
    let mut ranges = vec![];
    for e in entries {
        match objects::parse_entry(e) {
            Entry::Base => {}
            Entry::Records { first, last } => ranges.push((first, last, e.clone())),
            Entry::Unknown(name) => {
                bail!("generation {g} holds an object cln-replica did not write: {}{name}", objects::generation_dir(g))
            }
        }
    }
    ranges.sort();
    let dir = layout::generation_dir(into, g);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join(layout::SNAPSHOT_FILE), snapshot).context("cannot write the snapshot")?;
    let block = header.block_bytes as u64;
    // Records are placed block-aligned, as the writer places them.
    let mut records: Vec<u8> = vec![];
    let mut next = 1u64;
    let mut previous: Option<String> = None;
    for (first, last, entry) in ranges {
        let name = format!("{}{entry}", objects::generation_dir(g));
        if last < next {
            continue; // wholly covered by an earlier object (a retried upload)
        }
        if first > next {
            bail!(
                "generation {g}: records {next}..={} are missing (no object holds them{}; the next object is {name})",
                first - 1,
                previous.map(|p| format!("; the previous object is {p}")).unwrap_or_default()
            );
        }
        let plain = get_open(store, key, &name)?;
        out.objects += 1;
        out.bytes += plain.len() as u64;
        let recs =
            objects::decode_records(g, first, last, &plain).map_err(|e| anyhow!("object {name} refused: {e:#}"))?;
        for r in recs {
            if r.header.seq < next {
                continue;
            }
            assert_eq!(r.header.seq, next, "decode_records checked the sequence");
            let start = records.len();
            records.extend_from_slice(&r.bytes);
            records.resize(start + (r.bytes.len() as u64).next_multiple_of(block) as usize, 0);
            next += 1;
        }
        previous = Some(name);
    }
    let segment_bytes = block + (records.len() as u64).max(block);
    let seg_header = SegmentHeader { segment: 1, segment_bytes, ..header.clone() };
    let mut head = vec![0u8; block as usize];
    head[..SEGMENT_HEADER_BYTES].copy_from_slice(&seg_header.encode());
    let path = layout::segment_path(&dir, 1);
    let mut f = fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&head)?;
    f.write_all(&records)?;
    f.set_len(segment_bytes)?;
    Ok(next - 1)
}

/// What `--from` names for restore and verify: a local journal directory, or
/// a destination URL with the key to read it.
pub struct Source {
    pub from: String,
    pub key_file: Option<std::path::PathBuf>,
    pub hsm_secret: Option<std::path::PathBuf>,
}

impl Source {
    pub fn is_remote(&self) -> bool {
        super::store::is_url(&self.from)
    }

    /// Downloads the remote into a new temporary directory under `near`
    /// (kept alive by the returned guard) and returns it as a journal path.
    pub fn materialise(&self, which: Which, near: &Path) -> Result<(tempfile::TempDir, Fetched)> {
        let key = super::shipper::Replicator::load_key(self.key_file.as_deref(), self.hsm_secret.as_deref())
            .context("restoring from a destination needs its key: --key-file FILE or --hsm-secret FILE")?;
        let store = super::open_store(&super::DestinationConfig::new(&self.from))?;
        let dir = tempfile::Builder::new()
            .prefix(".cln-replica-fetch-")
            .tempdir_in(near)
            .with_context(|| format!("cannot create a temporary directory in {}", near.display()))?;
        let fetched = fetch(store.as_ref(), &key, which, dir.path())?;
        Ok((dir, fetched))
    }
}
