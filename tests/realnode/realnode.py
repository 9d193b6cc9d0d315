"""Harness for running cln-replica under a real lightningd (Core Lightning v26.06).

Used by suite.py (run in CI by scripts/test.d/30-real-node); docs/REAL-NODE.md
describes it.

What it gives:
- Env: a temporary work directory with the CLN build extracted into it, the
  shared fake regtest chain (fakechain.py, no bitcoind), the journal's own
  loop-mounted ext4 device when run as root (a temporary directory otherwise,
  said loudly), and cleanup on every exit path: every process started is
  killed by its pid, the device unmounted and detached.
- Node: one lightningd, optionally with cln-replica as its important plugin,
  with bounded waits for everything.
- db_snapshot / compare_dbs / restore: the "journal restores to exactly the
  node's database" check, done in Python with sqlite3 (schema plus the sorted
  rows of every table; rowid order is ignored: lightningd VACUUMs after
  migrations without telling the hook).

Nothing here sleeps to synchronise: every wait polls a condition with a
deadline and fails with what it was waiting for.
"""
import atexit
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

from pyln.client import LightningRpc, RpcError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARBALL_NAME = 'cln-v26.06-x86_64-linux.tar.xz'
# Where the CLN build and fakechain.py are looked for when CLN_SHARED_DIR is
# not set: `shared/cln` beside the checkout, or beside the checkout's parent
# (a worktree kept one level deeper).
SHARED_CLN_CANDIDATES = [os.path.join(os.path.dirname(REPO), 'shared', 'cln'),
                         os.path.join(os.path.dirname(os.path.dirname(REPO)), 'shared', 'cln')]


def default_shared_cln():
    for d in SHARED_CLN_CANDIDATES:
        if os.path.exists(os.path.join(d, TARBALL_NAME)):
            return d
    return SHARED_CLN_CANDIDATES[0]



# Waits: generous enough for a loaded 2-core CI machine, small enough that a
# hang fails the suite well inside CI's time.
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 60
SYNC_TIMEOUT_S = 120
CHANNEL_TIMEOUT_S = 180
GOSSIP_TIMEOUT_S = 240
HTLC_TIMEOUT_S = 180
EXIT_TIMEOUT_S = 40

T0 = time.time()


def log(msg):
    print('[%7.1fs] %s' % (time.time() - T0, msg), flush=True)


class Failure(Exception):
    pass


def wait_for(fn, what, timeout, interval=0.05, max_interval=0.5):
    """Polls fn() until it returns something truthy; RPC and OS errors count
    as "not yet". Raises Failure naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    last_err = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except (RpcError, OSError, ValueError, KeyError) as e:
            last_err = e
        if time.time() > deadline:
            raise Failure('timed out after %ds waiting for %s%s' % (
                timeout, what, '' if last_err is None else ' (last error: %s)' % str(last_err)[:300]))
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and r.returncode != 0:
        raise Failure('%s failed (rc %d): %s%s' % (' '.join(map(str, cmd)), r.returncode, r.stdout[-2000:],
                                                  r.stderr[-2000:]))
    return r


# ---------------------------------------------------------------------------
# Processes: by pid only.

def children_of(pid):
    """Direct and indirect children of pid, from /proc."""
    parent = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                stat = f.read()
            # comm may contain spaces and parentheses: ppid follows the last ')'.
            ppid = int(stat[stat.rindex(')') + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent[int(d)] = ppid
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def ppid_of(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
        return int(stat[stat.rindex(')') + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        return state not in ('Z', 'X')
    except OSError:
        return False


def kill_pids(pids, sig=signal.SIGKILL):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def exe_of(pid):
    try:
        return os.path.realpath('/proc/%d/exe' % pid)
    except OSError:
        return None


# ---------------------------------------------------------------------------
# SQLite: consistent copies and table-by-table comparison.

def db_snapshot(db, dest):
    """A consistent copy of a database whose writer is stopped or dead.

    After a kill -9 a hot rollback journal may sit next to the file; the copy
    takes it along and lets SQLite roll it back in the copy (as lightningd
    would at its next start), never touching the node's own files."""
    tmpdir = tempfile.mkdtemp(dir=os.path.dirname(dest))
    try:
        base = os.path.join(tmpdir, 'db.sqlite3')
        shutil.copyfile(db, base)
        for ext in ('-journal', '-wal'):
            if os.path.exists(db + ext):
                shutil.copyfile(db + ext, base + ext)
        src = sqlite3.connect(base)
        if os.path.exists(dest):
            os.unlink(dest)
        dst = sqlite3.connect(dest)
        src.backup(dst)
        dst.close()
        src.close()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return dest


