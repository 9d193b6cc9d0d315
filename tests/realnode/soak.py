#!/usr/bin/env python3
"""A soak: the real three-node workload (lightningd v26.06 on fakechain.py,
cln-replica as node a's important plugin) for N payments, with faults
injected at random intervals from a printed seed, and the journal checked
against the node's database after every one of them.

Payments go one at a time: b pays a, a pays b, c pays b through a. Between
faults they run on the main thread and must all succeed; a fault is injected
while a second thread keeps payments in flight (those it interrupts are
expected). The faults, each at least once when N allows (the first ones are a
shuffled list of every kind, the rest drawn at random):

- kill9_lightningd: kill -9 of lightningd mid-payment (aimed between a hook
  answer and its commit when it can be caught, like the suite's step 3);
- kill9_plugin: kill -9 of the plugin; its guard kills lightningd;
- device_full: a ballast file leaves less than half a segment free on the
  journal's loop device; lightningd stops before committing; the ballast is
  removed and the node restarted;
- compaction: `replica-compact` under load (retention keeps 2 generations);
  the switch must happen while payments flow;
- clean_restart: `stop`, start;
- s3_kill: kill -9 of node a's destination, the real s3s-fs on 127.0.0.1,
  while payments flow. With remote_sync = "channel-state" and
  remote_sync_on_timeout = "degrade" (Soak.__init__ says why) the
  first channel-state change waits remote_sync_timeout_ms, then the plugin
  says SYNCHRONOUS REPLICATION DEGRADED and lightningd goes on: payments must
  keep succeeding while the server is gone. s3s-fs restarts on the same
  directory and port, the plugin catches up (bounded wait on replica-status),
  and the next channel-state change is synchronous again.

After each fault the node is stopped (or dead), and `cln-replica restore` of
the journal must equal its database (suite.check_journal: schema and every
table's rows). Then a runs again until its destination has caught up
(replica-status: queue_records 0, no error), stops cleanly, the destination's
tip (`cln-replica status --from s3://...`) must be the journal's, and
`cln-replica restore --from s3://...` must equal the database too. The
plugin's RSS and the journal's size are sampled after every payment batch;
at the end the RSS must be flat (the largest sample of the last
third at most 1.5x + 16 MiB the largest of the first third) and the journal
within its compaction bounds; the journal restores into a new file that
replaces a's database, a starts on it, and b, c pay through it.

    python3 tests/realnode/soak.py --plugin target/ci/cln-replica --payments 5000 [--seed S] [--keep]

The plugin must be built with the `remote` feature (s3://). s3s-fs is
CLN_REPLICA_S3S_FS, else /opt/cln-replica-tools/bin/s3s-fs. CI
(scripts/test.d/80-soak) runs SOAK_PAYMENTS=120. Root is needed for the loop
device (without it the disk-full fault is left out, said loudly).
"""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import suite  # noqa: E402
from realnode import (Env, Failure, Payer, pay_cycle, compare_dbs, connect, data_version, db_snapshot,  # noqa: E402
                      free_port, journal_tip, log, restore, run, setup_star, wait_channel_normal, wait_for)
from pyln.client import RpcError  # noqa: E402

SEGMENT_BYTES = 512 << 10
# Small enough that the journal compacts on its own every few hundred
# payments besides the forced compactions; retention keeps 2 generations.
COMPACT_JOURNAL_BYTES = 8 << 20
KEEP_GENERATIONS = 2
FAULTS = ('kill9_lightningd', 'kill9_plugin', 'device_full', 'compaction', 'clean_restart', 's3_kill')
# Payments between two faults: a random count around N / (faults + 1).
PAYMENTS_PER_FAULT_MIN = 15
COMPACTION_TIMEOUT_S = 240
FLOWING_TIMEOUT_S = 120

S3S_FS = os.environ.get('CLN_REPLICA_S3S_FS') or os.path.join(
    os.environ.get('CLN_REPLICA_TOOLS', '/opt/cln-replica-tools'), 'bin', 's3s-fs')
