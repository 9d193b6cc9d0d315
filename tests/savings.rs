//! `cln-replica bench --trace`'s code path at a tiny size: the real binary as
//! the plugin, a recorded trace and a generated mainnet-shaped one, each
//! replayed under the four combinations. Structure only, no timing.

use cln_replica::savings::{self, Trace};
use cln_replica::sim::trace;

#[test]
fn four_combinations_per_trace_and_the_filter_never_adds_bytes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let nodes = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let o = savings::Options {
        dir: std::fs::canonicalize(dir.path()).unwrap(),
        nodes_dir: std::fs::canonicalize(nodes.path()).unwrap(),
        exe: env!("CARGO_BIN_EXE_cln-replica").into(),
        floor_samples: 8,
    };
    // A recorded trace: the head of CLN's first start (schema, funding, a channel).
    let mut calls = trace::first_start();
    calls.truncate(150);
    let recorded = Trace { name: "first-start-head".into(), calls, blocks: 0, generated: false };
    let generated = savings::load_trace("mainnet:4:12").unwrap();
    assert_eq!(generated.blocks, 4);
    trace::check(&generated.calls).unwrap();

    let mut rows = vec![];
    for t in [&recorded, &generated] {
        let r = savings::run_trace(&o, t).unwrap();
        assert_eq!(r.len(), 4, "{}: one row per combination", t.name);
        for (row, (f, _)) in r.iter().zip(savings::COMBINATIONS) {
            assert_eq!(row.filter, f.name());
            assert!(row.journal_bytes > 0 && row.snapshot_bytes > 0 && row.snapshot_zstd_bytes > 0, "{row:?}");
            assert_eq!(row.changes as usize, t.calls.len() - trace::FIRST_START_SCHEMA_CALLS);
            // On-device bytes are whole blocks.
            assert_eq!(row.journal_bytes % 4096, 0, "{row:?}");
        }
        // Rows 0/1 are filter none, 2/3 filter caches, with the same compression.
        for (none, caches) in [(&r[0], &r[2]), (&r[1], &r[3])] {
            assert!(caches.journal_bytes <= none.journal_bytes, "{caches:?} vs {none:?}");
            assert!(caches.snapshot_bytes <= none.snapshot_bytes, "{caches:?} vs {none:?}");
        }
        if t.generated {
            // Block processing is nearly all utxoset and its records span
            // several blocks: the filter and compression each must save.
            assert!(r[2].journal_bytes < r[0].journal_bytes && r[2].snapshot_bytes < r[0].snapshot_bytes, "{r:?}");
            assert!(r[1].journal_bytes < r[0].journal_bytes, "compression saves nothing: {r:?}");
        }
        rows.extend(r);
    }
    assert!(rows[0].htlcs > 0, "the recorded head adds HTLCs");
    let day = savings::day_model(&rows, 100);
    assert_eq!(day.len(), 4);
    for d in &day {
        assert!(d.bytes_per_block.is_some_and(|b| b > 0.0) && d.bytes_per_htlc.is_some_and(|b| b > 0.0), "{d:?}");
        assert!(d.bytes_per_day > 0.0);
    }
    for d in [&dir, &nodes] {
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none(), "the work directories are removed");
    }
}