def data_version(db):
    c = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
    try:
        return c.execute("SELECT intval FROM vars WHERE name = 'data_version'").fetchone()[0]
    finally:
        c.close()


def _typed(v):
    # A total order across SQLite's types (None < int/float < text < blob).
    if v is None:
        return (0, 0)
    if isinstance(v, (int, float)):
        return (1, v)
    if isinstance(v, str):
        return (2, v)
    return (3, bytes(v))


def compare_dbs(a, b, limit=5):
    """Differences between two SQLite files: schema, then the sorted rows of
    every table. Empty list: equal."""
    ca = sqlite3.connect('file:%s?mode=ro' % a, uri=True)
    cb = sqlite3.connect('file:%s?mode=ro' % b, uri=True)
    try:
        q = ("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex%' "
             "ORDER BY type, name")
        sa, sb = ca.execute(q).fetchall(), cb.execute(q).fetchall()
        out = []
        for x in sa:
            if x not in sb:
                out.append('schema: %s %s only in %s (or different)' % (x[0], x[1], a))
        for x in sb:
            if x not in sa:
                out.append('schema: %s %s only in %s (or different)' % (x[0], x[1], b))
        tables = [n for (t, n, _) in sa if t == 'table' and any(t2 == 'table' and n2 == n for (t2, n2, _) in sb)]
        for t in tables:
            qt = 'SELECT * FROM "%s"' % t.replace('"', '""')
            ra = sorted(ca.execute(qt).fetchall(), key=lambda r: [_typed(v) for v in r])
            rb = sorted(cb.execute(qt).fetchall(), key=lambda r: [_typed(v) for v in r])
            if ra == rb:
                continue
            out.append('table %s: %d rows against %d' % (t, len(ra), len(rb)))
            sb_set, sa_set = set(rb), set(ra)
            for r in [r for r in ra if r not in sb_set][:limit]:
                out.append('  only in first:  %s' % (str(r)[:300],))
            for r in [r for r in rb if r not in sa_set][:limit]:
                out.append('  only in second: %s' % (str(r)[:300],))
        return out
    finally:
        ca.close()
        cb.close()


def table_counts(db):
    c = sqlite3.connect('file:%s?mode=ro' % db, uri=True)
    try:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: c.execute('SELECT count(*) FROM "%s"' % n).fetchone()[0] for n in names}
    finally:
        c.close()


# ---------------------------------------------------------------------------
# The environment.

class LoopDevice:
    """A small ext4 filesystem on a loop device: the journal's own device, with
    its own flush path, and a real ENOSPC when filled."""

    def __init__(self, workdir, size_mb, image_dir=None):
        # The image may live on another filesystem than the nodes (a
        # benchmark separating the journal's flushes from lightningd's).
        self.img = os.path.join(image_dir or workdir, 'backup-device-%d.img' % os.getpid())
        self.img_elsewhere = image_dir is not None
        self.mnt = os.path.join(workdir, 'backup-mnt')
        self.dev = None
        self.mounted = False
        os.makedirs(self.mnt)
        with open(self.img, 'wb') as f:
            f.truncate(size_mb << 20)
        self.dev = run(['losetup', '-f', '--show', self.img]).stdout.strip()
        run(['mkfs.ext4', '-q', '-m', '0', self.dev])
        run(['mount', self.dev, self.mnt])
        self.mounted = True

    def free_bytes(self):
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def cleanup(self):
        if self.mounted:
            deadline = time.time() + 20
            while True:
                r = run(['umount', self.mnt], check=False)
                if r.returncode == 0:
                    self.mounted = False
                    break
                if time.time() > deadline:
                    log('cleanup: cannot unmount %s: %s' % (self.mnt, r.stderr.strip()))
                    # Lazy unmount: the loop device can still be detached once
                    # the last user goes.
                    run(['umount', '-l', self.mnt], check=False)
                    self.mounted = False
                    break
                time.sleep(0.2)
        if self.dev:
            r = run(['losetup', '-d', self.dev], check=False)
            if r.returncode != 0:
                log('cleanup: losetup -d %s: %s' % (self.dev, r.stderr.strip()))
            self.dev = None
        if self.img_elsewhere and os.path.exists(self.img):
            os.unlink(self.img)


