#!/usr/bin/env python3
"""cln-replica on a real lightningd whose database is large: issue 16.

    scale_node.py --plugin target/ci/cln-replica [--mib 1024] [--bps 20971520] [--keep]
                  [--first-only] [--hold-first-snapshot-s 130]

Three real lightningd (v26.06) on the shared fake regtest chain, the star of
realnode.setup_star around node `a`. `a` runs without the plugin first (an
existing node); while it is stopped its `lightningd.sqlite3` is grown to
--mib MiB with incompressible rows in lightningd's own `datastore` table (32
KiB values under the key ["scale", "NNNNNN"], so the node starts as before and
`listdatastore` serves them). The journal lives on a loop-mounted ext4; with
--bps (root, cgroup v1 blkio) a's lightningd runs in a blkio cgroup throttled
to that many bytes/s, read and write, on the loop device: a USB stick's 20
MB/s by default; the plugin inherits the group. The database, the mirror and
the peers stay on the main disk.

Starts of `a`, each timed from the moment lightningd is started:
- baseline, no plugin: the start lightningd makes without cln-replica;
- first start: the plugin's first start on the existing node (the journal is
  empty: the first snapshot);
- baseline, plugin in sync: a restart with the journal up to date (no
  snapshot);
- gap: a ran without the plugin and made changes; the next start with it
  takes a new snapshot;
- filter change: `filter = "caches"` added to cln-replica.toml; the next
  start takes a filtered snapshot in a new generation.

For each: seconds from start to the plugin's `init` (the request lightningd
sends, from its io log of the plugin) and to lightningd's "Server started";
to `getinfo` answering; to both peers connected with every channel
CHANNELD_NORMAL; the snapshot hook's duration (CLN_REPLICA_HOOK_TRACE: the
longest hook of that start, and the hooks before init), and what lightningd
and the peers logged: plugin timeouts and kills, and disconnections after a
had reconnected. Then b pays c through a and a pays b, a stops, and the
journal restores to exactly a's database (suite.check_journal) after each
case that took a snapshot. With --bps, after each snapshot it also checks
that the snapshot's writes went through the throttle (Throttle.written_bytes
says how they can bypass it) and marks the start "(throttle leaked)" if not.

--first-only stops after the first start (a quicker run at a larger --mib);
--hold-first-snapshot-s N freezes the plugin N seconds inside the first
snapshot's hook, to see what lightningd does with a hook longer than its
120 s plugin startup deadline. docs/REAL-NODE.md has the figures.

Nothing sleeps to synchronise: every wait polls with a deadline.
"""
import argparse
import datetime
import os
import re
import signal
import sqlite3
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from realnode import (  # noqa: E402
    CGROUP_ROOT, Env, Failure, LightningRpc, Payer, Throttle, log, setup_star, wait_for)
import suite  # noqa: E402
from suite import check_journal, datastore_work, wait_mesh  # noqa: E402

# One datastore value: 32 KiB of random bytes (incompressible, like the
# encrypted blobs plugins keep there), spread over SQLite overflow pages.
ROW_BYTES = 32 << 10
# Rows inserted per transaction while growing the database (2 MiB: the
# file ends within one batch of --mib).
ROWS_PER_TXN = 64
# A USB stick's sequential speed.
DEFAULT_BPS = 20 << 20
# Waits for a start: a snapshot of the whole database at the throttled speed
# (read from the main disk, written to the device) plus lightningd's own
# start, with a margin for a loaded machine.
START_BASE_S = 120
# Stop: the plugin seals the journal; the mirror may still be catching up.
STOP_TIMEOUT_S = 300
# What lightningd logs when a plugin misbehaves, and a peer when a
# connection drops (v26.06: lightningd/plugin.c plugin_kill,
# plugin_manifest_timeout; connectd and channeld's disconnect lines).
PLUGIN_TROUBLE = re.compile(r'timed out|Killing plugin|Can\'t recover|important plugin|Plugin .*exited|'
                            r'plugin-cln-replica.*(died|killed)', re.I)
PEER_TROUBLE = re.compile(r'disconnect|Peer transient failure|Peer connection lost|timed out|'
                          r'Connection reset|ping', re.I)
# A timestamp, then the level (absent on io lines), the subsystem and the text.
LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s+(.*)$')


def log_time(stamp):
    """lightningd's log timestamps are UTC, microseconds or milliseconds."""
    return datetime.datetime.strptime(stamp, '%Y-%m-%dT%H:%M:%S.%f').replace(
        tzinfo=datetime.timezone.utc).timestamp()


