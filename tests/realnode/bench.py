#!/usr/bin/env python3
"""What a backup plugin costs a real node: payments per second of a real
lightningd v26.06 (the shared kit's build, on fakechain.py) with no backup
plugin, with the floor stand-in (examples/floor_plugin.rs: one O_DIRECT write
of the change's bytes plus one fdatasync per db_write, nothing else) and with
cln-replica, in one run, arms interleaved in rounds.

Three nodes: a (the measured one, restarted for every arm with that arm's
plugin), b and c. Channels b==a (a opens) and c==a (c opens). Payments go one
at a time, in a fixed cycle: b pays a, a pays b, c pays b through a (so a
forwards). The journal (and the floor plugin's file) live on a loop-mounted
ext4 of their own, optionally throttled with cgroup v1 blkio
(`--throttle-mbps`, lightningd and its plugins in the group).

Printed per arm: payments/s (every round, and the total), the ratio to the arm
without a plugin, the plugin's CPU time a payment, db_write hooks per payment
(the database's data_version moved over the measured payments), for
cln-replica the journal bytes per payment (`replica-status`), and for
cln-replica and the floor the hook's service time inside the node, p50 and p99
(CLN_REPLICA_HOOK_TRACE and FLOOR_PLUGIN_TRACE: every hook of the measured
window, from message read to answer written). Beside them, once before the
rounds and once after, on the same device (and throttle): `cln-replica bench
--dir`, the plugin alone over its pipes with the raw fdatasync floor, so the
tail inside the node can be told from the device's and the plugin's own.

    python3 tests/realnode/bench.py --plugin target/ci/cln-replica \\
        --floor-plugin target/ci/examples/floor_plugin [--rounds 3] [--payments-per-round 60] \\
        [--throttle-mbps 20] [--arms none,floor,replica,replica-dsync] [--json]

Run as root (the loop device, the cgroup). docs/REAL-NODE.md, "Cost", records
the figures.
"""
import argparse
import json
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from realnode import (Env, Failure, Payer, Throttle, pay_cycle, connect, log, run, setup_star,  # noqa: E402
                      wait_channel_normal)
from pyln.client import RpcError  # noqa: E402

ARMS = ('none', 'floor', 'replica', 'replica-dsync', 'replica-nostatus', 'replica-alt')
ARM_LABEL = {
    'none': 'no backup plugin',
    'floor': 'floor stand-in (O_DIRECT write + fdatasync)',
    'replica': 'cln-replica',
    'replica-dsync': 'cln-replica, CLN_REPLICA_SYNC=dsync',
    'replica-nostatus': 'cln-replica without status_file',
    'replica-alt': 'cln-replica, the --alt-plugin build',
}
# Segments of the default size would be created on the loop device for
# every generation (each restart after a no-plugin arm heals a gap with a
# new one); 16 MiB keeps two kept generations well inside the device.
SEGMENT_BYTES = 16 << 20
LOOP_MB = 512


def percentile(v, q):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


def db_version(db):
    """vars.data_version of a running node's database (a read-only
    connection; lightningd's 60 s busy timeout covers the moment it holds)."""
    c = sqlite3.connect('file:%s?mode=ro' % db, uri=True, timeout=30)
    try:
        return c.execute("SELECT intval FROM vars WHERE name = 'data_version'").fetchone()[0]
    finally:
        c.close()


def plugin_cpu_s(node, exe):
    """User + system CPU seconds so far of the plugin `exe` under node's
    lightningd (every thread of it; its guard process is not counted), in
    clock ticks (10 ms here): a figure over hundreds of payments."""
    pid = node.plugin_pid(exe)
    if pid is None:
        raise Failure('no plugin %s under lightningd %s' % (exe, node.name))
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    # utime and stime: fields 14 and 15 of stat(5), after pid and comm.
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def forget_routing_failures(nodes):
    for n in nodes:
        try:
            n.rpc.call('askrene-age', {'layer': 'xpay', 'cutoff': int(time.time()) + 1})
        except RpcError:
            pass


def wait_mesh(a, b, c):
    connect(a, b)
    connect(c, a)
    wait_channel_normal(a, b)
    wait_channel_normal(a, c)
    forget_routing_failures((a, b, c))