class Env:
    """Work directory, CLN build, fake chain, backup device, and cleanup."""

    def __init__(self, plugin, shared_cln=None, workdir=None, keep=False, loop_mb=256, want_loop=True,
                 loop_image_dir=None):
        # realpath: the plugin is recognised among lightningd's children by
        # /proc/PID/exe, which is always resolved.
        self.plugin = os.path.realpath(plugin)
        if not os.access(self.plugin, os.X_OK):
            raise Failure('%s is not an executable: build it with `cargo build --profile ci`' % self.plugin)
        self.shared = os.path.abspath(shared_cln or os.environ.get('CLN_SHARED_DIR') or default_shared_cln())
        tarball = os.path.join(self.shared, TARBALL_NAME)
        self.fakechain = os.path.join(self.shared, 'fakechain.py')
        for p in (tarball, self.fakechain):
            if not os.path.exists(p):
                raise Failure('%s not found (set CLN_SHARED_DIR to the directory holding %s and fakechain.py)'
                              % (p, TARBALL_NAME))
        self.keep = keep
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            if os.listdir(workdir):
                raise Failure('work directory %s is not empty' % workdir)
            self.workdir = os.path.abspath(workdir)
        else:
            self.workdir = tempfile.mkdtemp(prefix='cln-replica-realnode-')
        self.nodes = []
        self.loop = None
        # Other processes a test starts (a destination's server): each a
        # callable that ends what it started, run after the nodes are gone.
        self.cleanups = []
        self.cleaned = False
        atexit.register(self.cleanup)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)

        log('work directory %s' % self.workdir)
        self.cln = os.path.join(self.workdir, 'cln')
        # Every extracted CLN build: cleanup kills only processes running
        # an executable from one of them (or the plugin, or Python).
        self.builds = []
        self.lightningd = self.extract_build(tarball, self.cln)
        # lightningd passes --developer to plugins in developer mode, and
        # fakechain.py takes any argument for its CLI: start it bare.
        self.fakechain_plugin = os.path.join(self.workdir, 'fakechain-plugin')
        with open(self.fakechain_plugin, 'w') as f:
            f.write('#!/bin/sh\nexec %s %s\n' % (sys.executable, self.fakechain))
        os.chmod(self.fakechain_plugin, 0o755)
        self.chain_dir = os.path.join(self.workdir, 'chain')
        os.makedirs(self.chain_dir)

        self.root = os.geteuid() == 0
        if want_loop and self.root:
            try:
                self.loop = LoopDevice(self.workdir, loop_mb, loop_image_dir)
                self.backup_dir = self.loop.mnt
                log('journal device: %s (%d MiB ext4 on %s, image %s)'
                    % (self.loop.dev, loop_mb, self.loop.mnt, self.loop.img))
            except Failure as e:
                log('NOTE: no loop device (%s); the journal lives in a temporary directory' % str(e)[:200])
                self.loop = None
        if self.loop is None:
            self.backup_dir = os.path.join(self.workdir, 'backup')
            os.makedirs(self.backup_dir)
            if not want_loop:
                log('journal in a temporary directory %s (loop device not requested)' % self.backup_dir)
            elif not self.root:
                log('NOTE: not root: the journal lives in a temporary directory (%s), not on its own '
                    'loop device; the disk-full test is skipped' % self.backup_dir)

    def extract_build(self, tarball, dest):
        """Extracts a CLN build (the shared kit's layout) into dest; returns
        its lightningd."""
        if not os.path.exists(tarball):
            raise Failure('%s not found (set CLN_SHARED_DIR to the directory holding it)' % tarball)
        os.makedirs(dest)
        run(['tar', '-C', dest, '-xJf', tarball])
        self.builds.append(os.path.realpath(dest))
        return os.path.join(dest, 'bin', 'lightningd')

    def _on_signal(self, signum, frame):
        log('signal %d: cleaning up' % signum)
        self.cleanup()
        os._exit(128 + signum)

    # -- chain ---------------------------------------------------------------
    def chain(self, *cmd):
        out = run([sys.executable, self.fakechain, '--dir', self.chain_dir] + [str(c) for c in cmd]).stdout
        return out.strip()

    def height(self):
        return int(self.chain('height'))

    def mine(self, n, addr=None):
        r = json.loads(self.chain('mine', n, *([addr] if addr else [])))
        return r['height']

    def send(self, addr, sats):
        return self.chain('send', addr, sats)

    # -- nodes ---------------------------------------------------------------
    def node(self, name, **kw):
        n = Node(self, name, **kw)
        self.nodes.append(n)
        return n

    def print_log_tails(self, lines=40):
        for n in self.nodes:
            n.print_tail(lines)

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        for n in self.nodes:
            n.kill_all()
        for fn in self.cleanups:
            fn()
        if self.loop:
            self.loop.cleanup()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log('kept %s' % self.workdir)