def log_events(text):
    """(unix seconds, the rest of the line) for every timestamped line."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            out.append((log_time(m.group(1)), m.group(2)))
    return out


def grow_database(db, mib):
    """Adds datastore rows until the file holds `mib` MiB. The node is
    stopped: lightningd's own table, lightningd's own key encoding (parts
    joined by NUL bytes, wallet/datastore.c), generation 0."""
    conn = sqlite3.connect(db)
    try:
        target = mib << 20
        n = conn.execute("SELECT count(*) FROM datastore WHERE key >= CAST('scale' AS BLOB) || X'00' "
                         "AND key < CAST('scale' AS BLOB) || X'01'").fetchone()[0]
        while os.path.getsize(db) < target:
            rows = [(b'scale\x00%06d' % (n + i), os.urandom(ROW_BYTES)) for i in range(ROWS_PER_TXN)]
            with conn:
                conn.executemany('INSERT INTO datastore (key, data, generation) VALUES (?, ?, 0)', rows)
            n += ROWS_PER_TXN
        return n
    finally:
        conn.close()


class Scale:
    def __init__(self, args):
        self.args = args
        self.rows = []
        self.trace = None
        self.throttle = None

    # -- one start -------------------------------------------------------------
    def timed_start(self, a, b, c, case, with_plugin, expect, hold_s=0):
        """Starts a and measures; returns the row of the summary table.
        `expect`: the plugin log line that announces this start's snapshot
        (None: no snapshot expected)."""
        trace_at = os.path.getsize(self.trace) if os.path.exists(self.trace) else 0
        logs_at = {n.name: n.log_size() for n in (a, b, c)}
        lightningd = self.throttle.wrapper if (self.throttle and with_plugin) else None
        # The io log of the plugin names every request lightningd sends it
        # ("cln:init#N[OUT]"): when init went out.
        extra = ['--log-level=io:plugin-cln-replica'] if with_plugin else []
        timeout = START_BASE_S + (3 * (self.args.mib << 20) // self.args.bps if self.args.bps else 60)
        throttled_at = self.throttle.written_bytes() if self.throttle else 0
        db_mib = os.path.getsize(a.db) / 2**20
        w = {'start': time.time()}
        t0 = time.monotonic()
        a.start(with_plugin=with_plugin, wait=False, extra=extra, lightningd=lightningd)
        if hold_s:
            row_hold = self.hold_snapshot(a, expect, hold_s, timeout)

        def answered():
            if a.proc.poll() is not None:
                raise Failure('lightningd a exited with %s while starting (%s)' % (a.proc.returncode, case))
            if not os.path.exists(a.socket):
                return False
            a.rpc = LightningRpc(a.socket)
            return a.rpc.getinfo()
        info = wait_for(answered, 'a to answer getinfo (%s)' % case, timeout, interval=0.02, max_interval=0.2)
        row = {'case': case, 'getinfo_s': time.monotonic() - t0}
        if hold_s:
            row['held_s'] = row_hold
        a.id = info['id']
        a._remember_children()

        def peers_ready():
            chans = a.channels()
            normal = [ch for ch in chans if ch['state'] == 'CHANNELD_NORMAL']
            return ({ch['peer_id'] for ch in normal if ch.get('peer_connected')} >= {b.id, c.id}
                    and all(ch.get('peer_connected') for ch in normal))
        wait_for(peers_ready, 'a reconnected to b and c, channels normal (%s)' % case, timeout, interval=0.02,
                 max_interval=0.2)
        row['peers_s'] = time.monotonic() - t0
        w['ready'] = time.time()
        # The node must still forward and pay.
        wait_mesh(a, b, c)
        self.payer.pay(b, c)
        self.payer.pay(a, b)
        a.wait_htlcs_resolved()
        datastore_work(a, 'scale-%d' % len(self.rows))
        got = a.rpc.listdatastore(['scale', '%06d' % (self.datastore_rows - 1)])['datastore']
        if not got or len(got[0].get('hex', '')) != 2 * ROW_BYTES:
            raise Failure('listdatastore of the last grown row: %r' % (str(got)[:200],))
        w['stop'] = time.time()
        row['stop_s'] = a.stop(timeout=STOP_TIMEOUT_S)
        if self.throttle and with_plugin and expect:
            # The snapshot is about the database's size (a filtered one a
            # little less: utxoset emptied).
            row['snapshot_mib'] = db_mib
            row['throttled_mib'] = (self.throttle.written_bytes() - throttled_at) / 2**20
        row.update(self.read_a_log(a, logs_at['a'], w, with_plugin, expect, case))
        row.update(self.read_trace(trace_at, w['start'], row.get('init_wall')))
        row['peer_lines'] = self.peer_lines((b, c), logs_at, w)
        self.report(row)
        self.rows.append(row)
        return row

    def hold_snapshot(self, a, expect, hold_s, timeout):
        """Freezes the plugin (SIGSTOP) once it has logged that it is taking
        the snapshot, for hold_s seconds, then lets it go on: a snapshot
        hook longer than lightningd's 120 s plugin startup deadline, whatever
        the device. Returns the seconds it was held."""
        offset = a.log_offset
        wait_for(lambda: expect in a.log_since(offset), 'the plugin to log "%s"' % expect, timeout)
        pid = wait_for(a.plugin_pid, 'the plugin\'s pid', 10)
        os.kill(pid, signal.SIGSTOP)
        t = time.monotonic()
        log('plugin %d frozen inside its snapshot hook for %d s' % (pid, hold_s))
        try:
            # The hold is the experiment's length, not a wait for an event.
            while time.monotonic() - t < hold_s:
                if a.proc.poll() is not None:
                    raise Failure('lightningd exited (%s) while the plugin was held' % a.proc.returncode)
                time.sleep(min(1.0, max(0.0, hold_s - (time.monotonic() - t))))
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.monotonic() - t

    def read_a_log(self, a, offset, w, with_plugin, expect, case):
        ev = log_events(a.log_since(offset))
        t0 = w['start']
        out = {'trouble': [l for (t, l) in ev if PLUGIN_TROUBLE.search(l) and t < w['stop']],
               'at_stop': [l for (t, l) in ev if PLUGIN_TROUBLE.search(l) and t >= w['stop']]}
        started = [t for (t, l) in ev if 'Server started with public key' in l]
        out['server_started_s'] = started[0] - t0 if started else None
        if not with_plugin:
            return out
        inits = [t for (t, l) in ev if re.search(r'plugin-cln-replica: cln:init#\d+\[OUT\]', l)]
        out['init_wall'] = inits[0] if inits else None
        out['init_s'] = inits[0] - t0 if inits else None
        done = [t for (t, l) in ev if re.search(r'plugin-cln-replica: generation \d+ started', l)]
        if expect:
            snap = [t for (t, l) in ev if 'plugin-cln-replica: ' + expect in l]
            if not snap or not done:
                raise Failure('%s: the plugin did not log "%s" and a new generation' % (case, expect))
            out['snapshot_log_s'] = done[0] - snap[0]
            out['snapshot_start_s'] = snap[0] - t0
            out['snapshot_end_s'] = done[0] - t0
            out['snapshot_before_init'] = out['init_wall'] is not None and done[0] <= out['init_wall']
            if not out['snapshot_before_init']:
                log('NOTE %s: the snapshot did not end before lightningd sent init' % case)
        elif done:
            raise Failure('%s: the plugin took a snapshot where none was expected' % case)
        return out

    def read_trace(self, offset, t0_wall, init_wall):
        """The hooks of this start from CLN_REPLICA_HOOK_TRACE (`unix_ms us`
        lines, stamped as each hook ends; written by the plugin off the
        hook's path and at its exit)."""
        samples = []
        if os.path.exists(self.trace):
            with open(self.trace) as f:
                f.seek(offset)
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and not line.startswith('#'):
                        samples.append((int(parts[0]) / 1000.0, int(parts[1])))
        samples = [s for s in samples if s[0] >= t0_wall]
        if not samples:
            return {'hooks': 0}
        longest = max(samples, key=lambda s: s[1])
        rest = sorted(s[1] for s in samples if s is not longest)
        return {'hooks': len(samples), 'hook_max_s': longest[1] / 1e6,
                'hook_max_end_s': longest[0] - t0_wall,
                'hook_next_max_ms': rest[-1] / 1e3 if rest else None,
                'hooks_before_init': (len([s for s in samples if s[0] <= init_wall])
                                      if init_wall is not None else None)}

    def peer_lines(self, peers, offsets, w):
        """What b and c logged about their link to a, by window: while a was
        starting (a was down: expected), from a's reconnection to its stop
        (none expected), and during a's stop (expected)."""
        out = {}
        for n in peers:
            hits = [(t, l) for (t, l) in log_events(n.log_since(offsets[n.name]))
                    if PEER_TROUBLE.search(l) and t >= w['start']]
            out[n.name] = {'starting': [l for (t, l) in hits if t < w['ready']],
                           'running': [l for (t, l) in hits if w['ready'] <= t < w['stop']],
                           'stopping': [l for (t, l) in hits if t >= w['stop']]}
        return out

    def report(self, row):
        log('%s: getinfo %.2f s, peers+channels %.2f s, init sent %s, "Server started" %s, '
            'longest hook %s (next %s ms), hooks before init %s, stop %.2f s' % (
                row['case'], row['getinfo_s'], row['peers_s'],
                fmt(row.get('init_s')), fmt(row.get('server_started_s')), fmt(row.get('hook_max_s')),
                '%.1f' % row['hook_next_max_ms'] if row.get('hook_next_max_ms') is not None else '-',
                row.get('hooks_before_init', '-'), row['stop_s']))
        if 'held_s' in row:
            log('  the plugin was frozen %.1f s inside that hook' % row['held_s'])
        if 'throttled_mib' in row:
            log('  the snapshot wrote about %.0f MiB; the throttle saw %.0f MiB of writes'
                % (row['snapshot_mib'], row['throttled_mib']))
            if leaked(row):
                log('  WARNING: the kernel\'s flusher wrote the rest unthrottled (dirty data past '
                    'the background threshold): this start\'s figures are NOT at the throttled speed')
        if 'snapshot_log_s' in row:
            log('  snapshot (plugin log): %.2f s, from %.2f s to %.2f s after start; before init: %s'
                % (row['snapshot_log_s'], row['snapshot_start_s'], row['snapshot_end_s'],
                   row['snapshot_before_init']))
        for l in row['trouble']:
            log('  a logged: %s' % l[:300])
        if not row['trouble']:
            log('  a logged no plugin timeout, kill or failure while starting and running')
        for l in row['at_stop']:
            log('  a logged during its stop: %s' % l[:300])
        for name, parts in row['peer_lines'].items():
            for when in ('starting', 'running', 'stopping'):
                for l in parts[when][:6]:
                    log('  %s (while a was %s): %s' % (name, when, l[:300]))
                if len(parts[when]) > 6:
                    log('  %s (while a was %s): ... %d more' % (name, when, len(parts[when]) - 6))
            if not parts['running']:
                log('  %s logged no disconnect between a\'s reconnection and its stop' % name)

    # -- the run ---------------------------------------------------------------
    def run(self):
        args = self.args
        # The journal holds three snapshots of the whole database (first
        # start, gap, filter change), the records, and room to spare.
        self.env = env = Env(args.plugin, shared_cln=args.shared_cln, workdir=args.workdir, keep=args.keep,
                             loop_mb=(1 if args.first_only else 3) * args.mib + 512)
        self.trace = os.path.join(env.workdir, 'hook-trace')
        os.environ['CLN_REPLICA_HOOK_TRACE'] = self.trace

        def on_signal(signum, frame):
            log('signal %d: cleaning up' % signum)
            self.cleanup()
            os._exit(128 + signum)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, on_signal)
        if args.bps:
            if env.loop is None or not os.path.isdir(CGROUP_ROOT):
                raise Failure('--bps needs root, a loop device and cgroup v1 blkio (%s)' % CGROUP_ROOT)
            self.throttle = Throttle(env, env.loop.dev, args.bps, 'scale-node')
        self.payer = Payer(seed=16)
        a = env.node('a', replica=False)
        b = env.node('b', replica=False)
        c = env.node('c', replica=False)
        setup_star(env, a, b, c, extra_channel=False)
        for i in range(6):
            self.payer.pay(b, c)
        a.wait_htlcs_resolved()
        a.stop()
        t = time.monotonic()
        self.datastore_rows = grow_database(a.db, args.mib)
        log('grew a\'s database to %.0f MiB: %d datastore rows of %d KiB in %.1f s'
            % (os.path.getsize(a.db) / 2**20, self.datastore_rows, ROW_BYTES >> 10, time.monotonic() - t))

        self.timed_start(a, b, c, 'baseline: no plugin', with_plugin=False, expect=None)
        a.write_replica_config()
        self.timed_start(a, b, c, 'first start with the plugin' + (
            ', held %d s' % args.hold_first_snapshot_s if args.hold_first_snapshot_s else ''), with_plugin=True,
            expect='journal is empty: taking the first snapshot', hold_s=args.hold_first_snapshot_s)
        check_journal(env, a, 'first start')
        if args.first_only:
            return a
        self.timed_start(a, b, c, 'baseline: plugin in sync', with_plugin=True, expect=None)
        # The gap: a runs without the plugin and commits changes it never sees.
        self.timed_start(a, b, c, 'run without the plugin', with_plugin=False, expect=None)
        self.timed_start(a, b, c, 'gap heals', with_plugin=True, expect='gap: lightningd committed')
        check_journal(env, a, 'gap')
        a.write_replica_config(extra=['filter = "caches"'])
        self.timed_start(a, b, c, 'filter change', with_plugin=True, expect='filter changed from "none" to "caches"')
        check_journal(env, a, 'filter change', filtered=True)
        return a

    def summary(self, total_s):
        args = self.args
        print()
        print('== scale_node.py --mib %d %s, %s, %d datastore rows, %.0f s in all'
              % (args.mib, ('--bps %d (%.1f MB/s, journal device, read and write)' % (args.bps, args.bps / 2**20))
                 if args.bps else '(unthrottled loop device)', time.strftime('%Y-%m-%d'), self.datastore_rows,
                 total_s))
        cols = ['case', 'getinfo', 'peers + channels', 'snapshot (plugin log)', 'snapshot hook (lightningd waits)',
                'init sent', 'hooks before init', 'stop', 'a: plugin timeouts/kills', 'b, c: drops while a ran']
        print('| ' + ' | '.join(cols) + ' |')
        print('|---|' + '---:|' * (len(cols) - 1))
        for r in self.rows:
            drops = sum(len(p['running']) for p in r['peer_lines'].values())
            snap = fmt(r.get('hook_max_s')) if 'snapshot_log_s' in r else '-'
            span = ('%.2f-%.2f s' % (r['snapshot_start_s'], r['snapshot_end_s'])) if 'snapshot_log_s' in r else '-'
            hbi = r.get('hooks_before_init')
            print('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
                r['case'] + (' (throttle leaked)' if leaked(r) else ''), fmt(r['getinfo_s']), fmt(r['peers_s']),
                span, snap,
                fmt(r.get('init_s')), '-' if hbi is None else hbi, fmt(r['stop_s']),
                len(r['trouble']) or 'none', drops or 'none'))
        print('(seconds from lightningd\'s start; "snapshot hook": the longest db_write hook of that start, '
              'from CLN_REPLICA_HOOK_TRACE; "init sent": lightningd\'s io log of the plugin)')
        for line in suite.SUMMARY['checks']:
            print('check: %s' % line)

    def cleanup(self):
        self.env.cleanup() if getattr(self, 'env', None) else None
        if self.throttle:
            self.throttle.cleanup()