S3_START_TIMEOUT_S = 20
# The synchronous tier's wait, before it degrades (the default).
REMOTE_SYNC_TIMEOUT_MS = 5000
# The plugin's retries back off to 30 s between attempts
# (src/remote/worker.rs), so after s3s-fs comes back the next attempt may be
# up to 30 s away; then the catch-up itself, at upload_bytes_per_s_max.
CATCHUP_TIMEOUT_S = 180
# While s3s-fs is gone: the plugin degrades within REMOTE_SYNC_TIMEOUT_MS of
# the first channel-state change, then this many payments must succeed.
PAYMENTS_WHILE_DOWN = 3
DOWN_TIMEOUT_S = 120
# Payments, once the destination has caught up, within which the synchronous
# tier must be active again.
RESUME_PAYMENTS_MAX = 30


class Stream:
    """Payments one at a time on a thread of their own until stopped; a
    failure (a fault interrupting one) is counted, not raised."""

    def __init__(self, payer, nodes, start):
        self.payer, self.nodes = payer, nodes
        self.ok = 0
        self.failed = 0
        self.i = start
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                pay_cycle(self.payer, *self.nodes, self.i)
                self.ok += 1
            except Exception:  # noqa: B902 - an interrupted payment is expected
                self.failed += 1
                if not all(n.running() for n in self.nodes):
                    return
            self.i += 1

    def stop(self, timeout=120):
        self.stop_flag.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Failure('the payment stream is still busy %ds after stop' % timeout)