class Node:
    def __init__(self, env, name, replica=True, segment_bytes=None, lightning_dir=None, journal=None,
                 port=None, alias=None):
        self.env = env
        self.name = name
        self.dir = lightning_dir or os.path.join(env.workdir, name)
        self.netdir = os.path.join(self.dir, 'regtest')
        os.makedirs(self.netdir, exist_ok=True)
        self.port = port or free_port()
        self.alias = alias or name
        self.logfile = os.path.join(self.dir, 'log')
        self.proc = None
        self.rpc = None
        self.id = None
        self.pids = set()        # every pid this node's processes ever had
        self.starts = 0
        self.replica = replica
        self.journal = journal or os.path.join(env.backup_dir, 'journal-' + name)
        self.status_file = os.path.join(env.workdir, 'status-%s.json' % name)
        # The bootable mirror, beside the work directory rather than
        # on the backup device, so that the disk-full step tests the journal.
        self.mirror = os.path.join(env.workdir, 'mirror-%s.sqlite3' % name)
        if replica:
            # Configured before the node's very first start: the journal sees
            # the schema being created.
            self.write_replica_config(segment_bytes)

    @property
    def db(self):
        return os.path.join(self.netdir, 'lightningd.sqlite3')

    @property
    def socket(self):
        return os.path.join(self.netdir, 'lightning-rpc')

    def write_replica_config(self, segment_bytes=None, extra=()):
        lines = ['journal = "%s"' % self.journal, 'status_file = "%s"' % self.status_file,
                 'mirror = "%s"' % self.mirror]
        if segment_bytes:
            lines.append('segment_bytes = %d' % segment_bytes)
        lines.extend(extra)
        with open(os.path.join(self.netdir, 'cln-replica.toml'), 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.logfile, 'rb') as f:
                f.seek(offset)
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def print_tail(self, lines=40):
        for path in (self.logfile, os.path.join(self.dir, 'stdout.log')):
            try:
                with open(path, 'rb') as f:
                    f.seek(0, 2)
                    size = f.tell()
                    f.seek(max(0, size - 64 * 1024))
                    tail = [x for x in f.read().decode('utf-8', 'replace').splitlines() if x.strip()][-lines:]
            except OSError:
                continue
            print('----- tail of %s -----' % path)
            for line in tail:
                print('  ' + line)

    def start(self, with_plugin=None, wait=True, extra=(), lightningd=None):
        """Starts lightningd (the Env's build unless `lightningd` names
        another); with_plugin defaults to this node's `replica`."""
        if self.proc is not None:
            raise Failure('%s already running' % self.name)
        with_plugin = self.replica if with_plugin is None else with_plugin
        cmd = [lightningd or self.env.lightningd,
               '--developer',
               '--network=regtest',
               '--lightning-dir=' + self.dir,
               '--disable-plugin=bcli',
               '--plugin=' + self.env.fakechain_plugin,
               '--fakechain-dir=' + self.env.chain_dir,
               '--bind-addr=127.0.0.1:%d' % self.port,
               '--alias=' + self.alias,
               '--log-file=' + self.logfile,
               '--log-level=info',
               '--dev-bitcoind-poll=1',
               '--dev-fast-gossip',
               '--dev-fast-reconnect',
               '--disable-dns',
               ] + list(extra)
        if with_plugin:
            cmd.append('--important-plugin=' + self.env.plugin)
        env = dict(os.environ)
        env.pop('CLN_REPLICA_CONFIG', None)
        self.log_offset = self.log_size()
        out = open(os.path.join(self.dir, 'stdout.log'), 'ab')
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.pids.add(self.proc.pid)
        self.with_plugin = with_plugin
        self.starts += 1
        if wait:
            self.wait_started()
        return self

    def wait_started(self):
        def ready():
            if self.proc.poll() is not None:
                raise Failure('lightningd %s exited with %s while starting' % (self.name, self.proc.returncode))
            if not os.path.exists(self.socket):
                return False
            self.rpc = LightningRpc(self.socket)
            return self.rpc.getinfo()
        info = wait_for(ready, 'lightningd %s to start' % self.name, START_TIMEOUT_S)
        self.id = info['id']
        self._remember_children()
        return info

    def _remember_children(self):
        if self.proc is not None:
            self.pids.update(children_of(self.proc.pid))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def plugin_pid(self, exe=None):
        """The pid of cln-replica (or of another plugin, `exe`) under this
        lightningd: its direct child (the plugin's guard process runs the
        same executable, one level further down)."""
        if not self.running():
            return None
        for p in children_of(self.proc.pid):
            if exe_of(p) == (exe or self.env.plugin) and ppid_of(p) == self.proc.pid:
                self.pids.add(p)
                return p
        return None

    def stop(self, timeout=STOP_TIMEOUT_S):
        """Clean stop through the RPC; returns the seconds from the call to
        the process's exit."""
        self._remember_children()
        kids = children_of(self.proc.pid)
        t = time.monotonic()
        try:
            self.rpc.stop()
        except (RpcError, OSError, ValueError) as e:
            # lightningd may close the socket before answering.
            log('%s: stop: %r' % (self.name, e))
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure('lightningd %s did not exit within %ds of `stop`' % (self.name, timeout))
        secs = time.monotonic() - t
        self._reap(kids)
        self.proc, self.rpc = None, None
        if rc != 0:
            raise Failure('lightningd %s exited with rc %d after stop' % (self.name, rc))
        return secs

    def _reap(self, kids):
        """Waits for the children lightningd had to go; kills stragglers."""
        try:
            wait_for(lambda: not any(pid_alive(k) for k in kids), '%s children to exit' % self.name, EXIT_TIMEOUT_S)
        except Failure:
            left = [k for k in kids if pid_alive(k)]
            log('%s: killing leftover children %s' % (self.name, left))
            kill_pids(left)

    def kill9(self):
        """kill -9 of lightningd, then waits for its children (the plugin
        among them) to go: nothing may still write the journal when it is
        checked or the node restarts."""
        kids = children_of(self.proc.pid)
        self.pids.update(kids)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=EXIT_TIMEOUT_S)
        self.proc, self.rpc = None, None
        self._reap(kids)
        return kids

    def wait_exit(self, timeout=EXIT_TIMEOUT_S, what=None):
        """Waits for lightningd to exit on its own; returns its rc."""
        kids = children_of(self.proc.pid)
        self.pids.update(kids)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure('lightningd %s still running %ds after %s' % (self.name, timeout, what or 'the fault'))
        self._reap(kids)
        self.proc, self.rpc = None, None
        return rc

    def kill_all(self):
        """Cleanup: every process this node ever had, by pid."""
        if self.proc is not None:
            try:
                self.pids.update(children_of(self.proc.pid))
            except Exception:
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        alive = [p for p in self.pids if pid_alive(p)]
        # Only our own processes: a pid recorded as ours may have been reused
        # by now; kill it only if it still runs one of our executables.
        ours = (self.env.plugin, os.path.realpath(sys.executable))
        for p in alive:
            exe = exe_of(p) or ''
            if exe in ours or any(exe.startswith(b + os.sep) for b in self.env.builds):
                kill_pids([p])
        self.proc, self.rpc = None, None

    # -- lightning helpers ---------------------------------------------------
    def wait_synced(self, height=None, timeout=SYNC_TIMEOUT_S):
        h = height if height is not None else self.env.height()
        wait_for(lambda: self.rpc.getinfo()['blockheight'] >= h, '%s synced to height %d' % (self.name, h), timeout)

    def channels(self, peer=None):
        return self.rpc.listpeerchannels(peer.id)['channels'] if peer else self.rpc.listpeerchannels()['channels']

    def htlcs_pending(self):
        return sum(len(c.get('htlcs', [])) for c in self.channels())

    def wait_htlcs_resolved(self, timeout=HTLC_TIMEOUT_S):
        wait_for(lambda: self.htlcs_pending() == 0, '%s HTLCs to resolve' % self.name, timeout)

    def replica_status(self):
        return self.rpc.call('replica-status')

    def file_status(self):
        with open(self.status_file) as f:
            return json.load(f)


