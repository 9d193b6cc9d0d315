#!/usr/bin/env python3
"""cln-replica through a real lightningd upgrade: v25.05 to v26.06.

    upgrade.py --plugin target/ci/cln-replica [--scale 1.0] [--keep] [--workdir DIR]

Node `a` is created by lightningd v25.05 with cln-replica as its important
plugin from its very first start (the journal on its own loop-mounted ext4
as root); its peers `b` and `c` run v26.06 (the topology of suite.py).
Channels both ways, payments both ways and forwarded, a cooperative close,
and bookkeeper history (in v25.05 bookkeeper keeps its own accounts.sqlite3).
After a clean stop, v26.06 starts on the same lightning-dir with
`--database-upgrade=true`: its first db_write, before the plugins' `init`,
is the whole schema migration with bookkeeper's events moved into
lightningd.sqlite3. Then:

- the journal restores to exactly v26.06's database (table by table);
- a v26.06 node booted on the restored file shows the same channels, funds,
  bookkeeper balances and events as the upgraded node, and its peers pay
  through it;
- `restore --at` the last pre-upgrade data_version gives the v25.05 database
  (equal to a copy taken at the clean stop), and v25.05 opens it.

docs/REAL-NODE.md ("Upgrades") says what it proves and how long it takes.
"""
import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realnode import (  # noqa: E402
    Background, Env, Failure, Payer, RpcError, compare_dbs, data_version, db_snapshot, journal_status, journal_tip, log,
    restore, run, setup_star, wait_for)
from suite import (  # noqa: E402
    SUMMARY, Phase, check_journal, diff_views, forget_routing_failures, log_lines, mine_and_sync, normalized_views,
    timed_stop, wait_all_htlcs, wait_mesh, wait_same_views)

OLD_TARBALL = 'cln-v25.05-x86_64-linux.tar.xz'
# Schema versions of the two builds (wallet/migrations.c at their commits):
# lightningd logs the step it takes.
OLD_SCHEMA, NEW_SCHEMA = 268, 286
BOOKKEEPER_SETTLE_TIMEOUT_S = 60
VIEWS_TIMEOUT_S = 90


# ---------------------------------------------------------------------------
# The journal, read directly (docs/FORMAT.md): which db_write calls the
# plugin stored, in order, with their statements. Checksums and the fold are
# `cln-replica restore`'s business; this only lists what is there.

SEGMENT_MAGIC = b'\xffCLNRSEG'
RECORD_MAGIC = b'\xffCR1'
RECORD_HEADER_BYTES = 48
KIND_CHANGE, KIND_SEAL = 1, 2
FLAG_TXN, FLAG_ZSTD = 1, 2
ZSTD_TIMEOUT_S = 60


