//! A trace shaped like a mainnet node's block processing, as lightningd
//! v26.06 writes it (the savings benchmark: how many bytes the chain costs the
//! journal, with and without `filter = "caches"`).
//!
//! What one new block writes, read in CLN's source (commit 090f4b0e6981) and
//! checked against a trace recorded from the real lightningd on a fake chain:
//!
//! 1. One transaction per block (`get_new_block` runs inside the handling of
//!    the backend plugin's `getrawblockbyheight` answer, which lightningd
//!    wraps in one database transaction): `wallet_block_add`'s
//!    `INSERT INTO blocks`, then `topo_add_utxos`' `wallet_utxoset_add` for
//!    every P2WSH output of every non-coinbase transaction, then
//!    `topo_update_spends`' `wallet_outpoint_spend`, whose
//!    `UPDATE utxoset SET spendheight` runs only for outpoints lightningd
//!    tracks (its in-memory filter of `utxoset`).
//! 2. `updates_complete` once caught up (one call per block on mainnet, where
//!    blocks come one at a time): `UPDATE vars SET intval=H WHERE
//!    name='last_processed_block';`.
//! 3. gossipd's answer to the new block height: `wallet_utxoset_prune`'s
//!    `DELETE FROM utxoset WHERE spendheight < H - UTXO_PRUNE_DEPTH`, written
//!    even when it deletes nothing. UTXO_PRUNE_DEPTH is 144 in v26.06
//!    (wallet/wallet.c), not 100 as older notes say.
//!
//! Left out: our own outputs and transactions (`our_outputs`, `our_txs`,
//! `transactions`: only when a block touches our wallet), `channeltxs` and
//! onchaind (closes), leased channels' `channel_blockheights` updates.
//! Payments can be interleaved at a rate per day (the off-chain changes of
//! [`super::workload`]); the benchmark leaves them at 0 and takes the bytes
//! of a payment from the real trace instead.
//!
//! The trace starts with CLN's real schema ([`super::trace::first_start_schema`])
//! and every call ends with lightningd's data_version increment, so it passes
//! [`super::trace::check`] and applies to a real SQLite database.

use super::node::Change;
use super::trace::TraceCall;
use super::workload::Workload;
use crate::rng::SplitMix64 as Rng;
use crate::state::INCREMENT_PREFIX;

/// Blocks a day on mainnet: one per ten minutes by design.
pub const BLOCKS_PER_DAY: u64 = 144;

/// lightningd's `UTXO_PRUNE_DEPTH` (wallet/wallet.c, v26.06): spent `utxoset`
/// rows are deleted once their spend is this many blocks deep.
pub const UTXO_PRUNE_DEPTH: u64 = 144;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub blocks: u64,
    /// Height of the first block (mainnet was near 925,000 in late 2025).
    pub start_height: u64,
    /// P2WSH outputs per block, each one `INSERT INTO utxoset`. 150 is an
    /// estimate: P2WSH is a few per cent of the 5,000-10,000 outputs of a
    /// 2024-25 mainnet block. What we can cite are stocks, not flows: about
    /// 881,000 unspent P2WSH outputs in 2022 (txstats.com, quoted in
    /// bitcoin.stackexchange.com/q/114043), and a CLN node's `utxoset` table
    /// of about 180 MB at height 815,163 (ElementsProject/lightning#6843).
    pub p2wsh_outputs_per_block: u64,
    /// Spends of tracked outpoints per block (`UPDATE utxoset SET
    /// spendheight`): a stable P2WSH set spends about as many as it creates,
    /// so slightly fewer than the outputs. Only outpoints created earlier in
    /// the trace can be spent (a node tracks what it has seen).
    pub tracked_spends_per_block: u64,
    /// Payments (and forwards) per day, interleaved with the blocks as
    /// off-chain changes of the CLN-shaped workload (several hook calls each).
    pub payments_per_day: u64,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            blocks: BLOCKS_PER_DAY,
            start_height: 925_000,
            p2wsh_outputs_per_block: 150,
            tracked_spends_per_block: 140,
            payments_per_day: 0,
            seed: 9,
        }
    }
}

/// Hook calls one payment takes in [`Workload::next_offchain_change`] terms:
/// the HTLC offered and resolved (each with its commitment) and the payment
/// row written and updated.
const CHANGES_PER_PAYMENT: u64 = 4;

/// Random bytes as the lowercase `x'..'` literal lightningd's expanded SQL has.
fn blob(r: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(3 + 2 * n);
    s.push_str("x'");
    for i in 0..n {
        if i % 8 == 0 {
            let w = r.next_u64();
            for b in w.to_le_bytes().iter().take(n - i) {
                s.push_str(&format!("{b:02x}"));
            }
        }
    }
    s.push('\'');
    s
}