def connect(x, y):
    def ok():
        peers = x.rpc.listpeers(y.id)['peers']
        return peers and peers[0]['connected']
    if not ok():
        x.rpc.connect(y.id, '127.0.0.1', y.port)
    wait_for(ok, '%s connected to %s' % (x.name, y.name), 60)


def wait_channel_normal(x, y, timeout=CHANNEL_TIMEOUT_S, count=1):
    def ok():
        n = [c for c in x.channels(y) if c['state'] == 'CHANNELD_NORMAL' and c.get('peer_connected')]
        return len(n) >= count
    wait_for(ok, '%d usable channel(s) %s-%s' % (count, x.name, y.name), timeout)


def wait_gossip(node, scid, timeout=GOSSIP_TIMEOUT_S):
    wait_for(lambda: len(node.rpc.listchannels(scid)['channels']) == 2,
             '%s to see both directions of %s' % (node.name, scid), timeout, max_interval=1)


def fund(env, node, amounts):
    for sats in amounts:
        env.send(node.rpc.newaddr('bech32')['bech32'], sats)


def confirmed_outputs(node):
    return [o for o in node.rpc.listfunds()['outputs'] if o['status'] == 'confirmed']


# ---------------------------------------------------------------------------
# cln-replica's command line.

def restore(env, journal, dest, at=None):
    """Restores into `dest`, a scratch file of the test's: what stood there
    (an earlier check's restore, perhaps newer) is removed first, so that
    restore's own protection of an existing file does not come into play."""
    for f in (dest, dest + '-journal', dest + '-wal', dest + '-shm'):
        if os.path.exists(f):
            os.remove(f)
    cmd = [env.plugin, 'restore', '--from', journal, '--to', dest, '--json']
    if at is not None:
        cmd += ['--at', str(at)]
    return json.loads(run(cmd).stdout)