def journal_records(journal, generation):
    """Every record of `generation`, in order: dicts with kind, data_version,
    txn, stored_bytes and (change records) the statements."""
    gdir = os.path.join(journal, 'gen-%010d' % generation)
    segments = sorted(n for n in os.listdir(gdir) if re.fullmatch(r'segment-\d{8}', n))
    out = []
    for name in segments:
        with open(os.path.join(gdir, name), 'rb') as f:
            data = f.read()
        if data[:8] != SEGMENT_MAGIC:
            raise Failure('%s/%s: not a journal segment' % (gdir, name))
        block = struct.unpack_from('<I', data, 12)[0]
        off = block
        while off + RECORD_HEADER_BYTES <= len(data):
            head = data[off:off + RECORD_HEADER_BYTES]
            if head[:4] != RECORD_MAGIC:
                break  # zeros: the written part of this segment ends here
            kind, flags = head[4], head[5]
            dv, payload_bytes = struct.unpack_from('<II', head, 8)
            payload = data[off + RECORD_HEADER_BYTES:off + RECORD_HEADER_BYTES + payload_bytes]
            rec = {'kind': kind, 'data_version': dv, 'txn': bool(flags & FLAG_TXN), 'stored_bytes': payload_bytes,
                   'time_unix_ms': struct.unpack_from('<Q', head, 32)[0]}
            if kind == KIND_CHANGE:
                if flags & FLAG_ZSTD:
                    payload = subprocess.run(['zstd', '-d', '-c', '-q'], input=payload, stdout=subprocess.PIPE,
                                             check=True, timeout=ZSTD_TIMEOUT_S).stdout
                rec['statements'] = change_statements(payload)
            out.append(rec)
            off += -(-(RECORD_HEADER_BYTES + payload_bytes) // block) * block
    return out


def change_statements(payload):
    count = struct.unpack_from('<I', payload, 0)[0]
    pos, out = 4, []
    for _ in range(count):
        n = struct.unpack_from('<I', payload, pos)[0]
        out.append(payload[pos + 4:pos + 4 + n].decode('utf-8'))
        pos += 4 + n
    if pos != len(payload):
        raise Failure('a change payload has %d trailing bytes' % (len(payload) - pos))
    return out


def hook_calls_before_init(node, offset):
    """From lightningd's own log of its pipe to the plugin
    (--log-level=io:plugin-cln-replica): how many db_write answers came back
    before lightningd sent `init`. lightningd logs each read from the plugin
    as `[IN] <hex>` (a read may hold part of a message, or several) and each
    request it sends as `<id>[OUT]`."""
    stream, init_seen = b'', False
    for line in node.log_since(offset).splitlines():
        if re.search(r'plugin-cln-replica: cln:init#\d+\[OUT\]', line):
            init_seen = True
            break
        m = re.search(r'plugin-cln-replica: \[IN\] ([0-9a-f]+)', line)
        if m:
            stream += bytes.fromhex(m.group(1))
    if not init_seen:
        raise Failure('lightningd\'s log shows no `init` sent to cln-replica (was --log-level=io:plugin-cln-replica '
                      'given?)')
    text, pos, answers = stream.decode('utf-8'), 0, 0
    decoder = json.JSONDecoder()
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return answers
        msg, pos = decoder.raw_decode(text, pos)
        if 'db_write' in str(msg.get('id', '')):
            answers += 1


# ---------------------------------------------------------------------------
# What the nodes show.

def bookkeeper_views(node):
    """bookkeeper's balances and events, as lists of JSON-able entries."""
    bal = node.rpc.call('bkpr-listbalances')['accounts']
    ev = node.rpc.call('bkpr-listaccountevents')['events']
    return {'bkpr-listbalances': sorted(bal, key=lambda a: a['account']),
            'bkpr-listaccountevents': sorted(ev, key=lambda e: json.dumps(e, sort_keys=True))}


def balances_by_account(views):
    return {a['account']: sorted((b.get('coin_type'), b['balance_msat']) for b in a['balances'])
            for a in views['bkpr-listbalances']}


def wait_same(fn, before, who, what, timeout=VIEWS_TIMEOUT_S):
    """Polls fn() until it equals `before` (views: dicts of lists)."""
    last = {}

    def same():
        last['diffs'] = diff_views(before, fn())
        return not last['diffs']
    try:
        wait_for(same, '%s to show the same %s' % (who, what), timeout, interval=0.2, max_interval=1)
    except Failure:
        raise Failure('%s shows other %s:\n  %s' % (who, what, '\n  '.join(last.get('diffs', []))))


def wait_bookkeeper_settled(node, want_tags=()):
    """bookkeeper learns of moves asynchronously: wait until every open
    channel's account holds what the channel says is ours (every channel move
    processed) and, if asked, events with these (type, tag) exist. Returns the
    (type, tag) pairs seen."""
    last = {}

    def ok():
        chans = {ch['channel_id']: ch['to_us_msat'] for ch in node.rpc.listpeerchannels()['channels']
                 if ch['state'] == 'CHANNELD_NORMAL'}
        views = bookkeeper_views(node)
        bal = {acc: sum(m for _, m in b) for acc, b in balances_by_account(views).items()}
        tags = {(e['type'], e['tag']) for e in views['bkpr-listaccountevents']}
        last['state'] = {'channels': chans, 'bookkeeper': {k: bal.get(k) for k in chans},
                         'missing tags': sorted(set(want_tags) - tags)}
        last['tags'] = sorted(tags)
        return all(bal.get(k) == v for k, v in chans.items()) and set(want_tags) <= tags
    try:
        wait_for(ok, 'bookkeeper on %s to settle' % node.name, BOOKKEEPER_SETTLE_TIMEOUT_S, interval=0.2,
                 max_interval=1)
    except Failure:
        raise Failure('bookkeeper on %s did not settle: %s' % (node.name, last.get('state')))
    return last['tags']


# The history the v25.05 node must have before it is upgraded: chain moves
# (deposits, channel opens, the cooperative close) and channel moves
# (invoices paid both ways, forwards).
HISTORY_TAGS = [('chain', 'deposit'), ('chain', 'channel_open'), ('chain', 'channel_close'),
                ('channel', 'invoice'), ('channel', 'routed')]


# ---------------------------------------------------------------------------
# Payments under a v25.05 node: it has `keysend` (xpay's `xkeysend` came
# later); its v26.06 peers have `xkeysend` only.

def job(payer, a, b, c, kinds, a_is_old):
    pairs = {'b2c': (b, c), 'c2b': (c, b), 'a2b': (a, b), 'b2a': (b, a), 'a2c': (a, c), 'c2a': (c, a)}

    def run_one(i):
        k = kinds[i % len(kinds)]
        if k in pairs:
            payer.pay(*pairs[k])     # b2c and c2b are forwarded by a
        elif k == 'keysend_b2c':
            payer.keysend(b, c)      # forwarded by a
        elif k == 'keysend_a2c' and a_is_old:
            try:
                a.rpc.call('keysend', {'destination': c.id, 'amount_msat': payer.msat()})
                payer.bump('keysend')
            except RpcError as e:
                raise Failure('keysend a->c failed: %s' % str(e.error)[:300])
        elif k == 'keysend_a2c':
            payer.keysend(a, c)
        else:
            raise AssertionError(k)
    return run_one


KINDS = ['b2c', 'c2b', 'a2b', 'b2a', 'a2c', 'c2a', 'keysend_a2c', 'keysend_b2c']


def pay_mix(payer, a, b, c, n, tag, a_is_old):
    kinds = list(KINDS)
    random.Random(tag).shuffle(kinds)
    t = time.monotonic()
    bg = Background(job(payer, a, b, c, kinds, a_is_old), n, threads=3)
    wait_for(lambda: bg.done + len(bg.errors) >= n or bg.errors, '%s: %d payments' % (tag, n), 60 + 3 * n,
             interval=0.2, max_interval=1)
    bg.stop()
    if bg.errors:
        raise Failure('%s: %d payment(s) failed; first: %s' % (tag, len(bg.errors), bg.errors[0]))
    log('%s: %d payments in %.1f s; totals %s' % (tag, n, time.monotonic() - t, json.dumps(payer.counts)))


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--plugin', required=True, help='the built cln-replica binary')
    ap.add_argument('--scale', type=float, default=float(os.environ.get('REALNODE_SCALE', '1')),
                    help='multiplies the number of payments (1: 160; default $REALNODE_SCALE or 1)')
    ap.add_argument('--workdir', help='use this (empty) directory instead of a temporary one')
    ap.add_argument('--keep', action='store_true', help='keep the work directory (logs, journal) at the end')
    ap.add_argument('--shared-cln', help='directory with the CLN tarballs and fakechain.py '
                                         '(default $CLN_SHARED_DIR or ../shared/cln)')
    ap.add_argument('--no-loop', action='store_true', help='even as root, keep the journal in a temporary directory')
    args = ap.parse_args()

    def scaled(n):
        return max(4, int(round(n * args.scale)))

    t_start = time.monotonic()
    env = Env(args.plugin, shared_cln=args.shared_cln, workdir=args.workdir, keep=args.keep,
              want_loop=not args.no_loop)
    ok = False
    try:
        run_upgrade(env, scaled)
        ok = True
    except BaseException as e:
        log('FAILED: %s' % (e if isinstance(e, Failure) else traceback.format_exc()))
        env.print_log_tails()
        if not args.keep:
            env.keep = True
            log('keeping %s for inspection' % env.workdir)
    finally:
        env.cleanup()
        summary(time.monotonic() - t_start, ok, env)
    return 0 if ok else 1


def summary(total_s, ok, env):
    print('\n===== real-node upgrade summary (v25.05 -> v26.06) =====')
    print('journal device: %s' % ('loop-mounted ext4' if env.loop is not None or SUMMARY.get('device')
                                  else 'temporary directory (not root or --no-loop)'))
    for name, secs, good in SUMMARY['phases']:
        print('  %-60s %6.1f s  %s' % (name, secs, 'ok' if good else 'FAILED'))
    for c in SUMMARY['checks']:
        print('  check  ' + c)
    for k in sorted(SUMMARY):
        if k not in ('phases', 'checks', 'stop_s', 'device'):
            print('  %s: %s' % (k, SUMMARY[k]))
    v = SUMMARY['stop_s']['with_plugin']
    if v:
        print('  clean stop with the plugin: %s' % ', '.join('%.2f s' % x for x in v))
    print('total %.1f s: %s' % (total_s, 'PASSED' if ok else 'FAILED'))


def run_upgrade(env, scaled):
    old_lightningd = env.extract_build(os.path.join(env.shared, OLD_TARBALL), os.path.join(env.workdir, 'cln-v25.05'))
    payer = Payer(seed=17)
    a = env.node('a', replica=True)
    b = env.node('b', replica=False)
    c = env.node('c', replica=False)
    nodes = (a, b, c)

    with Phase('1. v25.05 node with the plugin from its first start; channels'):
        info = a.start(lightningd=old_lightningd).rpc.getinfo()
        if not info['version'].startswith('v25.05'):
            raise Failure('node a runs %s, not v25.05' % info['version'])
        scids = setup_star(env, a, b, c)
        gens = journal_status(env, a.journal)['journal']['generations']
        if not gens or gens[0]['base'] != 'empty' or gens[0]['base_version'] != 0:
            raise Failure('the journal did not see the v25.05 node from its first start: %s' % gens[:1])
        log('a runs %s, b and c %s; journal generation 1 starts empty at data_version 0'
            % (info['version'], b.rpc.getinfo()['version']))
        SUMMARY['versions'] = 'a %s (then v26.06), peers b and c %s' % (info['version'], b.rpc.getinfo()['version'])

    with Phase('2. v25.05: payments both ways and forwarded, a close, bookkeeper'):
        pay_mix(payer, a, b, c, scaled(100), 'v25.05', a_is_old=True)
        a.rpc.datastore(['upgrade', 'k'], string='before the upgrade', mode='must-create')
        a.rpc.close(scids['ac_small'])
        mine_and_sync(env, nodes, 1)
        wait_for(lambda: all(ch['state'] in ('ONCHAIN', 'CLOSINGD_COMPLETE', 'FUNDING_SPEND_SEEN')
                             for ch in a.rpc.listpeerchannels()['channels']
                             if ch.get('short_channel_id') == scids['ac_small']),
                 'the small channel to close', 120)
        mine_and_sync(env, nodes, 3)
        pay_mix(payer, a, b, c, scaled(20), 'v25.05 after the close', a_is_old=True)
        wait_all_htlcs(nodes)
        tags = wait_bookkeeper_settled(a, HISTORY_TAGS)
        a.wait_synced()
        views_old = normalized_views(a)
        bkpr_old = bookkeeper_views(a)
        SUMMARY['bookkeeper_v25.05'] = '%d accounts, %d events (%s)' % (
            len(bkpr_old['bkpr-listbalances']), len(bkpr_old['bkpr-listaccountevents']),
            ', '.join('%s/%s' % t for t in tags))
        log('v25.05 bookkeeper: %s' % SUMMARY['bookkeeper_v25.05'])
        timed_stop(a, with_plugin=True)
        old_dv, _, _ = check_journal(env, a, 'v25.05 clean stop')
        old_copy = db_snapshot(a.db, os.path.join(env.workdir, 'v25.05-at-stop.sqlite3'))
        accounts = os.path.join(a.netdir, 'accounts.sqlite3')
        if not os.path.exists(accounts):
            raise Failure('v25.05 left no accounts.sqlite3: bookkeeper kept no history of its own')

    with Phase('3. v26.06 refuses to upgrade without --database-upgrade=true'):
        gen_tip = journal_tip(env, a.journal)
        offset = a.log_size()
        a.start(lightningd=env.lightningd, wait=False)
        rc = a.wait_exit(what='a start without --database-upgrade=true')
        refused = log_lines(a, r'Refusing to irreversibly upgrade db', offset)
        if rc == 0 or not refused:
            raise Failure('v26.06 without --database-upgrade=true: rc %s, refusal %s' % (rc, bool(refused)))
        if journal_tip(env, a.journal) != gen_tip or data_version(a.db) != old_dv:
            raise Failure('the refused start changed the database or the journal')
        log('refused (rc %d): %s; database and journal untouched' % (rc, refused[0].split(': ', 1)[-1][:120]))

    if env.loop is not None:
        with Phase('4. the migration refused: the backup device is read-only'):
            refused_migration(env, a, old_dv)
    else:
        log('NOTE: no loop device (not root, or --no-loop): the refused-migration step is skipped')

    with Phase('5. v26.06 with --database-upgrade=true: the migration through the hook'):
        offset = a.log_size()
        info = a.start(lightningd=env.lightningd,
                       extra=['--database-upgrade=true', '--log-level=io:plugin-cln-replica']).rpc.getinfo()
        updating = log_lines(a, r'Updating database from version %d to %d' % (OLD_SCHEMA, NEW_SCHEMA), offset)
        migrated = log_lines(a, r'bookkeeper migration complete', offset)
        if not updating or not migrated:
            raise Failure('lightningd did not log the %d->%d migration and the bookkeeper import (%s, %s)'
                          % (OLD_SCHEMA, NEW_SCHEMA, bool(updating), bool(migrated)))
        m = re.search(r'migrated (\d+) chainmoves, (\d+) channelmoves, (\d+) descriptions', migrated[0])
        n_chain, n_channel, n_desc = map(int, m.groups())
        log('%s: %s' % (info['version'], migrated[0].split('lightningd: ', 1)[-1].strip()))
        if n_chain == 0 or n_channel == 0:
            raise Failure('the bookkeeper import moved no chain or no channel moves: %s' % migrated[0])
        before_init = hook_calls_before_init(a, offset)
        SUMMARY['bookkeeper_import'] = '%d chainmoves, %d channelmoves, %d descriptions' % (n_chain, n_channel,
                                                                                           n_desc)
        wait_mesh(a, b, c)
        a.wait_synced()
        # The history bookkeeper kept under v25.05 is what v26.06's
        # bookkeeper shows from lightningd's own tables now.
        wait_bookkeeper_settled(a)
        bkpr_new = bookkeeper_views(a)
        ev_diffs = diff_views(bkpr_old, bkpr_new)
        if ev_diffs:
            raise Failure('bookkeeper shows other balances or events after the upgrade:\n  %s'
                          % '\n  '.join(ev_diffs))
        wait_same_views(a, views_old, 'the upgraded node', VIEWS_TIMEOUT_S)
        log('upgraded node: same channels, funds, invoices and payments as v25.05 showed; same bookkeeper balances '
            'and events (%d accounts, %d events)' % (len(bkpr_new['bkpr-listbalances']),
                                                     len(bkpr_new['bkpr-listaccountevents'])))

    with Phase('6. the upgraded node runs; clean stop; the journal'):
        pay_mix(payer, a, b, c, scaled(40), 'v26.06', a_is_old=False)
        a.rpc.datastore(['upgrade', 'k'], string='after the upgrade', mode='must-replace')
        mine_and_sync(env, nodes, 2)
        wait_all_htlcs(nodes)
        a.wait_synced()
        wait_bookkeeper_settled(a)
        views_new = normalized_views(a)
        bkpr_new = bookkeeper_views(a)
        timed_stop(a, with_plugin=True)
        new_dv, _, gen = check_journal(env, a, 'after the upgrade')
        first_upgrade_hook(env, a, old_dv, before_init, (n_chain, n_channel, n_desc), gen)
        diffs = compare_dbs(a.db, a.mirror)
        if diffs:
            raise Failure('the mirror differs from the upgraded database: %s' % diffs[:5])
        log('the mirror equals the upgraded database (data_version %d)' % data_version(a.mirror))

    with Phase('7. restore --at the last v25.05 version; v25.05 opens it'):
        old_restored = os.path.join(env.workdir, 'restored-v25.05.sqlite3')
        rep = restore(env, a.journal, old_restored, at=old_dv)
        diffs = compare_dbs(old_copy, old_restored)
        if diffs or rep['data_version'] != old_dv:
            raise Failure('restore --at %d differs from the v25.05 database (data_version %s):\n  %s'
                          % (old_dv, rep['data_version'], '\n  '.join(diffs[:30])))
        log('restore --at %d == the v25.05 database copied at its clean stop, table by table' % old_dv)
        SUMMARY['checks'].append('restore --at %d: equal to the v25.05 database (schema %d)' % (old_dv, OLD_SCHEMA))
        boot_old(env, old_lightningd, a, old_restored, views_old, old_dv)

    with Phase('8. a v26.06 node on the restored upgraded database'):
        restored = os.path.join(env.workdir, 'restored.sqlite3')
        rep = restore(env, a.journal, restored)
        if compare_dbs(a.db, restored) or rep['data_version'] != new_dv:
            raise Failure('the restored file differs from the upgraded node\'s database')
        os.rename(a.db, a.db + '.upgraded')
        os.rename(restored, a.db)
        log('lightningd.sqlite3 replaced by the restored file (data_version %d)' % rep['data_version'])
        a.start(lightningd=env.lightningd)
        wait_mesh(a, b, c)
        a.wait_synced()
        wait_same_views(a, views_new, 'the node on the restored database', VIEWS_TIMEOUT_S)
        wait_same(lambda: bookkeeper_views(a), bkpr_new, 'the node on the restored database',
                  'bookkeeper balances and events')
        SUMMARY['restored_node'] = 'same %s; same bkpr-listbalances (%d accounts), bkpr-listaccountevents (%d)' % (
            ', '.join('%s (%d)' % (k, len(v)) for k, v in views_new.items()),
            len(bkpr_new['bkpr-listbalances']), len(bkpr_new['bkpr-listaccountevents']))
        log('restored node: %s' % SUMMARY['restored_node'])
        payer.pay(b, c)
        payer.pay(c, b)
        payer.keysend(b, c)
        payer.pay(a, b)
        log('peers pay through the node on the restored database')
        wait_all_htlcs(nodes)
        timed_stop(a, with_plugin=True)
        check_journal(env, a, 'journal continued on the restored node')
        for x in (b, c):
            x.stop()
    SUMMARY['payments'] = json.dumps(payer.counts, sort_keys=True)


def refused_migration(env, a, old_dv):
    """The backup device is remounted read-only: the plugin cannot open the
    journal at the migration's hook and refuses it; lightningd stops without
    committing, and the database is still v25.05's. With the device back, the
    next step's start sends the same migration again."""
    tip = journal_tip(env, a.journal)
    run(['mount', '-o', 'remount,ro', env.loop.mnt])
    stdout = os.path.join(a.dir, 'stdout.log')
    try:
        offset, out_offset = a.log_size(), os.path.getsize(stdout)
        a.start(lightningd=env.lightningd, wait=False, extra=['--database-upgrade=true'])
        rc = a.wait_exit(what='the migration refused by the plugin')
    finally:
        run(['mount', '-o', 'remount,rw', env.loop.mnt])
    # The plugin logs why; lightningd's fatal() prints the refused answer on
    # its stderr.
    said = log_lines(a, r'plugin-cln-replica: cln-replica: cannot open the journal', offset)
    with open(stdout, 'rb') as f:
        f.seek(out_offset)
        fatal = [x for x in f.read().decode('utf-8', 'replace').splitlines() if 'returned failed db_write' in x]
    if rc == 0 or not said or not fatal:
        raise Failure('with the backup device read-only, lightningd exited with rc %s; the plugin\'s refusal is %sin '
                      'its log, lightningd\'s fatal error %son its stderr'
                      % (rc, '' if said else 'not ', '' if fatal else 'not '))
    snap = db_snapshot(a.db, os.path.join(env.workdir, 'after-refused-migration.sqlite3'))
    conn = sqlite3.connect(snap)
    try:
        schema = conn.execute('SELECT version FROM version').fetchone()[0]
    finally:
        conn.close()
    if schema != OLD_SCHEMA or data_version(snap) != old_dv or journal_tip(env, a.journal) != tip:
        raise Failure('after the refused migration: schema %d, data_version %d, journal %s (expected %d, %d, %s)'
                      % (schema, data_version(snap), journal_tip(env, a.journal), OLD_SCHEMA, old_dv, tip))
    os.unlink(snap)
    why = said[0].split('plugin-cln-replica: cln-replica: ', 1)[-1].strip()
    log('refused (rc %d): %s; the database is still schema %d at data_version %d' % (rc, why[:160], schema, old_dv))
    SUMMARY['refused_migration'] = 'lightningd stopped (rc %d), database still schema %d: %s' % (rc, schema,
                                                                                                why[:120])


def first_upgrade_hook(env, a, old_dv, before_init, moves, gen):
    """The journal's records after the last v25.05 change: the first is the
    upgrade's migration, one db_write carrying the bookkeeper import, and it
    came before `init` (lightningd's log counts the hook answers before it)."""
    n_chain, n_channel, n_desc = moves
    recs = [r for r in journal_records(a.journal, gen) if r['kind'] == KIND_CHANGE]
    idx = next((i for i, r in enumerate(recs) if r['data_version'] == old_dv + 1), None)
    if idx is None:
        raise Failure('the journal holds no change at data_version %d (the first after v25.05)' % (old_dv + 1))
    if idx == 0 or recs[idx - 1]['data_version'] != old_dv:
        raise Failure('the change before data_version %d is not v25.05\'s last' % (old_dv + 1))
    after = recs[idx:]
    first = after[0]
    sql = first['statements']
    ins_chain = sum(1 for s in sql if s.startswith('INSERT INTO chain_moves'))
    ins_channel = sum(1 for s in sql if s.startswith('INSERT INTO channel_moves'))
    ins_datastore = sum(1 for s in sql if s.startswith('INSERT INTO datastore'))
    version_set = [s for s in sql if re.match(r'UPDATE version SET version=%d' % NEW_SCHEMA, s)]
    sql_bytes = sum(len(s.encode()) for s in sql)
    json_bytes = len(json.dumps({'data_version': first['data_version'], 'writes': sql}))
    facts = ('data_version %d: %d statements, %d bytes of SQL (the writes as JSON: %d bytes; %d stored in the journal'
             '%s); %d INSERT INTO chain_moves, %d INSERT INTO channel_moves, %d INSERT INTO datastore'
             % (first['data_version'], len(sql), sql_bytes, json_bytes, first['stored_bytes'],
                ', zstd' if first['stored_bytes'] < sql_bytes else '', ins_chain, ins_channel, ins_datastore))
    log('first db_write of the upgrade: ' + facts)
    if not first['txn'] or not version_set:
        raise Failure('the first change after v25.05 is not the migration to schema %d: %s' % (NEW_SCHEMA, facts))
    # The whole import in this one call: every move lightningd says it
    # migrated, and a datastore row for each description.
    if (ins_chain, ins_channel) != (n_chain, n_channel) or ins_datastore < n_desc:
        raise Failure('the migration\'s db_write carries %d chain moves, %d channel moves, %d datastore rows; '
                      'lightningd migrated %d, %d and %d descriptions'
                      % (ins_chain, ins_channel, ins_datastore, n_chain, n_channel, n_desc))
    if before_init < 1:
        raise Failure('lightningd sent init before any db_write of the upgrade start')
    pre = after[:before_init]
    log('%d db_write call(s) answered before init (data_versions %d..%d, %d statements in all); the migration was '
        'the first' % (before_init, pre[0]['data_version'], pre[-1]['data_version'],
                       sum(len(r['statements']) for r in pre)))
    for r in pre[1:]:
        log('  then data_version %d: %d statement(s), %s...' % (r['data_version'], len(r['statements']),
                                                             r['statements'][0][:60] if r['statements'] else ''))
    SUMMARY['upgrade_first_db_write'] = facts
    SUMMARY['upgrade_calls_before_init'] = '%d (the migration first)' % before_init
    SUMMARY['upgrade_calls_after'] = '%d journal records after the migration up to the clean stop' % (len(after) - 1)


def boot_old(env, old_lightningd, a, old_restored, views_old, old_dv):
    """v25.05 opens the restored pre-upgrade database, in a lightning-dir of
    its own (a's hsm_secret, the accounts.sqlite3 the upgrade left in place).

    First with the plugin on a's journal, as an operator who rolls back
    would start it: the journal already holds the upgrade's changes, so the
    plugin must refuse the first hook (the database went backwards) and
    lightningd stop without committing. Then --offline without the plugin: a
    node on an old state must not meet the peers (they would see it behind,
    and a's channels would be lost to the test); it shows step 2's views."""
    d = os.path.join(env.workdir, 'a-v25.05-restored')
    old = env.node('a-v25.05-restored', replica=False, lightning_dir=d)
    shutil.copyfile(os.path.join(a.netdir, 'hsm_secret'), os.path.join(old.netdir, 'hsm_secret'))
    os.chmod(os.path.join(old.netdir, 'hsm_secret'), 0o400)
    shutil.copyfile(os.path.join(a.netdir, 'accounts.sqlite3'), os.path.join(old.netdir, 'accounts.sqlite3'))
    shutil.copyfile(old_restored, old.db)

    config = os.path.join(old.netdir, 'cln-replica.toml')
    with open(config, 'w') as f:
        f.write('journal = "%s"\n' % a.journal)
    tip = journal_tip(env, a.journal)
    offset = old.log_size()
    old.start(lightningd=old_lightningd, with_plugin=True, wait=False, extra=['--offline'])
    rc = old.wait_exit(what='the plugin refusing a database older than its journal')
    halted = log_lines(old, r'lightningd\'s database is at data_version \d+ but the backup already holds', offset)
    if rc == 0 or not halted:
        raise Failure('v25.05 with the plugin on the rolled-back database: rc %s, the plugin %s' % (
            rc, 'refused' if halted else 'did not refuse (it should: the database went backwards)'))
    if data_version(db_snapshot(old.db, old.db + '.check')) != old_dv or journal_tip(env, a.journal) != tip:
        raise Failure('the refused rolled-back start changed the database or the journal')
    os.unlink(old.db + '.check')
    os.unlink(config)
    why = halted[0][halted[0].index("lightningd's database"):].strip()
    log('v25.05 with the plugin on the rolled-back database: refused (rc %d): %s' % (rc, why[:140]))
    SUMMARY['rollback_with_plugin'] = 'refused, lightningd stopped (rc %d): %s' % (rc, why[:110])

    info = old.start(lightningd=old_lightningd, extra=['--offline']).rpc.getinfo()
    if not info['version'].startswith('v25.05') or info['id'] != a.id:
        raise Failure('the node on the restored v25.05 database is %s %s' % (info['version'], info['id']))
    old.wait_synced()
    wait_same_views(old, views_old, 'v25.05 on the restored pre-upgrade database', VIEWS_TIMEOUT_S)
    SUMMARY['v25.05_on_restore'] = 'v25.05 started on it (same node id), same %s; stopped cleanly' % (
        ', '.join('%s (%d)' % (k, len(v)) for k, v in views_old.items()))
    log('v25.05 on the restored pre-upgrade database: %s' % SUMMARY['v25.05_on_restore'])
    old.stop()


if __name__ == '__main__':
    sys.exit(main())