/// The trace: the schema calls, then one block after another.
pub fn generate(p: &Params) -> Vec<TraceCall> {
    let mut r = crate::rng::SplitMix64(p.seed);
    let mut calls = super::trace::first_start_schema();
    let mut version = calls.last().map_or(0, |c| c.data_version);
    let mut push = |calls: &mut Vec<TraceCall>, mut writes: Vec<String>| {
        writes.push(format!("{INCREMENT_PREFIX}{version}"));
        version += 1;
        calls.push(TraceCall { data_version: version, writes });
    };
    let mut workload = Workload::new(p.seed);
    // Tracked unspent outpoints (txid literal, outnum).
    let mut unspent: Vec<(String, u64)> = vec![];
    let mut prev_hash = blob(&mut r, 32);
    // Payments are spread evenly: the fraction owed so far, in millionths.
    let mut payment_credit: u64 = 0;
    for height in p.start_height..p.start_height + p.blocks {
        let mut s = vec![];
        let hash = blob(&mut r, 32);
        s.push(format!("INSERT INTO blocks (height, hash, prev_hash) VALUES ({height}, {hash}, {prev_hash});"));
        prev_hash = hash;
        for _ in 0..p.p2wsh_outputs_per_block {
            let txid = blob(&mut r, 32);
            let outnum = r.below(4);
            s.push(format!(
                "INSERT INTO utxoset ( txid, outnum, blockheight, spendheight, txindex, scriptpubkey, satoshis) \
                 VALUES({txid}, {outnum}, {height}, NULL, {}, x'0020{}', {});",
                1 + r.below(4000),
                &blob(&mut r, 32)[2..66],
                10_000 + r.below(50_000_000)
            ));
            unspent.push((txid, outnum));
        }
        // Spends of outputs from earlier blocks only: those created in this
        // block are the last ones pushed.
        let spendable = unspent.len() - p.p2wsh_outputs_per_block as usize;
        for i in 0..p.tracked_spends_per_block.min(spendable as u64) as usize {
            let j = i + r.below((spendable - i) as u64) as usize;
            unspent.swap(i, j);
        }
        for (txid, outnum) in unspent.drain(..p.tracked_spends_per_block.min(spendable as u64) as usize) {
            s.push(format!("UPDATE utxoset SET spendheight = {height} WHERE txid = {txid} AND outnum = {outnum}"));
        }
        push(&mut calls, s);
        push(&mut calls, vec![format!("UPDATE vars SET intval={height} WHERE name='last_processed_block';")]);
        push(
            &mut calls,
            vec![format!("DELETE FROM utxoset WHERE spendheight < {}", height as i64 - UTXO_PRUNE_DEPTH as i64)],
        );

        payment_credit += p.payments_per_day * 1_000_000 / BLOCKS_PER_DAY;
        while payment_credit >= 1_000_000 {
            payment_credit -= 1_000_000;
            for _ in 0..CHANGES_PER_PAYMENT {
                match workload.next_offchain_change() {
                    Change::Txn(w) => push(&mut calls, w),
                    Change::InPlace(_) => unreachable!("the workload's ordinary changes are transactions"),
                }
            }
        }
    }
    calls
}

/// `mainnet`, `mainnet:BLOCKS`, `mainnet:BLOCKS:P2WSH_PER_BLOCK` or
/// `mainnet:BLOCKS:P2WSH_PER_BLOCK:PAYMENTS_PER_DAY` (the benchmark's
/// `--trace`); `None` if `spec` names no generated trace.
pub fn parse_spec(spec: &str) -> Option<anyhow::Result<Params>> {
    let rest = spec.strip_prefix("mainnet")?;
    if !(rest.is_empty() || rest.starts_with(':')) {
        return None;
    }
    let mut p = Params::default();
    let fields: Vec<&str> = rest.split(':').skip(1).collect();
    let parse = |i: usize, what: &str| -> anyhow::Result<Option<u64>> {
        fields.get(i).map(|f| f.parse::<u64>().map_err(|e| anyhow::anyhow!("{spec}: {what} {f:?}: {e}"))).transpose()
    };
    let result = (|| {
        if fields.len() > 3 {
            anyhow::bail!("{spec}: expected mainnet[:BLOCKS[:P2WSH_PER_BLOCK[:PAYMENTS_PER_DAY]]]");
        }
        if let Some(b) = parse(0, "BLOCKS")? {
            p.blocks = b;
        }
        if let Some(o) = parse(1, "P2WSH_PER_BLOCK")? {
            p.p2wsh_outputs_per_block = o;
            p.tracked_spends_per_block = o * 14 / 15;
        }
        if let Some(n) = parse(2, "PAYMENTS_PER_DAY")? {
            p.payments_per_day = n;
        }
        if p.blocks == 0 {
            anyhow::bail!("{spec}: BLOCKS must be at least 1");
        }
        Ok(p)
    })();
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_continuous_and_applies_to_the_real_schema() {
        let p = Params {
            blocks: 160,
            p2wsh_outputs_per_block: 6,
            tracked_spends_per_block: 5,
            payments_per_day: 300,
            ..Params::default()
        };
        let calls = generate(&p);
        crate::sim::trace::check(&calls).unwrap();
        assert_eq!(generate(&p), calls, "deterministic");
        // Apply it to a real SQLite database with lightningd's foreign keys.
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for c in &calls {
            for w in &c.writes {
                db.execute_batch(w).unwrap_or_else(|e| panic!("{w:.200}: {e}"));
            }
        }
        let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM blocks"), 160);
        // Spent rows deeper than the prune depth are gone; the rest stay.
        let tip = (p.start_height + p.blocks - 1) as i64;
        assert_eq!(count(&format!("SELECT COUNT(*) FROM utxoset WHERE spendheight < {}", tip - 144)), 0);
        assert!(count("SELECT COUNT(*) FROM utxoset WHERE spendheight IS NOT NULL") > 0);
        assert_eq!(
            count("SELECT intval FROM vars WHERE name = 'data_version'"),
            calls.last().unwrap().data_version as i64
        );
        assert!(count("SELECT COUNT(*) FROM channel_htlcs") > 0, "payments were interleaved");
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("mainnet").unwrap().unwrap(), Params::default());
        let p = parse_spec("mainnet:10:30:5").unwrap().unwrap();
        assert_eq!(
            (p.blocks, p.p2wsh_outputs_per_block, p.tracked_spends_per_block, p.payments_per_day),
            (10, 30, 28, 5)
        );
        assert!(parse_spec("mainnet:x").unwrap().is_err());
        assert!(parse_spec("mainnet:0").unwrap().is_err());
        assert!(parse_spec("mainnetx").is_none());
        assert!(parse_spec("trace.jsonl.zst").is_none());
    }
}