def journal_status(env, journal):
    return json.loads(run([env.plugin, 'status', '--from', journal, '--json']).stdout)


def journal_tip(env, journal):
    """(generation, newest data_version) of the journal."""
    inv = journal_status(env, journal)['journal']
    gens = inv['generations']
    if not gens:
        return (0, None)
    g = gens[-1]
    return (g['generation'], g.get('last_version', g.get('tip_version')))


def verify(env, journal):
    return run([env.plugin, 'verify', '--from', journal], check=False)


# ---------------------------------------------------------------------------
# Payments.

class Payer:
    """Invoice payments, keysends and payments that must fail, with counts."""

    def __init__(self, seed=1):
        self.rng = random.Random(seed)
        self.counts = {}
        self.lock = threading.Lock()
        self.n = 0

    def bump(self, k):
        with self.lock:
            self.counts[k] = self.counts.get(k, 0) + 1

    def label(self, prefix):
        with self.lock:
            self.n += 1
            return '%s-%d-%d' % (prefix, self.n, os.getpid())

    # Small amounts: a few hundred payments, mostly one way at times, must
    # never drain a channel side (channels hold 0.1-1.2 M sat a side).
    def msat(self, lo=10_000, hi=300_000):
        return self.rng.randint(lo, hi)

    def pay(self, payer, payee, msat=None, expect_ok=True, retry_for=30):
        """payee issues an invoice, payer pays it. Returns True when paid."""
        inv = payee.rpc.invoice(msat or self.msat(), self.label('%s2%s' % (payer.name, payee.name)), 'test')
        try:
            payer.rpc.pay(inv['bolt11'], retry_for=retry_for)
            self.bump('paid')
            return True
        except RpcError as e:
            self.bump('pay_failed')
            if expect_ok:
                raise Failure('%s could not pay %s: %s' % (payer.name, payee.name, str(e.error)[:300]))
            return False

    def keysend(self, payer, payee, msat=None):
        try:
            # `keysend` is deprecated in v26.06 (refused unless re-enabled);
            # xpay's `xkeysend` is its successor.
            payer.rpc.call('xkeysend', {'destination': payee.id, 'amount_msat': msat or self.msat()})
            self.bump('keysend')
        except RpcError as e:
            raise Failure('keysend %s->%s failed: %s' % (payer.name, payee.name, str(e.error)[:300]))

    def pay_deleted_invoice(self, payer, payee):
        """Fails at the destination: the invoice is gone (HTLCs go out and come back)."""
        lbl = self.label('deleted')
        inv = payee.rpc.invoice(self.msat(), lbl, 'deleted before payment')
        payee.rpc.delinvoice(lbl, 'unpaid')
        try:
            payer.rpc.pay(inv['bolt11'], retry_for=10)
        except RpcError:
            self.bump('failed_as_expected')
            return
        raise Failure('%s paid a deleted invoice of %s' % (payer.name, payee.name))

    def pay_expired_invoice(self, payer, payee):
        inv = payee.rpc.invoice(self.msat(), self.label('expired'), 'expires at once', expiry=1)
        # The invoice must be expired when paid: poll the payee's view of it.
        wait_for(lambda: payee.rpc.listinvoices(invstring=inv['bolt11'])['invoices'][0]['status'] == 'expired',
                 'invoice to expire', 30, interval=0.2)
        try:
            payer.rpc.pay(inv['bolt11'])
        except RpcError:
            self.bump('failed_as_expected')
            return
        raise Failure('%s paid an expired invoice' % payer.name)

    def pay_too_much(self, payer, payee):
        inv = payee.rpc.invoice(5_000_000_000, self.label('toobig'), 'more than any channel holds')
        try:
            payer.rpc.pay(inv['bolt11'], retry_for=5)
        except RpcError:
            self.bump('failed_as_expected')
            return
        raise Failure('%s paid more than its channels hold' % payer.name)