class S3Server:
    """The real s3s-fs on 127.0.0.1, node a's destination: started, killed
    with -9 and restarted on the same directory and port (the s3_kill
    fault), and ended by Env's cleanup."""

    # The throwaway server's own credentials, given to it on its command line.
    ACCESS_KEY, SECRET_KEY = 'soak-access', 'soak-secret'
    BUCKET, PREFIX = 'bucket', 'node-a'

    def __init__(self, env):
        if not os.access(S3S_FS, os.X_OK):
            raise Failure('%s is not an executable (set CLN_REPLICA_S3S_FS; scripts/setup installs it)' % S3S_FS)
        self.root = os.path.join(env.workdir, 's3')
        os.makedirs(os.path.join(self.root, self.BUCKET), exist_ok=True)
        self.logfile = os.path.join(env.workdir, 's3s-fs.log')
        self.port = free_port()
        self.proc = None
        env.cleanups.append(self.kill9)

    def start(self):
        with open(self.logfile, 'a') as logf:
            self.proc = subprocess.Popen([S3S_FS, '--host', '127.0.0.1', '--port', str(self.port),
                                          '--access-key', self.ACCESS_KEY, '--secret-key', self.SECRET_KEY, self.root],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        wait_for(self._listening, 's3s-fs to listen on 127.0.0.1:%d' % self.port, S3_START_TIMEOUT_S)

    def _listening(self):
        if self.proc.poll() is not None:
            raise Failure('s3s-fs exited with rc %s (log: %s)' % (self.proc.returncode, self.logfile))
        with socket.create_connection(('127.0.0.1', self.port), timeout=1):
            return True

    def kill9(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def destination(self):
        """The [[destination]] table of node a's configuration."""
        return ['[[destination]]',
                'url = "s3://%s/%s"' % (self.BUCKET, self.PREFIX),
                'endpoint = "http://127.0.0.1:%d"' % self.port,
                'region = "us-east-1"',
                'access_key_id = "%s"' % self.ACCESS_KEY,
                'secret_access_key = "%s"' % self.SECRET_KEY]

    def url(self):
        """The URL for `cln-replica restore/status --from` (credentials from the environment)."""
        return 's3://%s/%s?endpoint=http://127.0.0.1:%d&region=us-east-1' % (self.BUCKET, self.PREFIX, self.port)

    def cli_env(self):
        return dict(os.environ, AWS_ACCESS_KEY_ID=self.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=self.SECRET_KEY)


def rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


class Soak:
    def __init__(self, env, args):
        self.env, self.args = env, args
        self.rng = random.Random(args.seed)
        self.payer = Payer(seed=args.seed)
        self.s3 = S3Server(env)
        self.key = os.path.join(env.workdir, 'cln-replica.key')
        run([env.plugin, 'keygen', '--out', self.key])
        self.a = env.node('a', replica=False, segment_bytes=SEGMENT_BYTES)
        self.a.replica = True
        self.a.write_replica_config(SEGMENT_BYTES, extra=[
            'compact_journal_bytes = %d' % COMPACT_JOURNAL_BYTES,
            'keep_generations = %d' % KEEP_GENERATIONS,
            'key_file = "%s"' % self.key,
            # What an operator with one destination would choose: every
            # channel-state change (revocation secrets, HTLC signatures,
            # commitments: what a stale restore could be punished for) is at
            # the destination before lightningd commits it; but when the
            # destination or the uplink goes away, the node stays up
            # (degrade) rather than stopping (halt). A stopped node cannot
            # watch its channels or answer a cheat within the to_self_delay,
            # which is worse than minutes of background-only shipping with
            # the local journal still holding everything, the error logged
            # and `remote.degraded` in the status. halt is for a quorum of
            # independent destinations.
            'remote_sync = "channel-state"',
            'remote_sync_on_timeout = "degrade"',
            'remote_sync_timeout_ms = %d' % REMOTE_SYNC_TIMEOUT_MS,
        ] + self.s3.destination())
        # The configuration holds the destination's credentials.
        os.chmod(os.path.join(self.a.netdir, 'cln-replica.toml'), 0o600)
        self.b = env.node('b', replica=False)
        self.c = env.node('c', replica=False)
        self.paid = 0          # payments that succeeded, steady and in flight
        self.interrupted = 0   # payments a fault interrupted
        self.index = 0         # position in the payment cycle
        self.faults = {k: 0 for k in FAULTS}
        self.checks = 0        # journal restores equal to the database
        self.dest_checks = 0   # restores from the destination equal to the database
        self.resumed_after = []  # per s3_kill: payments until the synchronous tier was back
        self.samples = []      # (paid, rss_kib, journal_bytes, db_bytes)
        self.stream = None     # the in-flight payments of the last fault

    @property
    def nodes(self):
        return (self.a, self.b, self.c)

    def sample(self):
        pid = self.a.plugin_pid()
        rss = rss_kib(pid) if pid else None
        if rss is not None:
            self.samples.append((self.paid, rss, dir_bytes(self.a.journal), os.path.getsize(self.a.db)))

    def steady(self, n):
        for _ in range(n):
            pay_cycle(self.payer, *self.nodes, self.index)
            self.index += 1
            self.paid += 1
            if self.paid % 10 == 0:
                self.sample()
            if self.paid % 100 == 0:
                log('%d payments; plugin RSS %s KiB, journal %s bytes' % (
                    self.paid, *(self.samples[-1][1:3] if self.samples else ('?', '?'))))

    def resume(self, join=False):
        """a back with its plugin, meshed, the fault's payments finished,
        every HTLC resolved."""
        if not self.a.running():
            self.a.start()
        connect(self.a, self.b)
        connect(self.c, self.a)
        wait_channel_normal(self.a, self.b)
        wait_channel_normal(self.a, self.c)
        if join:
            self.join_stream()
            suite.forget_routing_failures(self.nodes)
        for x in self.nodes:
            x.wait_htlcs_resolved()
        suite.forget_routing_failures(self.nodes)

    def in_flight(self):
        s = Stream(self.payer, self.nodes, self.index)
        wait_for(lambda: s.ok >= 2 or s.failed, 'payments to be flowing', FLOWING_TIMEOUT_S)
        return s

    def end_stream(self, s):
        """No new payments from s; those in flight may need node a back to
        finish (an HTLC through a dead node waits for it), so s is joined
        after the restart (join_stream)."""
        s.stop_flag.set()
        self.stream = s

    def join_stream(self):
        s, self.stream = self.stream, None
        if s is None:
            return
        s.stop()
        self.paid += s.ok
        self.interrupted += s.failed
        self.index = s.i + 1

    def check(self, label):
        suite.check_journal(self.env, self.a, '%s-%d' % (label, self.checks))
        self.checks += 1

    def destination(self):
        return self.a.rpc.call('replica-status')['remote']['destinations'][0]

    def wait_caught_up(self, what):
        """a is running: its destination holds every record of the local
        journal and its last attempt succeeded."""
        def ok():
            d = self.destination()
            return d['connected'] and d['queue_records'] == 0 and d['last_error'] is None
        t = time.monotonic()
        wait_for(ok, 'the destination to catch up (%s)' % what, CATCHUP_TIMEOUT_S, max_interval=1)
        return time.monotonic() - t

    def check_destination(self, label):
        """a is running and quiet: once the destination has caught up, a
        stops cleanly (its drain ships what lightningd wrote since); the
        destination's tip must then be the journal's, and a restore from it
        must equal the database."""
        self.wait_caught_up(label)
        self.a.stop()
        label = '%s-%d' % (label, self.dest_checks)
        snap = db_snapshot(self.a.db, os.path.join(self.env.workdir, 'dest-%s-node.sqlite3' % label))
        dv = data_version(snap)
        gen, tip = journal_tip(self.env, self.a.journal)
        if tip != dv:
            raise Failure('%s: after a clean stop the journal (data_version %s) is not at the database (%d)'
                          % (label, tip, dv))
        cli = [self.env.plugin, '--from', self.s3.url(), '--key-file', self.key, '--json']
        survey = json.loads(run([cli[0], 'status'] + cli[1:], env=self.s3.cli_env()).stdout)['survey']
        t = survey['tip']
        if t is None or (t['generation'], t['data_version']) != (gen, dv):
            raise Failure('%s: the destination\'s tip is %s, the journal is at generation %d data_version %d '
                          '(the plugin said it had caught up, and the clean stop drains)'
                          % (label, t and 'generation %d data_version %d' % (t['generation'], t['data_version']),
                             gen, dv))
        rest = os.path.join(self.env.workdir, 'dest-%s-restored.sqlite3' % label)
        rep = json.loads(run([cli[0], 'restore'] + cli[1:3] + ['--to', rest] + cli[3:],
                             env=self.s3.cli_env()).stdout)
        diffs = compare_dbs(snap, rest)
        if diffs:
            raise Failure('%s: the restore from the destination differs from the node\'s database:\n  %s'
                          % (label, '\n  '.join(diffs[:30])))
        self.dest_checks += 1
        log('CHECK %s: restore from %s == node database at data_version %d, generation %d (tip counter %d)'
            % (label, survey['destination'], dv, rep['generation'], t['counter']))
        for p in (snap, rest):
            os.unlink(p)

    # -- the faults ----------------------------------------------------------
    def kill9_lightningd(self):
        s = self.in_flight()
        caught = suite.kill9_lightningd_midcommit(self.env, self.a, attempts=100)
        self.end_stream(s)
        self.check('kill9-lightningd')
        return 'between a hook answer and its commit' if caught else 'not caught between hook and commit'

    def kill9_plugin(self):
        s = self.in_flight()
        os.kill(self.a.plugin_pid(), signal.SIGKILL)
        rc = self.a.wait_exit(what='kill -9 of its important plugin')
        self.end_stream(s)
        if rc != -signal.SIGKILL:
            raise Failure('lightningd exited with rc %s after its plugin was killed; expected the guard\'s SIGKILL'
                          % rc)
        self.check('kill9-plugin')
        return 'lightningd killed by the guard'

    def device_full(self):
        loop = self.env.loop
        ballast = os.path.join(loop.mnt, 'ballast')
        free = loop.free_bytes()
        run(['fallocate', '-l', str(max(0, free - SEGMENT_BYTES // 2)), ballast])
        offset = self.a.log_size()
        s = Stream(self.payer, self.nodes, self.index)
        try:
            wait_for(lambda: not self.a.running(), 'lightningd to stop on the full backup device', 240,
                     interval=0.2, max_interval=0.5)
        finally:
            s.stop_flag.set()
        rc = self.a.wait_exit(what='the disk-full refusal')
        self.end_stream(s)
        if not suite.log_lines(self.a, r'cln-replica.*(No space|ENOSPC|space)', offset):
            raise Failure('lightningd stopped (rc %s) without cln-replica\'s disk-full error in its log' % rc)
        self.check('device-full')
        os.unlink(ballast)
        return 'lightningd stopped (rc %s); ballast removed' % rc

    def compaction(self):
        gen_before = journal_tip(self.env, self.a.journal)[0]
        done_before = self.a.rpc.call('replica-status')['compaction']['compactions']
        s = self.in_flight()
        try:
            ans = self.a.rpc.call('replica-compact')
        except RpcError as e:
            # One already running (started by compact_journal_bytes) is as good.
            if 'already' not in str(e.error) and 'running' not in str(e.error):
                s.stop()
                raise Failure('replica-compact: %s' % e.error)
            ans = {'started': False}
        wait_for(lambda: self.a.rpc.call('replica-status')['compaction']['compactions'] > done_before,
                 'the compaction to switch generations under load', COMPACTION_TIMEOUT_S, max_interval=1)
        self.end_stream(s)
        self.join_stream()
        for x in self.nodes:
            x.wait_htlcs_resolved()
        self.a.stop()
        self.check('compaction')
        gen_after = journal_tip(self.env, self.a.journal)[0]
        if gen_after <= gen_before:
            raise Failure('no new generation after the compaction (%d, before %d)' % (gen_after, gen_before))
        return 'generation %d -> %d%s' % (gen_before, gen_after, '' if ans.get('started') else ' (one was running)')

    def clean_restart(self):
        for x in self.nodes:
            x.wait_htlcs_resolved()
        secs = self.a.stop()
        self.check('clean-restart')
        return 'stop took %.2f s' % secs

    def s3_kill(self):
        offset = self.a.log_size()
        s = self.in_flight()
        failed_before = s.failed
        self.s3.kill9()
        t_kill = time.monotonic()
        try:
            wait_for(lambda: self.a.rpc.call('replica-status')['remote']['degraded'],
                     'the plugin to degrade with its destination gone', DOWN_TIMEOUT_S, max_interval=0.5)
            degraded_s = time.monotonic() - t_kill
            ok_degraded = s.ok
            wait_for(lambda: s.ok >= ok_degraded + PAYMENTS_WHILE_DOWN or s.failed > failed_before
                     or not self.a.running(),
                     '%d payments with the destination gone' % PAYMENTS_WHILE_DOWN, DOWN_TIMEOUT_S, max_interval=0.5)
        finally:
            s.stop_flag.set()
        if not self.a.running():
            raise Failure('lightningd stopped while its destination was gone (remote_sync_on_timeout = "degrade")')
        if s.failed > failed_before:
            raise Failure('a payment failed while the destination was gone: degrade must keep the node paying')
        if not suite.log_lines(self.a, r'SYNCHRONOUS REPLICATION DEGRADED', offset):
            raise Failure('the plugin degraded without its SYNCHRONOUS REPLICATION DEGRADED error in the log')
        down = self.destination()
        if not down['lagging'] or not down['last_error']:
            raise Failure('the destination is gone but its status says lagging %s, last_error %r'
                          % (down['lagging'], down['last_error']))
        paid_down = s.ok - ok_degraded
        self.s3.start()
        self.end_stream(s)
        self.join_stream()
        for x in self.nodes:
            x.wait_htlcs_resolved()
        catchup = self.wait_caught_up('after s3s-fs restarted')
        # The synchronous tier resumes at the first channel-state change that
        # finds the destination already holding every record before it
        # (src/remote/sync.rs). A payment's first channel-state change
        # usually follows a record written moments before (its invoice or
        # payment row), still in the worker's batching delay: so it may take
        # some payments, each a chance.
        resumed_after = None
        for k in range(1, RESUME_PAYMENTS_MAX + 1):
            pay_cycle(self.payer, *self.nodes, self.index)
            self.index += 1
            self.paid += 1
            if not self.a.rpc.call('replica-status')['remote']['degraded']:
                resumed_after = k
                break
        if resumed_after is None:
            raise Failure('the destination caught up but the synchronous tier is still degraded after %d payments'
                          % RESUME_PAYMENTS_MAX)
        if not suite.log_lines(self.a, r'synchronous tier is active again', offset):
            raise Failure('the synchronous tier came back without saying so in the log')
        for x in self.nodes:
            x.wait_htlcs_resolved()
        self.a.stop()
        self.check('s3-kill')
        self.resumed_after.append(resumed_after)
        return ('degraded %.1f s after the kill, %d payments while down (queue %d records); caught up %.1f s '
                'after the restart, synchronous again after %d payment(s)' % (
                    degraded_s, paid_down, down['queue_records'], catchup, resumed_after))

    # -- the run -------------------------------------------------------------
    def schedule(self):
        kinds = [k for k in FAULTS if k != 'device_full' or self.env.loop is not None]
        first = list(kinds)
        self.rng.shuffle(first)
        count = max(len(kinds), self.args.payments // 150)
        plan = first + [self.rng.choice(kinds) for _ in range(count - len(first))]
        mean = max(PAYMENTS_PER_FAULT_MIN, self.args.payments // (count + 1))
        return [(k, self.rng.randint(max(1, mean // 2), mean + mean // 2)) for k in plan]

    def run(self):
        t0 = time.monotonic()
        self.s3.start()
        self.a.start()
        setup_star(self.env, self.a, self.b, self.c, extra_channel=False)
        plan = self.schedule()
        log('soak: seed %d, %d payments, %d faults planned: %s' % (
            self.args.seed, self.args.payments, len(plan), ' '.join(k for k, _ in plan)))
        for kind, gap in plan:
            n = min(gap, self.args.payments - self.paid)
            if n > 0:
                self.steady(n)
            self.sample()
            what = getattr(self, kind)()
            self.faults[kind] += 1
            self.resume(join=True)
            self.check_destination(kind.replace('_', '-'))
            self.resume()
            log('FAULT %s after %d payments: %s; journal checks %d, destination checks %d passed' % (
                kind, self.paid, what, self.checks, self.dest_checks))
            self.sample()
        if self.paid < self.args.payments:
            self.steady(self.args.payments - self.paid)
        self.final()
        return time.monotonic() - t0

    def final(self):
        a = self.a
        for x in self.nodes:
            x.wait_htlcs_resolved()
        self.check_destination('final')
        self.check('final')
        restored = os.path.join(self.env.workdir, 'soak-restored.sqlite3')
        restore(self.env, a.journal, restored)
        diffs = compare_dbs(a.db, restored)
        if diffs:
            raise Failure('the final restore differs from the node\'s database: %s' % diffs[:10])
        os.rename(a.db, a.db + '.original')
        os.rename(restored, a.db)
        self.resume()
        self.payer.pay(self.b, a)
        self.payer.pay(a, self.b)
        self.payer.pay(self.c, self.b)
        self.payer.pay(self.b, self.c)
        log('a node booted on the restored database pays and forwards')
        for x in self.nodes:
            x.wait_htlcs_resolved()
        self.check_destination('on-the-restore')
        self.check('on-the-restore')
        for x in (self.b, self.c):
            x.stop()

    def judge(self):
        rss = [s[1] for s in self.samples]
        if len(rss) < 3:
            raise Failure('too few RSS samples (%d)' % len(rss))
        third = max(1, len(rss) // 3)
        first, last = max(rss[:third]), max(rss[-third:])
        if last > first * 1.5 + 16 * 1024:
            raise Failure('the plugin\'s RSS grew: largest %d KiB in the first third of the run, %d KiB in the last'
                          % (first, last))
        db_max = max(s[3] for s in self.samples)
        # Kept generations, each a snapshot (at most the database's size)
        # plus the records until compaction, plus the one being built and the
        # prepared next segment.
        bound = (KEEP_GENERATIONS + 1) * (db_max + COMPACT_JOURNAL_BYTES + 2 * SEGMENT_BYTES)
        journal_max = max(s[2] for s in self.samples)
        if journal_max > bound:
            raise Failure('the journal reached %d bytes, above its compaction bound %d' % (journal_max, bound))
        return {'rss_kib_first_third_max': first, 'rss_kib_last_third_max': last, 'rss_kib_peak': max(rss),
                'journal_bytes_max': journal_max, 'journal_bytes_bound': bound, 'samples': len(rss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--plugin', required=True)
    ap.add_argument('--payments', type=int, default=int(os.environ.get('SOAK_PAYMENTS', '5000')))
    ap.add_argument('--seed', type=int, default=int(os.environ['SOAK_SEED']) if os.environ.get('SOAK_SEED')
                    else random.SystemRandom().randrange(1 << 32))
    ap.add_argument('--shared-cln')
    ap.add_argument('--keep', action='store_true', default=os.environ.get('SOAK_KEEP') == '1')
    args = ap.parse_args()
    print('soak: seed %d (rerun with --seed %d or SOAK_SEED=%d)' % (args.seed, args.seed, args.seed), flush=True)
    env = Env(args.plugin, shared_cln=args.shared_cln, keep=args.keep)
    ok = False
    try:
        soak = Soak(env, args)
        secs = soak.run()
        figures = soak.judge()
        ok = True
        print()
        print('soak PASSED: seed %d, %d payments (%d interrupted by faults, expected), %.0f s' % (
            args.seed, soak.paid, soak.interrupted, secs))
        print('  faults: %s' % ', '.join('%s %d' % kv for kv in soak.faults.items()))
        print('  journal checks passed: %d (restore == node database after every fault, at the end, and on the '
              'restored node)' % soak.checks)
        print('  s3_kill: synchronous tier active again after %s payment(s) once caught up' % (
            ', '.join(map(str, soak.resumed_after)) or '-'))
        print('  destination checks passed: %d (restore from s3s-fs == node database, after every fault once caught '
              'up, at the end, and on the restored node)' % soak.dest_checks)
        print('  plugin RSS: peak %d KiB; largest in the first third %d KiB, in the last %d KiB (%d samples)' % (
            figures['rss_kib_peak'], figures['rss_kib_first_third_max'], figures['rss_kib_last_third_max'],
            figures['samples']))
        print('  journal: at most %d bytes (bound %d)' % (figures['journal_bytes_max'],
                                                          figures['journal_bytes_bound']))
        print(json.dumps({'seed': args.seed, 'payments': soak.paid, 'interrupted': soak.interrupted,
                          'seconds': round(secs), 'faults': soak.faults, 'checks': soak.checks,
                          'destination_checks': soak.dest_checks, 'sync_resumed_after_payments': soak.resumed_after,
                          **figures}))
    except Failure as e:
        print('soak FAILED (seed %d): %s' % (args.seed, e), file=sys.stderr)
        env.print_log_tails()
        env.keep = True
    except Exception:  # noqa: B902 - an RPC error the steps did not expect: the same evidence kept
        print('soak FAILED (seed %d): %s' % (args.seed, traceback.format_exc()), file=sys.stderr)
        env.print_log_tails()
        env.keep = True
    finally:
        env.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
