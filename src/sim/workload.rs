//! CLN-shaped changes on CLN's real schema.
//!
//! The statements are modelled on a trace recorded from a real lightningd
//! (v26.06, `tests/fixtures/`): the commitment dance that rewrites a channel
//! row, its configs, fee rates, block heights, HTLC signatures, penalty bases,
//! anchors and shachain on every update; HTLCs offered and resolved; invoices
//! created, paid and deleted; payments; blocks with their UTXO set, including
//! reorgs whose `DELETE FROM blocks` cascades through foreign keys; forwards;
//! datastore use; a table-rebuilding migration bracketed by PRAGMA-only calls;
//! and one huge change. Deterministic for a seed.
//!
//! The generator keeps a small model of what exists (channels, blocks, ...)
//! so that every statement is valid against the database, provided each
//! change it hands out is committed. A change that is not (lightningd crashed
//! before COMMIT, or the plugin refused it) must be taken back with
//! [`Workload::undo`].

use super::node::Change;

use crate::rng::SplitMix64 as Rng;

/// Random bytes as SQL blob literals.
trait Blob {
    /// `n` random bytes as an SQL blob literal.
    fn blob(&mut self, n: usize) -> String;
}

impl Blob for Rng {
    fn blob(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(3 + 2 * n);
        s.push_str("x'");
        let mut left = n;
        while left > 0 {
            let word = self.next_u64();
            for i in 0..left.min(8) {
                s.push_str(&format!("{:02x}", (word >> (8 * i)) as u8));
            }
            left = left.saturating_sub(8);
        }
        s.push('\'');
        s
    }
}

/// Bounds on the model, so that a long workload stays cheap to generate.
const MAX_CHANNELS: usize = 6;
const MAX_PENDING_HTLCS: usize = 12;
const MAX_UTXOS: usize = 256;
const MAX_KEYS: usize = 512;
const MAX_OPEN_INVOICES: usize = 64;

#[derive(Debug, Clone)]
struct Channel {
    id: u64,
    scid: u64,
    shachain: u64,
    config_local: u64,
    config_remote: u64,
    commitnum: u64,
    next_htlc_id: u64,
    msat_local: i64,
    /// shachain positions already stored (`shachain_known` rows).
    known_positions: u8,
}

#[derive(Debug, Clone)]
struct Htlc {
    id: u64,
    channel: usize,
    msat: i64,
}

#[derive(Debug, Clone, Default)]
struct Model {
    peers: u64,
    channel_configs: u64,
    shachains: u64,
    channels: Vec<Channel>,
    pending_htlcs: Vec<Htlc>,
    htlc_ids: u64,
    channel_moves: u64,
    /// (height) of the chain tip; 0 before the first block.
    tip: u64,
    /// (txid blob, outnum, height) of unspent outputs in `utxoset`.
    utxos: Vec<(String, u64, u64)>,
    invoices: u64,
    open_invoices: Vec<u64>,
    payments: Vec<(String, u64)>,
    payment_ids: u64,
    forwards: Vec<(u64, u64)>,
    forward_ids: u64,
    keys: Vec<(String, u64)>,
    key_ids: u64,
    htlcs_created_index_set: bool,
    migrated: bool,
    clock: u64,
}