def pipe_bytes_pending(pid, fd=0):
    """Bytes waiting unread in process pid's fd (a pipe): FIONREAD on a second
    handle of the same pipe, opened through /proc."""
    f = os.open('/proc/%d/fd/%d' % (pid, fd), os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = fcntl.ioctl(f, termios.FIONREAD, struct.pack('i', 0))
        return struct.unpack('i', buf)[0]
    finally:
        os.close(f)


class Background:
    """Runs fn(i) for i in range(n) on `threads` threads until done or stopped;
    collects exceptions (payments interrupted by a crash are expected)."""

    def __init__(self, fn, n, threads=3):
        self.fn, self.n = fn, n
        self.stop_flag = threading.Event()
        self.errors = []
        self.done = 0
        self.lock = threading.Lock()
        self.next = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop_flag.is_set():
            with self.lock:
                i = self.next
                self.next += 1
            if i >= self.n:
                return
            try:
                self.fn(i)
                with self.lock:
                    self.done += 1
            except Exception as e:  # noqa: B902 - collected, judged by the caller
                with self.lock:
                    self.errors.append(e)

    def stop(self, timeout=120):
        self.stop_flag.set()
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.time()))
        if any(t.is_alive() for t in self.threads):
            raise Failure('payment threads still busy %ds after stop' % timeout)


# ---------------------------------------------------------------------------
# The common topology: a star around node a (the protected one).
#
#   b ==(a opens, pushes to b)== a ==(c opens, pushes to a)== c
#                                 \--(a opens, small: the one closed cooperatively)--/
#
# Channels both ways from a's point of view; every payment between b and c
# is forwarded by a; a pays and is paid directly too.

def setup_star(env, a, b, c, extra_channel=True):
    """Funds the nodes, opens the channels, waits for them and for gossip.
    Returns a dict of short channel ids."""
    env.mine(101)
    for n in (a, b, c):
        if not n.running():
            n.start()
    fund(env, a, [3_000_000, 1_000_000])
    fund(env, b, [1_000_000])
    fund(env, c, [3_000_000])
    h = env.mine(1)
    for n in (a, b, c):
        n.wait_synced(h)
    for n, k in ((a, 2), (b, 1), (c, 1)):
        wait_for(lambda: len(confirmed_outputs(n)) >= k, 'funds on %s' % n.name, 60)
    connect(a, b)
    connect(c, a)
    # Explicit inputs: a opens two channels from its two confirmed outputs.
    outs = sorted(confirmed_outputs(a), key=lambda o: -o['amount_msat'])
    utxo = lambda o: '%s:%d' % (o['txid'], o['output'])
    a.rpc.fundchannel(b.id, 2_000_000, push_msat=800_000_000, utxos=[utxo(outs[0])])
    c.rpc.fundchannel(a.id, 2_000_000, push_msat=800_000_000)
    if extra_channel:
        a.rpc.fundchannel(c.id, 500_000, push_msat=100_000_000, utxos=[utxo(outs[1])])
    h = env.mine(6)
    for n in (a, b, c):
        n.wait_synced(h)
    wait_channel_normal(a, b)
    wait_channel_normal(a, c, count=2 if extra_channel else 1)
    scids = {
        'ab': [ch['short_channel_id'] for ch in a.channels(b) if ch['state'] == 'CHANNELD_NORMAL'][0],
        'ca': [ch['short_channel_id'] for ch in a.channels(c)
               if ch['state'] == 'CHANNELD_NORMAL' and ch['opener'] == 'remote'][0],
    }
    if extra_channel:
        scids['ac_small'] = [ch['short_channel_id'] for ch in a.channels(c)
                             if ch['state'] == 'CHANNELD_NORMAL' and ch['opener'] == 'local'][0]
    # b and c route to each other through a: each must know a's other channel.
    wait_gossip(b, scids['ca'])
    wait_gossip(c, scids['ab'])
    return scids