def write_config(a, status_file=True):
    lines = ['journal = "%s"' % a.journal, 'segment_bytes = %d' % SEGMENT_BYTES]
    if status_file:
        # Without it the status publisher thread does not run; the hook
        # trace is then written once, at the plugin's exit.
        lines.append('status_file = "%s"' % a.status_file)
    with open(os.path.join(a.netdir, 'cln-replica.toml'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def start_arm(env, a, arm, lightningd, floor_plugin, alt_plugin):
    os.environ['CLN_REPLICA_SYNC'] = 'dsync' if arm == 'replica-dsync' else 'fdatasync'
    write_config(a, status_file=arm != 'replica-nostatus')
    extra = ['--plugin=' + floor_plugin] if arm == 'floor' else []
    if arm == 'replica-alt':
        # Another build of the plugin on the same journal (an A/B of a change).
        extra = ['--important-plugin=' + alt_plugin]
    a.start(with_plugin=arm.startswith('replica') and arm != 'replica-alt', extra=extra, lightningd=lightningd)


def measure_arm(env, a, b, c, payer, arm, n, lightningd, floor_plugin, alt_plugin, trace_path):
    start_arm(env, a, arm, lightningd, floor_plugin, alt_plugin)
    wait_mesh(a, b, c)
    # Warm-up, untimed: the first payment after a restart pays for route
    # discovery and the plugin's first hooks after init.
    for i in range(3):
        pay_cycle(payer, a, b, c, i)
    for x in (a, b, c):
        x.wait_htlcs_resolved()
    st0 = a.replica_status() if arm.startswith('replica') else None
    exe = {'none': None, 'floor': floor_plugin, 'replica-alt': alt_plugin}.get(arm, a.env.plugin)
    cpu0 = plugin_cpu_s(a, exe) if exe else None
    dv0 = db_version(a.db)
    t0 = time.time()
    for i in range(n):
        pay_cycle(payer, a, b, c, i)
    secs = time.time() - t0
    for x in (a, b, c):
        x.wait_htlcs_resolved()
    t1 = time.time()
    dv1 = db_version(a.db)
    cpu1 = plugin_cpu_s(a, exe) if exe else None
    st1 = a.replica_status() if arm.startswith('replica') else None
    a.stop()
    out = {'arm': arm, 'payments': n, 'seconds': secs, 'payments_per_s': n / secs,
           'hooks': (dv1 - dv0) & 0xffffffff, 'plugin_cpu_s': None if exe is None else cpu1 - cpu0}
    if st0 is not None:
        out['journal_bytes'] = st1['journal_bytes'] - st0['journal_bytes'] \
            if st1['generation'] == st0['generation'] else None
    if st0 is not None or arm == 'floor':
        samples, io = [], []
        if os.path.exists(trace_path):
            with open(trace_path) as f:
                for line in f:
                    if line.startswith('#'):
                        raise Failure('the hook trace dropped samples: %s' % line.strip())
                    # The floor's lines carry a third field: its write and
                    # fdatasync alone.
                    f3 = line.split()
                    if t0 * 1000 <= int(f3[0]) <= t1 * 1000:
                        samples.append(int(f3[1]))
                        if len(f3) > 2:
                            io.append(int(f3[2]))
            os.unlink(trace_path)
        if not samples:
            raise Failure('the %s arm traced no hook in its measured window (%s)' % (arm, trace_path))
        out['hook_us'] = samples
        out['io_us'] = io
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--plugin', required=True, help='the cln-replica binary')
    ap.add_argument('--floor-plugin', required=True, help='examples/floor_plugin, built')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--payments-per-round', type=int, default=60)
    ap.add_argument('--arms', default='none,floor,replica', help='comma-separated, of: ' + ', '.join(ARMS))
    ap.add_argument('--alt-plugin', help='another cln-replica build, for the replica-alt arm')
    ap.add_argument('--throttle-mbps', type=float, help='cgroup v1 blkio limit on the journal device')
    ap.add_argument('--shared-cln')
    ap.add_argument('--workdir', help='the nodes\' work directory (default: a new one under $TMPDIR); on a tmpfs, '
                    'lightningd\'s own fsyncs leave the disk under the journal\'s loop image alone')
    ap.add_argument('--loop-image-dir', help='where the journal device\'s image lives (default: the work directory)')
    ap.add_argument('--keep', action='store_true')
    ap.add_argument('--json', action='store_true', help='also print the figures as one JSON line')
    args = ap.parse_args()
    arms = args.arms.split(',')
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit('unknown arm %r (arms: %s)' % (arm, ', '.join(ARMS)))
    if os.geteuid() != 0:
        raise SystemExit('bench.py needs root: the journal gets a loop device of its own')
    floor_plugin = os.path.realpath(args.floor_plugin)
    alt_plugin = os.path.realpath(args.alt_plugin) if args.alt_plugin else None
    if 'replica-alt' in arms and not alt_plugin:
        raise SystemExit('the replica-alt arm needs --alt-plugin')
    env = Env(args.plugin, shared_cln=args.shared_cln, workdir=args.workdir, keep=args.keep, loop_mb=LOOP_MB,
              loop_image_dir=args.loop_image_dir)
    throttle = None
    try:
        if env.loop is None:
            raise Failure('no loop device: the measurement needs the journal on a device of its own')
        trace_path = os.path.join(env.workdir, 'hook-trace')
        os.environ['CLN_REPLICA_HOOK_TRACE'] = trace_path
        os.environ['FLOOR_PLUGIN_TRACE'] = trace_path
        os.environ['FLOOR_PLUGIN_FILE'] = os.path.join(env.loop.mnt, 'floor-plugin.dat')
        os.environ['FLOOR_PLUGIN_MIB'] = '64'
        lightningd = env.lightningd
        if args.throttle_mbps:
            throttle = Throttle(env, env.loop.dev, int(args.throttle_mbps * (1 << 20)), 'bench')
            lightningd = throttle.wrapper
            log('journal device: %s' % throttle.desc)
        a = env.node('a', replica=False)
        a.replica = True
        write_config(a)
        b = env.node('b', replica=False)
        c = env.node('c', replica=False)
        a.start(lightningd=lightningd)
        setup_star(env, a, b, c, extra_channel=False)
        a.stop()
        with open('/proc/loadavg') as f:
            load_before = f.read().split()[:3]
        payer = Payer(seed=18)
        alone = [plugin_alone(env, throttle)]
        results = {arm: [] for arm in arms}
        for r in range(args.rounds):
            order = arms[r % len(arms):] + arms[:r % len(arms)]
            for arm in order:
                res = measure_arm(env, a, b, c, payer, arm, args.payments_per_round, lightningd, floor_plugin,
                                  alt_plugin, trace_path)
                results[arm].append(res)
                log('round %d %-14s %6.2f payments/s (%d payments in %.1f s), %.1f hooks/payment'
                    % (r + 1, arm, res['payments_per_s'], res['payments'], res['seconds'],
                       res['hooks'] / res['payments']))
        alone.append(plugin_alone(env, throttle))
        with open('/proc/loadavg') as f:
            load_after = f.read().split()[:3]
        report(args, arms, results, alone, load_before, load_after, throttle)
        for x in (b, c):
            x.stop()
    finally:
        env.cleanup()
        if throttle:
            throttle.cleanup()


# Hooks of `cln-replica bench --dir` per run beside the node: its five rounds
# interleave the raw floor with the plugin's hooks.
ALONE_HOOKS = 2000


def plugin_alone(env, throttle):
    """`cln-replica bench --dir` on the journal's device, in the blkio group
    when throttled (as lightningd is): the plugin alone over its pipes, and
    the raw fdatasync floor, in the same rounds. Its journal is removed after."""
    d = os.path.join(env.loop.mnt, 'alone')
    os.makedirs(d)
    cmd = [env.plugin, 'bench', '--dir', d, '--hooks', str(ALONE_HOOKS), '--json']
    if throttle:
        cmd = throttle.command(cmd)
    out = run(cmd).stdout
    run(['rm', '-rf', d])
    return json.loads(out.strip().splitlines()[-1])


def report(args, arms, results, alone, load_before, load_after, throttle):
    summary = {}
    for arm in arms:
        rs = results[arm]
        n = sum(x['payments'] for x in rs)
        secs = sum(x['seconds'] for x in rs)
        hooks = sum(x['hooks'] for x in rs)
        s = {'payments': n, 'seconds': secs, 'payments_per_s': n / secs,
             'rounds_payments_per_s': [round(x['payments_per_s'], 2) for x in rs],
             'hooks_per_payment': hooks / n}
        if rs[0]['plugin_cpu_s'] is not None:
            s['plugin_cpu_ms_per_payment'] = 1000 * sum(x['plugin_cpu_s'] for x in rs) / n
        if arm.startswith('replica'):
            jb = [x['journal_bytes'] for x in rs if x.get('journal_bytes') is not None]
            jn = sum(x['payments'] for x in rs if x.get('journal_bytes') is not None)
            s['journal_bytes_per_payment'] = sum(jb) / jn if jn else None
        if 'hook_us' in rs[0]:
            us = [u for x in rs for u in x['hook_us']]
            s['hook_samples'] = len(us)
            s['hook_us_p50'] = percentile(us, 0.5)
            s['hook_us_p99'] = percentile(us, 0.99)
            s['hook_us_max'] = max(us) if us else None
            io = [u for x in rs for u in x['io_us']]
            if io:
                # Of the hooks at or above the p99, the share of their time
                # in the write and the flush: the device's part of the tail.
                tail = [(h, i) for x in rs for h, i in zip(x['hook_us'], x['io_us'])
                        if h >= s['hook_us_p99']]
                s['io_us_p50'] = percentile(io, 0.5)
                s['io_us_p99'] = percentile(io, 0.99)
                s['tail_io_share'] = sum(i for _, i in tail) / max(1, sum(h for h, _ in tail))
        summary[arm] = s
    base = summary.get('none', summary[arms[0]])['payments_per_s']
    print()
    print('bench.py: %d rounds x %d payments per arm (b pays a, a pays b, c pays b through a), journal on %s'
          % (args.rounds, args.payments_per_round, throttle.desc if throttle else 'a loop-mounted ext4'))
    print('load average before %s, after %s' % (' '.join(load_before), ' '.join(load_after)))
    print('%-44s %8s %7s %-22s %9s %9s %8s %8s' % ('arm', 'pay/s', 'ratio', 'rounds', 'hooks/pay', 'B/pay',
                                                   'hook p50', 'hook p99'))
    for arm in arms:
        s = summary[arm]
        fmt = lambda v, f: '-' if v is None else f % v  # noqa: E731
        print('%-44s %8.2f %7.2f %-22s %9.1f %9s %8s %8s' % (
            ARM_LABEL[arm], s['payments_per_s'], s['payments_per_s'] / base,
            ' '.join('%.1f' % x for x in s['rounds_payments_per_s']), s['hooks_per_payment'],
            fmt(s.get('journal_bytes_per_payment'), '%.0f'), fmt(s.get('hook_us_p50'), '%dus'),
            fmt(s.get('hook_us_p99'), '%dus')))
    for arm in arms:
        s = summary[arm]
        if 'plugin_cpu_ms_per_payment' in s:
            print('%s: the plugin\'s CPU time (user + system, all its threads) %.2f ms a payment'
                  % (ARM_LABEL[arm], s['plugin_cpu_ms_per_payment']))
        if 'io_us_p50' in s:
            print('%s: write + fdatasync alone p50 %dus p99 %dus; the hooks at or above the p99 spent %.0f%% of '
                  'their time in them' % (ARM_LABEL[arm], s['io_us_p50'], s['io_us_p99'], 100 * s['tail_io_share']))
    print('the plugin alone on the same device (`cln-replica bench --dir`, %d hooks), before and after the rounds:'
          % ALONE_HOOKS)
    for when, x in zip(('before', 'after'), alone):
        print('  %-6s floor (O_DIRECT write + fdatasync) p50 %6dus p99 %6dus | hook p50 %6dus p99 %6dus'
              % (when, x['floor']['p50_us'], x['floor']['p99_us'], x['hook']['p50_us'], x['hook']['p99_us']))
    if args.json:
        print(json.dumps({'rounds': args.rounds, 'payments_per_round': args.payments_per_round,
                          'throttle_mbps': args.throttle_mbps, 'load_before': load_before,
                          'load_after': load_after, 'arms': summary, 'plugin_alone': alone}))


if __name__ == '__main__':
    try:
        main()
    except Failure as e:
        print('bench.py FAILED: %s' % e, file=sys.stderr)
        sys.exit(1)
