//! Traces of `db_write` calls recorded from a real lightningd
//! (`../shared/cln/recorder.py`: one `{"params": {...}}` JSON line per call),
//! and the one kept in the repository: CLN v26.06's first start of a node,
//! funding, channels and payments (tests/fixtures/, zstd-compressed).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// One recorded hook call, exactly as lightningd sent it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TraceCall {
    pub data_version: u32,
    pub writes: Vec<String>,
}

#[derive(Deserialize)]
struct Line {
    params: TraceCall,
}

/// The fixture recorded from a node's very first start (1500 calls).
pub const FIRST_START_ZST: &[u8] = include_bytes!("../../tests/fixtures/cln-v26.06-first-start.jsonl.zst");

/// Number of leading calls of the fixture that are lightningd's schema
/// creation and migrations (data_versions 1, 1 (PRAGMA), 2, 2 (PRAGMA), 3).
pub const FIRST_START_SCHEMA_CALLS: usize = 5;

pub fn parse<R: Read>(r: R) -> Result<Vec<TraceCall>> {
    let mut out = vec![];
    for (i, line) in BufReader::new(r).lines().enumerate() {
        let line = line.context("cannot read the trace")?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).with_context(|| format!("trace line {}", i + 1))?;
        out.push(l.params);
    }
    Ok(out)
}

/// Loads a trace file, zstd-compressed if its name ends in `.zst`.
pub fn load(path: &Path) -> Result<Vec<TraceCall>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "zst") {
        parse(zstd::Decoder::new(f)?)
    } else {
        parse(f)
    }
}

/// The fixture recorded from a node's first start.
pub fn first_start() -> Vec<TraceCall> {
    let calls = parse(zstd::Decoder::new(FIRST_START_ZST).expect("zstd fixture")).expect("fixture parses");
    assert!(calls.len() >= FIRST_START_SCHEMA_CALLS, "fixture holds the schema");
    calls
}

/// CLN's schema as lightningd creates it on a node's first start.
pub fn first_start_schema() -> Vec<TraceCall> {
    let mut calls = first_start();
    calls.truncate(FIRST_START_SCHEMA_CALLS);
    calls
}

/// Checks that a trace is what lightningd would send: data_versions
/// continuous, transactions ending with the increment.
pub fn check(calls: &[TraceCall]) -> Result<()> {
    let mut tip = crate::state::Tip::At {
        version: calls.first().map_or(0, |c| c.data_version.wrapping_sub(1)),
        pending_txn: false,
    };
    for (i, c) in calls.iter().enumerate() {
        let kind = crate::state::classify(c.data_version, &c.writes)?;
        match crate::state::decide(tip, c.data_version, kind) {
            crate::state::Decision::Append => {}
            d => {
                bail!("trace call {} (data_version {}) does not follow the previous one: {d:?}", i + 1, c.data_version)
            }
        }
        tip = crate::state::tip_after(c.data_version, kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_is_a_continuous_first_start() {
        let calls = first_start();
        assert_eq!(calls[0].data_version, 1);
        assert!(calls[0].writes.len() > 200, "the whole initial schema");
        assert_eq!(calls[1].writes, vec!["PRAGMA foreign_keys = OFF;"]);
        assert_eq!(calls[3].writes, vec!["PRAGMA foreign_keys = ON;"]);
        check(&calls).unwrap();
    }
}