def pay_cycle(payer, a, b, c, i):
    """The i-th payment of the cycle b->a, a->b, c->b (forwarded by a): the
    workload of bench.py and soak.py."""
    k = i % 3
    if k == 0:
        payer.pay(b, a)
    elif k == 1:
        payer.pay(a, b)
    else:
        payer.pay(c, b)


CGROUP_ROOT = '/sys/fs/cgroup/blkio'


class Throttle:
    """A cgroup v1 blkio group throttling one block device, read and write;
    a wrapper script puts lightningd into it before exec'ing it, so the
    plugin (its child) is throttled too and nothing else is."""

    def __init__(self, env, dev, bps, name):
        self.group = os.path.join(CGROUP_ROOT, 'cln-replica-%s-%d' % (name, os.getpid()))
        majmin = subprocess.run(['lsblk', '-dno', 'MAJ:MIN', dev], check=True, stdout=subprocess.PIPE,
                                text=True).stdout.strip()
        os.mkdir(self.group)
        for f in ('blkio.throttle.write_bps_device', 'blkio.throttle.read_bps_device'):
            with open(os.path.join(self.group, f), 'w') as fh:
                fh.write('%s %d\n' % (majmin, bps))
        self.majmin = majmin
        self.desc = '%s (%s) throttled to %.0f MiB/s' % (dev, majmin, bps / (1 << 20))
        self.wrapper = os.path.join(env.workdir, 'lightningd-throttled')
        with open(self.wrapper, 'w') as f:
            f.write('#!/bin/sh\necho $$ > %s/cgroup.procs || exit 97\nexec %s "$@"\n'
                    % (self.group, env.lightningd))
        os.chmod(self.wrapper, 0o755)
        log('throttle: %s at %d bytes/s read and write on %s (%s)' % (self.group, bps, dev, majmin))

    def command(self, cmd):
        """`cmd` run inside the group (as lightningd is through the wrapper)."""
        return ['sh', '-c', 'echo $$ > %s/cgroup.procs || exit 97; exec "$@"' % self.group, 'sh'] + list(cmd)

    def written_bytes(self):
        """Bytes the group has written to the device so far. Writes the
        kernel's flusher thread makes on the group's behalf are not counted
        (nor throttled): cgroup v1 charges only I/O a member submits itself,
        such as an fsync's. Past the dirty background threshold
        (/proc/sys/vm/dirty_background_ratio of memory) the flusher takes
        over and the device runs at its own speed: comparing this count with
        what the journal grew tells whether the throttle held."""
        with open(os.path.join(self.group, 'blkio.throttle.io_service_bytes')) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == self.majmin and parts[1] == 'Write':
                    return int(parts[2])
        return 0

    def cleanup(self):
        if not os.path.isdir(self.group):
            return
        # Whatever is still in the group (nothing once the nodes are killed)
        # goes back to the root group first: a group with members cannot go.
        try:
            with open(os.path.join(self.group, 'cgroup.procs')) as f:
                pids = [p.strip() for p in f if p.strip()]
            for p in pids:
                with open(os.path.join(CGROUP_ROOT, 'cgroup.procs'), 'w') as f:
                    f.write(p + '\n')
            os.rmdir(self.group)
        except OSError as e:
            log('cleanup: cannot remove %s: %s' % (self.group, e))
