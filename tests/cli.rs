//! The command line an operator uses on a backup: restore, verify, status,
//! through the real binary, on a journal written by the real plugin.

mod common;

use cln_replica::sim::workload::Workload;
use common::*;
use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

#[test]
fn restore_refuses_to_overwrite_and_leaves_no_partial_file() {
    let (s, node) = backed_up(21, 50);
    let journal = s.journal.to_str().unwrap().to_string();
    let to = s.path("lightningd.sqlite3");
    std::fs::write(&to, b"the operator's file").unwrap();
    let o = run(&["restore", "--from", &journal, "--to", to.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(std::fs::read(&to).unwrap(), b"the operator's file");

    // Not a database: its version cannot be told, so it counts as newer.
    let o = run(&["restore", "--from", &journal, "--to", to.to_str().unwrap(), "--force"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--allow-older"), "{}", text(&o));
    assert_eq!(std::fs::read(&to).unwrap(), b"the operator's file");
    let o = run(&["restore", "--from", &journal, "--to", to.to_str().unwrap(), "--force", "--allow-older", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["data_version"], node.data_version());
    let live = s.path("live.sqlite3");
    node.copy_database(&live).unwrap();
    assert!(cln_replica::dbcompare::compare_files(&live, &to).unwrap().is_empty());
    let names: Vec<_> = std::fs::read_dir(s.tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().contains(".tmp")), "{names:?}");
    // The replaced file is kept aside, never deleted.
    let aside = report["set_aside"][0].as_str().unwrap();
    assert!(aside.contains("lightningd.sqlite3.before-restore-"), "{aside}");
    assert_eq!(std::fs::read(aside).unwrap(), b"the operator's file");
}

#[test]
fn verify_names_the_generation_version_and_offset_of_a_flipped_bit() {
    let (s, _node) = backed_up(21, 40);
    let journal = s.journal.to_str().unwrap().to_string();
    let o = run(&["verify", "--from", &journal]);
    assert!(o.status.success(), "{}", text(&o));

    let segment = s.journal.join("gen-0000000001").join("segment-00000001");
    // Flip one bit of a record (not of zero padding) in the middle of the data.
    let data = std::fs::read(&segment).unwrap();
    let end = data.iter().rposition(|&b| b != 0).unwrap();
    let at = (end / 2..end).find(|&i| data[i] != 0).unwrap() as u64;
    let f = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    f.write_all_at(&[data[at as usize] ^ 0x10], at).unwrap();
    drop(f);

    let o = run(&["verify", "--from", &journal]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("generation 1") && t.contains("data_version") && t.contains("offset"), "{t}");
    let o = run(&["restore", "--from", &journal, "--to", s.path("r.sqlite3").to_str().unwrap()]);
    assert!(!o.status.success(), "a damaged journal must not restore silently");
}

#[test]
fn status_lists_what_the_journal_holds_as_text_and_json() {
    let (s, node) = backed_up(21, 30);
    let journal = s.journal.to_str().unwrap().to_string();
    let o = run(&["status", "--from", &journal, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["journal"]["generations"][0];
    assert_eq!(g["last_version"], node.data_version());
    assert_eq!(g["sealed"], true);
    let o = run(&["status", "--from", &journal]);
    let t = text(&o);
    assert!(o.status.success() && t.contains(&node.data_version().to_string()), "{t}");
}

/// The same changes through the plugin, with `compression` set to `value`.
fn backed_up_with(value: &str) -> (Setup, cln_replica::sim::SimNode) {
    let s = Setup::new(&format!("compression = {value:?}\n"));
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(33);
    for i in 0..60 {
        // Now and then a change of several blocks, which zstd stores compressed.
        let c = if i % 10 == 5 { w.big_change(12_000 * (i / 10 + 1)) } else { w.next_change() };
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    (s, node)
}

#[test]
fn a_compressed_journal_restores_and_verifies_like_a_plain_one() {
    let mut restored = vec![];
    let mut journal_bytes = vec![];
    for value in ["off", "zstd"] {
        let (s, node) = backed_up_with(value);
        let journal = s.journal.to_str().unwrap().to_string();
        let gens = cln_replica::journal::reader::generations(&s.journal).unwrap();
        let records: Vec<_> = gens[0].records().map(Result::unwrap).collect();
        let compressed = records.iter().filter(|r| r.header.is_compressed()).count();
        assert_eq!(compressed > 0, value == "zstd", "{value}: {compressed} records stored compressed");
        journal_bytes.push(records.iter().map(|r| r.header.disk_bytes(gens[0].block_bytes())).sum::<u64>());

        let o = run(&["verify", "--from", &journal, "--json"]);
        assert!(o.status.success(), "{value}: {}", text(&o));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["replayed_to"], node.data_version(), "{value}");

        let to = s.path("restored.sqlite3");
        let o = run(&["restore", "--from", &journal, "--to", to.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{value}: {}", text(&o));
        let live = s.path("live.sqlite3");
        node.copy_database(&live).unwrap();
        assert!(cln_replica::dbcompare::compare_files(&live, &to).unwrap().is_empty(), "{value}");
        restored.push((s, to));
    }
    assert!(
        cln_replica::dbcompare::compare_files(&restored[0].1, &restored[1].1).unwrap().is_empty(),
        "both journals restore the same database"
    );
    assert!(journal_bytes[1] < journal_bytes[0], "compressed records take fewer blocks: {journal_bytes:?}");
}