def leaked(row):
    """Whether less than 90% of the snapshot's writes went through the
    throttle (Throttle.written_bytes says why that happens)."""
    return 'throttled_mib' in row and row['throttled_mib'] < 0.9 * row['snapshot_mib']


def fmt(v):
    return '-' if v is None else '%.2f s' % v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--plugin', required=True, help='the built cln-replica binary')
    ap.add_argument('--mib', type=int, default=1024, help='grow a\'s database to this many MiB (default 1024)')
    ap.add_argument('--bps', type=int, default=DEFAULT_BPS,
                    help='throttle the journal device to this many bytes/s (default 20 MB/s; 0: unthrottled)')
    ap.add_argument('--first-only', action='store_true',
                    help='only the baseline and the first start (a quicker run at a larger --mib)')
    ap.add_argument('--hold-first-snapshot-s', type=int, default=0,
                    help='freeze the plugin (SIGSTOP) this many seconds inside the first snapshot\'s hook: '
                         'a hook longer than lightningd\'s 120 s startup deadline')
    ap.add_argument('--workdir', help='use this (empty) directory instead of a temporary one')
    ap.add_argument('--keep', action='store_true', help='keep the work directory at the end')
    ap.add_argument('--shared-cln', help='directory with the CLN tarball and fakechain.py')
    args = ap.parse_args()
    s = Scale(args)
    t = time.monotonic()
    ok = False
    try:
        s.run()
        ok = True
    except Exception as e:  # noqa: B902 - reported, logs kept
        traceback.print_exc()
        log('FAILED: %s' % e)
        if getattr(s, 'env', None):
            s.env.print_log_tails()
            s.env.keep = True
    finally:
        if getattr(s, 'datastore_rows', None) is not None:
            s.summary(time.monotonic() - t)
        s.cleanup()
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