/// Clone: two runs of one trace from the same point (bench --scale-mib's
/// twin arm) hand out the same changes.
#[derive(Clone)]
pub struct Workload {
    rng: Rng,
    model: Model,
    /// The model before the last change handed out, for [`Workload::undo`].
    before_last: Option<Model>,
}

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload {
            rng: crate::rng::SplitMix64(seed),
            model: Model { clock: 1_795_605_400, ..Model::default() },
            before_last: None,
        }
    }

    /// lightningd's schema creation, as recorded from a real first start:
    /// the initial schema, then migrations bracketed by PRAGMA-only calls.
    pub fn schema() -> Vec<Change> {
        super::trace::first_start_schema()
            .into_iter()
            .map(|c| match crate::state::classify(c.data_version, &c.writes) {
                Ok(crate::state::CallKind::Txn) => Change::Txn(c.writes[..c.writes.len() - 1].to_vec()),
                _ => Change::InPlace(c.writes[0].clone()),
            })
            .collect()
    }

    /// Takes back the last change handed out: it was not committed. The
    /// random stream is not rewound, so the next change differs from it, as
    /// a restarted lightningd's would.
    pub fn undo(&mut self) {
        if let Some(m) = self.before_last.take() {
            self.model = m;
        }
    }

    /// The next change of a node's ordinary life.
    pub fn next_change(&mut self) -> Change {
        self.change(true)
    }

    /// The next change with no block processing in it (channels, HTLCs,
    /// invoices, payments, forwards, datastore), for a generator that writes
    /// the chain itself ([`super::mainnet`]): this model's blocks and reorgs
    /// would collide with its heights.
    pub fn next_offchain_change(&mut self) -> Change {
        self.change(false)
    }

    fn change(&mut self, blocks: bool) -> Change {
        self.before_last = Some(self.model.clone());
        self.model.clock += 1 + self.rng.below(5);
        let mut s = vec![];
        if self.model.channels.is_empty() {
            self.open_channel(&mut s);
            return Change::Txn(s);
        }
        match self.rng.below(100) {
            0..=2 if self.model.channels.len() < MAX_CHANNELS => self.open_channel(&mut s),
            0..=29 => self.htlc_step(&mut s),
            30..=49 => {
                let c = self.pick_channel();
                self.commitment(&mut s, c);
            }
            50..=59 => self.invoice(&mut s),
            60..=67 => self.payment(&mut s),
            68..=79 if blocks => self.block(&mut s),
            68..=79 => self.htlc_step(&mut s),
            80..=87 => self.forward(&mut s),
            _ => self.datastore(&mut s),
        }
        Change::Txn(s)
    }

    /// A migration that rebuilds a table the way CLN's `db_sqlite3.c` does:
    /// foreign keys off (a PRAGMA-only call at the current version), the
    /// rebuild in one transaction, foreign keys on again.
    pub fn migration(&mut self) -> Vec<Change> {
        self.before_last = Some(self.model.clone());
        let extra = if self.model.migrated { "" } else { ", note TEXT DEFAULT NULL" };
        let cols = "key, data, generation";
        self.model.migrated = true;
        vec![
            Change::InPlace("PRAGMA foreign_keys = OFF;".into()),
            Change::Txn(vec![
                "ALTER TABLE datastore RENAME TO temp_datastore;".into(),
                format!(
                    "CREATE TABLE datastore (  key BLOB,  data BLOB,  generation INTEGER{extra},  PRIMARY KEY (key));"
                ),
                format!("INSERT INTO datastore ({cols}) SELECT {cols} FROM temp_datastore;"),
                "DROP TABLE temp_datastore;".into(),
            ]),
            Change::InPlace("PRAGMA foreign_keys = ON;".into()),
        ]
    }

    /// One change of about `bytes` bytes of statements (a node importing a
    /// large datastore entry set, or a big batch of block data).
    pub fn big_change(&mut self, bytes: usize) -> Change {
        self.before_last = Some(self.model.clone());
        const ROW: usize = 32 * 1024;
        let mut s = vec![];
        for _ in 0..bytes.div_ceil(2 * ROW).max(1) {
            let key = self.new_key();
            s.push(format!("INSERT INTO datastore (key, data, generation) VALUES ({key}, {}, 0);", self.rng.blob(ROW)));
        }
        Change::Txn(s)
    }

    fn pick_channel(&mut self) -> usize {
        self.rng.below(self.model.channels.len() as u64) as usize
    }

    fn new_key(&mut self) -> String {
        self.model.key_ids += 1;
        let key = format!("x'{}'", hex(format!("cln-replica/workload/{}", self.model.key_ids).as_bytes()));
        if self.model.keys.len() < MAX_KEYS {
            self.model.keys.push((key.clone(), 0));
        }
        key
    }

    fn open_channel(&mut self, s: &mut Vec<String>) {
        let m = &mut self.model;
        m.peers += 1;
        let peer = m.peers;
        let id = m.channels.len() as u64 + 1;
        m.channel_configs += 2;
        m.shachains += 1;
        let first_block = m.tip.max(103);
        let ch = Channel {
            id,
            scid: (first_block << 40) | ((id + 1) << 16),
            shachain: m.shachains,
            config_local: m.channel_configs - 1,
            config_remote: m.channel_configs,
            commitnum: 0,
            next_htlc_id: 0,
            msat_local: 300_000_000 + 100_000_000 * (id as i64 % 3),
            known_positions: 0,
        };
        let r = &mut self.rng;
        s.push(format!("UPDATE vars SET intval={} WHERE name='bip86_max_index';", peer + 2));
        s.push(format!("INSERT INTO addresses (  keyidx, addrtype) VALUES ({}, 4);", peer + 2));
        s.push(format!(
            "INSERT INTO peers (node_id, address, feature_bits) VALUES (x'02{}', '127.0.0.1:{}', x'800898880a8a59a1');",
            &r.blob(32)[2..66],
            40000 + peer
        ));
        s.push(format!(
            "INSERT INTO channels (  peer_id, first_blocknum, id, revocation_basepoint_local, payment_basepoint_local, \
             htlc_basepoint_local, delayed_payment_basepoint_local, funding_pubkey_local, \
             require_confirm_inputs_remote, require_confirm_inputs_local) VALUES ({peer}, {first_block}, {id}, {}, {}, {}, {}, {}, 0, 0);",
            r.blob(33),
            r.blob(33),
            r.blob(33),
            r.blob(33),
            r.blob(33)
        ));
        s.push("INSERT INTO channel_configs DEFAULT VALUES;".into());
        s.push("INSERT INTO channel_configs DEFAULT VALUES;".into());
        s.push("INSERT INTO shachains (min_index, num_valid) VALUES (281474976710656, 0);".into());
        self.model.channels.push(ch);
        let c = self.model.channels.len() - 1;
        self.commitment(s, c);
        let m = &mut self.model;
        m.channel_moves += 1;
        s.push(format!(
            "INSERT INTO channel_moves ( id, account_channel_id, account_nonchannel_id, credit_or_debit, tag_bitmap, \
             timestamp, payment_hash, payment_part_id, payment_group_id, fees) VALUES ({}, {id}, NULL, {}, 32, {}, NULL, NULL, NULL, 0);",
            m.channel_moves, m.channels[c].msat_local, m.clock
        ));
    }

    /// The statements lightningd writes on every commitment update of a
    /// channel (channeld's `wallet_channel_save` and friends).
    fn commitment(&mut self, s: &mut Vec<String>, c: usize) {
        let r = &mut self.rng;
        let ch = &mut self.model.channels[c];
        ch.commitnum += 1;
        let n = ch.commitnum;
        let feerate = 1250 + r.below(40);
        let configs = |id| {
            format!(
                "UPDATE channel_configs SET  dust_limit_satoshis=546,  max_htlc_value_in_flight_msat=-1,  \
                 channel_reserve_satoshis=20000,  htlc_minimum_msat=0,  to_self_delay=6,  max_accepted_htlcs=483,  \
                 max_dust_htlc_exposure_msat=50000000 WHERE id={id};"
            )
        };
        s.push(configs(ch.config_local));
        s.push(format!(
            "UPDATE channels SET  shachain_remote_id={},  scid={},  full_channel_id={},  state=2,  funder=1,  \
             channel_flags=1,  minimum_depth=1,  next_index_local={n},  next_index_remote={n},  next_htlc_id={},  \
             funding_tx_id={},  funding_tx_outnum=0,  funding_satoshi=2000000,  our_funding_satoshi=0,  \
             funding_locked_remote=1,  push_msatoshi=300000000,  msatoshi_local={},  shutdown_keyidx_local={},  \
             channel_config_local={},  channel_config_remote={},  last_tx={}, last_sig={},  last_was_revoke={},  \
             min_possible_feerate={feerate},  max_possible_feerate={feerate},  msatoshi_to_us_min={},  \
             msatoshi_to_us_max={},  feerate_base=1,  feerate_ppm=10,  channel_type=x'401000',  \
             htlc_minimum_msat=0,  htlc_maximum_msat=1980000000,  alias_local={} WHERE id={}",
            ch.shachain,
            ch.scid,
            r.blob(32),
            ch.next_htlc_id,
            r.blob(32),
            ch.msat_local,
            ch.id + 2,
            ch.config_local,
            ch.config_remote,
            r.blob(600),
            r.blob(64),
            n % 2,
            ch.msat_local.min(300_000_000),
            ch.msat_local.max(300_000_000),
            r.next_u64() as i64,
            ch.id
        ));
        s.push(configs(ch.config_remote));
        s.push(format!("DELETE FROM channel_feerates WHERE channel_id={}", ch.id));
        s.push(format!("INSERT INTO channel_feerates  VALUES({}, 14, {feerate})", ch.id));
        s.push(format!("DELETE FROM channel_blockheights WHERE channel_id={}", ch.id));
        s.push(format!("INSERT INTO channel_blockheights  VALUES({}, 14, 0)", ch.id));
        s.push(format!("DELETE FROM htlc_sigs WHERE channelid = {}", ch.id));
        let pending = self.model.pending_htlcs.iter().filter(|h| h.channel == c).count().min(3);
        for _ in 0..pending {
            s.push(format!("INSERT INTO htlc_sigs (channelid, signature) VALUES ({}, {})", ch.id, r.blob(64)));
        }
        s.push(format!(
            "INSERT INTO penalty_bases (  channel_id, commitnum, txid, outnum, amount) VALUES ({}, {n}, {}, 3, {});",
            ch.id,
            r.blob(32),
            1_600_000 + r.below(200_000)
        ));
        if n > 1 {
            s.push(format!("DELETE FROM penalty_bases WHERE channel_id = {} AND commitnum = {}", ch.id, n - 1));
        }
        s.push(format!("INSERT INTO local_anchors VALUES ({},{n},{},0,1627,1284)", ch.id, r.blob(32)));
        s.push(format!("DELETE FROM local_anchors WHERE channel_id = {} and commitment_index <= {};", ch.id, n - 1));
        // The shachain: one stored hash per trailing-zero position.
        let index = (1u64 << 48) - 1 - n;
        let pos = (index.trailing_zeros() as u8).min(7);
        if pos >= ch.known_positions {
            for p in ch.known_positions..=pos {
                s.push(format!(
                    "INSERT INTO shachain_known (shachain_id, pos, idx, hash) VALUES ({}, {p}, {index}, {});",
                    ch.shachain,
                    r.blob(32)
                ));
            }
            ch.known_positions = pos + 1;
        } else {
            s.push(format!(
                "UPDATE shachain_known SET idx={index}, hash={} WHERE shachain_id={} AND pos={pos}",
                r.blob(32),
                ch.shachain
            ));
        }
        s.push(format!(
            "UPDATE shachains SET num_valid={}, min_index={index} WHERE id={}",
            ch.known_positions, ch.shachain
        ));
    }

    /// Offers a new HTLC, or resolves a pending one; then the commitment.
    fn htlc_step(&mut self, s: &mut Vec<String>) {
        let resolve = !self.model.pending_htlcs.is_empty()
            && (self.model.pending_htlcs.len() >= MAX_PENDING_HTLCS || self.rng.below(2) == 0);
        let c;
        if resolve {
            let i = self.rng.below(self.model.pending_htlcs.len() as u64) as usize;
            let h = self.model.pending_htlcs.swap_remove(i);
            c = h.channel;
            let fulfilled = self.rng.below(5) != 0;
            let r = &mut self.rng;
            let m = &mut self.model;
            s.push(format!("UPDATE vars SET intval={} WHERE name='last_htlcs_updated_index';", h.id));
            if fulfilled {
                s.push(format!(
                    "UPDATE channel_htlcs SET hstate=9, payment_key={}, malformed_onion=0, failuremsg=NULL, \
                     localfailmsg=NULL, we_filled=NULL, max_commit_num=NULL, updated_index={}  WHERE id={}",
                    r.blob(32),
                    h.id,
                    h.id
                ));
                m.channels[c].msat_local -= h.msat;
                m.channel_moves += 1;
                s.push(format!(
                    "INSERT INTO channel_moves ( id, account_channel_id, account_nonchannel_id, credit_or_debit, \
                     tag_bitmap, timestamp, payment_hash, payment_part_id, payment_group_id, fees) VALUES \
                     ({}, {}, NULL, {}, 2, {}, {}, 1, 1, 0);",
                    m.channel_moves,
                    m.channels[c].id,
                    -h.msat,
                    m.clock,
                    r.blob(32)
                ));
            } else {
                s.push(format!(
                    "UPDATE channel_htlcs SET hstate=12, payment_key=NULL, malformed_onion=0, failuremsg={}, \
                     localfailmsg=NULL, we_filled=NULL, max_commit_num=NULL, updated_index={}  WHERE id={}",
                    r.blob(300),
                    h.id,
                    h.id
                ));
            }
        } else {
            c = self.pick_channel();
            let r = &mut self.rng;
            let m = &mut self.model;
            m.htlc_ids += 1;
            let id = m.htlc_ids;
            let ch = &mut m.channels[c];
            let msat = 1000 + r.below(5_000_000) as i64;
            let var = if m.htlcs_created_index_set {
                format!("UPDATE vars SET intval={id} WHERE name='last_htlcs_created_index';")
            } else {
                m.htlcs_created_index_set = true;
                format!("INSERT INTO vars (name, intval) VALUES ('last_htlcs_created_index', {id});")
            };
            s.push(var);
            s.push(format!(
                "INSERT INTO channel_htlcs ( id, channel_id, channel_htlc_id,  direction, msatoshi, cltv_expiry, \
                 payment_hash,  payment_key, hstate, shared_secret, routing_onion, received_time, min_commit_num,  \
                 fail_immediate) VALUES ({id}, {}, {}, {}, {msat}, {}, {}, NULL, 11, {}, {}, {}, {}, 0);",
                ch.id,
                ch.next_htlc_id,
                id % 2,
                130 + r.below(50),
                r.blob(32),
                r.blob(32),
                r.blob(1366),
                m.clock * 1_000_000_000 + r.below(1_000_000_000),
                ch.commitnum
            ));
            s.push(format!(
                "UPDATE channels   SET in_payments_offered = COALESCE(in_payments_offered, 0) + 1,   \
                 in_msatoshi_offered = COALESCE(in_msatoshi_offered, 0) + {msat} WHERE id = {}",
                ch.id
            ));
            ch.next_htlc_id += 1;
            m.pending_htlcs.push(Htlc { id, channel: c, msat });
        }
        self.commitment(s, c);
    }

    fn invoice(&mut self, s: &mut Vec<String>) {
        let r = &mut self.rng;
        let m = &mut self.model;
        match r.below(4) {
            0 | 1 if m.open_invoices.len() < MAX_OPEN_INVOICES => {
                m.invoices += 1;
                let id = m.invoices;
                s.push(format!(
                    "INSERT INTO invoices            ( id, payment_hash, payment_key, state            , msatoshi, \
                     label, expiry_time            , pay_index, msatoshi_received            , paid_timestamp, bolt11, \
                     description, features, local_offer_id)     VALUES ( {id}, {}, {}, 0            , {}, \
                     'workload-{id}-{}', {}            , NULL, NULL            , NULL, 'lnbcrt{}', 'workload payment', \
                     x'02000002024100', NULL);",
                    r.blob(32),
                    r.blob(32),
                    1000 + r.below(10_000_000),
                    m.clock,
                    m.clock + 604_800,
                    &r.blob(150)[2..302]
                ));
                m.open_invoices.push(id);
            }
            2 if !m.open_invoices.is_empty() => {
                let id = m.open_invoices.swap_remove(r.below(m.open_invoices.len() as u64) as usize);
                s.push(format!(
                    "UPDATE invoices   SET state=1     , pay_index={id}     , msatoshi_received={}     , \
                     paid_timestamp={}     , paid_txid=NULL     , paid_outnum=NULL     , updated_index={id} WHERE id={id};",
                    1000 + r.below(10_000_000),
                    m.clock
                ));
                s.push(format!("UPDATE vars SET intval={id} WHERE name='last_invoice_updated_index';"));
            }
            _ if m.invoices > 0 => {
                // Expired or deleted: may name one that is already gone.
                s.push(format!("DELETE FROM invoices WHERE id={};", 1 + r.below(m.invoices)));
            }
            _ => s.push("UPDATE vars SET intval=0 WHERE name='last_invoice_updated_index';".into()),
        }
    }

    fn payment(&mut self, s: &mut Vec<String>) {
        let r = &mut self.rng;
        let m = &mut self.model;
        if m.payments.is_empty() || r.below(2) == 0 {
            m.payment_ids += 1;
            let id = m.payment_ids;
            let hash = r.blob(32);
            let group = r.next_u64() >> 1;
            s.push(format!(
                "INSERT INTO payments (  id,  status,  payment_hash,  destination,  msatoshi,  timestamp,  path_secrets,  \
                 route_nodes,  route_channels,  msatoshi_sent,  description,  bolt11,  total_msat,  partid,  \
                 local_invreq_id,  groupid,  paydescription) VALUES ({id}, 0, {hash}, {}, {}, {}, NULL, NULL, NULL, \
                 {}, NULL, 'lnbcrt{}', {}, 1, NULL, {group}, NULL);",
                r.blob(33),
                350_981,
                m.clock,
                350_981,
                &r.blob(150)[2..302],
                350_981
            ));
            if m.payments.len() < 64 {
                m.payments.push((hash, group));
            }
        } else {
            let (hash, group) = m.payments.swap_remove(r.below(m.payments.len() as u64) as usize);
            s.push(format!(
                "UPDATE payments SET status={}, completed_at={}, updated_index={} WHERE payment_hash={hash} AND \
                 partid=1 AND groupid={group}",
                1 + r.below(2),
                m.clock,
                m.payment_ids
            ));
        }
    }

    /// A new block with its outputs, a spend, sometimes a prune; now and
    /// then a reorg, whose `DELETE FROM blocks` cascades into `utxoset`.
    fn block(&mut self, s: &mut Vec<String>) {
        let r = &mut self.rng;
        let m = &mut self.model;
        if m.tip > 105 && r.below(15) == 0 {
            let keep = m.tip - 1 - r.below(3);
            s.push(format!("DELETE FROM blocks WHERE height > {keep}"));
            s.push(format!("UPDATE our_outputs SET blockheight = 0, txindex = 0 WHERE blockheight > {keep}"));
            m.utxos.retain(|u| u.2 <= keep);
            m.tip = keep;
        }
        let height = if m.tip == 0 { 101 } else { m.tip + 1 };
        s.push(format!(
            "INSERT INTO blocks (height, hash, prev_hash) VALUES ({height}, {}, {});",
            r.blob(32),
            r.blob(32)
        ));
        for _ in 0..1 + r.below(4) {
            let txid = r.blob(32);
            let outnum = r.below(3);
            s.push(format!(
                "INSERT INTO utxoset ( txid, outnum, blockheight, spendheight, txindex, scriptpubkey, satoshis) \
                 VALUES({txid}, {outnum}, {height}, NULL, {}, x'0020{}', {});",
                r.below(50),
                &r.blob(32)[2..66],
                5_000_000 + r.below(1_000_000_000)
            ));
            if m.utxos.len() < MAX_UTXOS {
                m.utxos.push((txid, outnum, height));
            }
        }
        if !m.utxos.is_empty() && r.below(2) == 0 {
            let (txid, outnum, h) = m.utxos.swap_remove(r.below(m.utxos.len() as u64) as usize);
            if h < height {
                s.push(format!("UPDATE utxoset SET spendheight = {height} WHERE txid = {txid} AND outnum = {outnum}"));
            }
        }
        if height % 10 == 0 {
            s.push(format!("DELETE FROM utxoset WHERE spendheight < {}", height.saturating_sub(100)));
        }
        m.tip = height;
    }

    fn forward(&mut self, s: &mut Vec<String>) {
        let r = &mut self.rng;
        let m = &mut self.model;
        if m.forwards.is_empty() || r.below(2) == 0 {
            m.forward_ids += 1;
            let (scid_in, htlc) = (114_349_209_354_240 + r.below(4), m.forward_ids);
            s.push(format!(
                "INSERT INTO forwards (  in_htlc_id, out_htlc_id, in_channel_scid, out_channel_scid, in_msatoshi, \
                 out_msatoshi, state, received_time, resolved_time, failcode, forward_style) VALUES ({htlc}, {}, \
                 {scid_in}, 114349209419776, 2035436, 2035415, 0, {}, NULL, NULL, 1);",
                r.below(1000),
                m.clock * 1_000_000_000
            ));
            if m.forwards.len() < 64 {
                m.forwards.push((scid_in, htlc));
            }
        } else {
            let (scid, htlc) = m.forwards.swap_remove(r.below(m.forwards.len() as u64) as usize);
            s.push(format!(
                "UPDATE forwards SET  updated_index={}, in_msatoshi=2035436, out_msatoshi=2035415, state={}, \
                 resolved_time={}, failcode=NULL, forward_style=1 WHERE in_htlc_id={htlc} AND in_channel_scid={scid}",
                m.forward_ids,
                1 + r.below(2),
                m.clock * 1_000_000_000
            ));
        }
    }

    fn datastore(&mut self, s: &mut Vec<String>) {
        let choice = self.rng.below(3);
        if self.model.keys.is_empty() || choice == 0 {
            let key = self.new_key();
            let len = 16 + self.rng.below(200) as usize;
            let data = self.rng.blob(len);
            s.push(format!("INSERT INTO datastore (key, data, generation) VALUES ({key}, {data}, 0);"));
            return;
        }
        let r = &mut self.rng;
        let m = &mut self.model;
        let i = r.below(m.keys.len() as u64) as usize;
        if choice == 1 {
            m.keys[i].1 += 1;
            let (key, generation) = &m.keys[i];
            let len = 16 + r.below(200) as usize;
            s.push(format!("UPDATE datastore SET data={}, generation={generation} WHERE key={key};", r.blob(len)));
        } else {
            let (key, _) = m.keys.swap_remove(i);
            s.push(format!("DELETE FROM datastore WHERE key={key};"));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn apply(conn: &Connection, change: &Change) {
        match change {
            Change::Txn(stmts) => {
                conn.execute_batch("BEGIN").unwrap();
                for st in stmts {
                    conn.execute_batch(st).unwrap_or_else(|e| panic!("{e}: {st}"));
                }
                conn.execute_batch("COMMIT").unwrap();
            }
            Change::InPlace(st) => conn.execute_batch(st).unwrap(),
        }
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    fn fresh() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        for c in Workload::schema() {
            apply(&conn, &c);
        }
        conn
    }

    #[test]
    fn every_statement_is_valid_on_the_real_schema_and_touches_the_channel_tables() {
        let conn = fresh();
        let mut w = Workload::new(42);
        for i in 0..3000 {
            apply(&conn, &w.next_change());
            if i == 1500 {
                for c in w.migration() {
                    apply(&conn, &c);
                }
            }
        }
        for table in [
            "channels",
            "channel_htlcs",
            "htlc_sigs",
            "penalty_bases",
            "local_anchors",
            "shachain_known",
            "invoices",
            "payments",
            "blocks",
            "utxoset",
            "forwards",
            "datastore",
            "channel_moves",
        ] {
            assert!(count(&conn, table) > 0, "{table} is empty");
        }
        let fk: Vec<String> =
            conn.prepare("PRAGMA foreign_key_check").unwrap().query_map([], |r| r.get(0)).unwrap().flatten().collect();
        assert!(fk.is_empty(), "foreign key violations in {fk:?}");
    }

    #[test]
    fn a_seed_gives_the_same_changes_and_another_seed_other_ones() {
        let take = |seed| {
            let mut w = Workload::new(seed);
            (0..200).map(|_| w.next_change()).collect::<Vec<_>>()
        };
        assert_eq!(take(1), take(1));
        assert_ne!(take(1), take(2));
    }

    #[test]
    fn reorgs_cascade_through_the_utxo_set() {
        let conn = fresh();
        let mut w = Workload::new(7);
        let mut reorgs = 0;
        for _ in 0..4000 {
            let c = w.next_change();
            if let Change::Txn(s) = &c {
                reorgs += s.iter().filter(|st| st.starts_with("DELETE FROM blocks")).count();
            }
            apply(&conn, &c);
        }
        assert!(reorgs > 0);
        let orphans: i64 = conn
            .query_row("SELECT count(*) FROM utxoset WHERE blockheight NOT IN (SELECT height FROM blocks)", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(orphans, 0);
    }

    #[test]
    fn an_undone_change_leaves_the_generator_valid() {
        let conn = fresh();
        let mut w = Workload::new(9);
        for i in 0..2000 {
            let c = w.next_change();
            if i % 7 == 3 {
                w.undo();
                continue;
            }
            apply(&conn, &c);
        }
    }

    #[test]
    fn a_big_change_is_as_big_as_asked() {
        let mut w = Workload::new(1);
        let Change::Txn(s) = w.big_change(3 << 20) else { panic!() };
        let bytes: usize = s.iter().map(String::len).sum();
        assert!((3 << 20..(3 << 20) + (200 << 10)).contains(&bytes), "{bytes}");
        let conn = fresh();
        apply(&conn, &Change::Txn(s));
    }
}
