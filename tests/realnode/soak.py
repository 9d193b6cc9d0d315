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
- clean_restart: `stop`, start.

After each fault the node is stopped (or dead), and `cln-replica restore` of
the journal must equal its database (suite.check_journal: schema and every
table's rows). The plugin's RSS and the journal's size are sampled after every
payment batch; at the end the RSS must be flat (the largest sample of the last
third at most 1.5x + 16 MiB the largest of the first third) and the journal
within its compaction bounds; the journal restores into a new file that
replaces a's database, a starts on it, and b, c pay through it.

    python3 tests/realnode/soak.py --plugin target/ci/cln-replica --payments 5000 [--seed S] [--keep]

CI (scripts/test.d/80-soak) runs SOAK_PAYMENTS=120. Root is needed for the
loop device (without it the disk-full fault is left out, said loudly).
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import suite  # noqa: E402
from realnode import (Env, Failure, Payer, pay_cycle, compare_dbs, connect, journal_tip, log, restore, run,  # noqa: E402
                      setup_star, wait_channel_normal, wait_for)
from pyln.client import RpcError  # noqa: E402

SEGMENT_BYTES = 512 << 10
# Small enough that the journal compacts on its own every few hundred
# payments besides the forced compactions; retention keeps 2 generations.
COMPACT_JOURNAL_BYTES = 8 << 20
KEEP_GENERATIONS = 2
FAULTS = ('kill9_lightningd', 'kill9_plugin', 'device_full', 'compaction', 'clean_restart')
# Payments between two faults: a random count around N / (faults + 1).
PAYMENTS_PER_FAULT_MIN = 15
COMPACTION_TIMEOUT_S = 240
FLOWING_TIMEOUT_S = 120


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
        self.a = env.node('a', replica=False, segment_bytes=SEGMENT_BYTES)
        self.a.replica = True
        self.a.write_replica_config(SEGMENT_BYTES, extra=['compact_journal_bytes = %d' % COMPACT_JOURNAL_BYTES,
                                                          'keep_generations = %d' % KEEP_GENERATIONS])
        self.b = env.node('b', replica=False)
        self.c = env.node('c', replica=False)
        self.paid = 0          # payments that succeeded, steady and in flight
        self.interrupted = 0   # payments a fault interrupted
        self.index = 0         # position in the payment cycle
        self.faults = {k: 0 for k in FAULTS}
        self.checks = 0
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
            log('FAULT %s after %d payments: %s; journal check %d passed' % (kind, self.paid, what, self.checks))
            self.resume(join=True)
            self.sample()
        if self.paid < self.args.payments:
            self.steady(self.args.payments - self.paid)
        self.final()
        return time.monotonic() - t0

    def final(self):
        a = self.a
        for x in self.nodes:
            x.wait_htlcs_resolved()
        a.stop()
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
        a.stop()
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
        print('  plugin RSS: peak %d KiB; largest in the first third %d KiB, in the last %d KiB (%d samples)' % (
            figures['rss_kib_peak'], figures['rss_kib_first_third_max'], figures['rss_kib_last_third_max'],
            figures['samples']))
        print('  journal: at most %d bytes (bound %d)' % (figures['journal_bytes_max'],
                                                          figures['journal_bytes_bound']))
        print(json.dumps({'seed': args.seed, 'payments': soak.paid, 'interrupted': soak.interrupted,
                          'seconds': round(secs), 'faults': soak.faults, 'checks': soak.checks, **figures}))
    except Failure as e:
        print('soak FAILED (seed %d): %s' % (args.seed, e), file=sys.stderr)
        env.print_log_tails()
        env.keep = True
    finally:
        env.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
