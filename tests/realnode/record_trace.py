#!/usr/bin/env python3
"""Record the db_write trace that `cln-replica bench --trace` replays as "real".

Runs the three-node workload of the shared CLN kit (`workload.py`: funding,
channels a->b, b->c, c->a, a few hundred payments, offers, datastore, a
restart of a, a withdraw, a cooperative close of c-a, 104 blocks to bury it)
with the kit's `recorder.py` attached to node a from its very first start, so
the trace begins with lightningd creating the schema (data_version 1) and can
be replayed onto an empty database. workload.py itself starts a once without
the recorder; this wrapper only changes that.

    python3 tests/realnode/record_trace.py --workdir /tmp/rec [--scale 1] \
        [--shared-cln ../shared/cln] [--out tests/fixtures/cln-v26.06-realnode.jsonl.zst]

Needs pyln-client (scripts/setup.d/30-real-node) and the `zstd` command.
The trace is written zstd-compressed (level 19) to --out.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--workdir', required=True, help='a fresh directory for nodes, chain and logs')
    p.add_argument('--scale', type=float, default=1.0)
    p.add_argument('--seed', type=int, default=20260901)
    p.add_argument('--shared-cln', default=os.environ.get('CLN_SHARED_DIR', os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), '..', 'shared', 'cln')))
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument('--out', default=os.path.join(here, '..', 'fixtures', 'cln-v26.06-realnode.jsonl.zst'))
    a = p.parse_args()
    workdir = os.path.abspath(a.workdir)
    os.makedirs(workdir, exist_ok=True)
    cln = os.path.join(workdir, 'cln')
    if not os.path.exists(os.path.join(cln, 'bin', 'lightningd')):
        with tarfile.open(os.path.join(a.shared_cln, 'cln-v26.06-x86_64-linux.tar.xz')) as t:
            t.extractall(cln)
    runs = os.path.join(workdir, 'run')

    spec = importlib.util.spec_from_file_location('workload', os.path.join(a.shared_cln, 'workload.py'))
    wl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wl)
    trace = os.path.join(runs, 'trace-a.jsonl')
    start = wl.Node.start

    def start_recording_a(self, record_to=None):
        # Node a records every start, its first one included.
        if self.name == 'a':
            record_to = trace
        return start(self, record_to)

    wl.Node.start = start_recording_a
    sys.argv = ['workload.py', '--lightningd', os.path.join(cln, 'bin', 'lightningd'), '--workdir', runs,
                '--seed', str(a.seed), '--scale', str(a.scale)]
    try:
        wl.main()
    finally:
        wl.cleanup()
    out = os.path.abspath(a.out)
    subprocess.run(['zstd', '-q', '-f', '-19', trace, '-o', out], check=True)
    with open(trace) as f:
        calls = sum(1 for line in f if line.strip())
    print('recorded %d db_write calls of node a: %s (%d bytes), %s (%d bytes compressed)'
          % (calls, trace, os.path.getsize(trace), out, os.path.getsize(out)))


if __name__ == '__main__':
    main()
