#!/usr/bin/env python3
"""Side-by-side benchmark: dftpd against Debian's vsftpd, on loopback.

Usage: bench/bench.py [--quick] [--only FIGURES] [--runs N] [--duration-runs N]
                      [--bin PATH] [--no-results] [--record DIR]

dftpd runs with its default configuration; only addresses, paths, users and
the link key are set (what every deployment sets). vsftpd runs anonymous,
from its own temporary root and port (installed with apt when absent).
Runs alternate between the two servers. Figures (`--only`, comma-separated):

  retr   1 GiB RETR with curl: dftpd direct (`--ftp-pret
         --no-ftp-skip-pasv-ip`, straight from the slave) vs vsftpd. GB/s of
         the transfer phase (curl's time_total - time_pretransfer: the login
         is left out), median of --runs, min-max beside it.
  stor   the same for a 1 GiB STOR. dftpd fsyncs the file before its 226,
         vsftpd does not. The page cache is flushed (sync) before every run
         so that no run pays for the previous run's dirty pages.
  relay  the same RETR and STOR with plain curl (no PRET) on `dftpd
         cluster`, whose default pasv_without_pret is `relay`: the master
         carries the bytes. Reported as a ratio of the direct figure, both
         measured alternately in this figure (no vsftpd column). The
         cluster's relayed-bytes counter (/metrics) must grow by the size
         for a relayed run and not move for a direct one.
  small  4 KiB files, 8 ftplib client processes, the same client code for
         both (dftpd: PRET, PASV, RETR with the 227 address; vsftpd: PASV,
         RETR). (a) a fixed count: 300 files per client, --runs times;
         (b) a fixed duration: each client loops over its files for 30 s.
         files/s = files / (last client's end - first client's start),
         counted from a common start after every client logged in. Any
         4xx/5xx reply, short file or closed connection is an error: it is
         counted, the client reconnects and goes on, and the figure is
         marked FAILED. dftpd runs here as two processes (`dftpd master
         --config`, `dftpd slave --config`, one slave, default settings).
         dftpd's default command rate limit (a burst of 10,000, then 5,000
         commands/s per session; 3 commands per file) would cap the
         fixed-duration figure: its row says at how many files/s.
  cpu    CPU time per file during the fixed-count runs of `small`: dftpd's
         master and slave processes (utime+stime from /proc/PID/stat),
         vsftpd's whole process tree, and the client processes
         (getrusage(RUSAGE_SELF) of each client between the common start
         and its last file). vsftpd forks processes per session and some
         are not waited for by their parent (reparented to pid 1, their
         CPU lost to the listener's cutime), so vsftpd runs under a small
         child-subreaper process (REAPER) that reaps every orphan: the
         tree's CPU is the reaper's utime+stime+cutime+cstime plus that of
         every live descendant, read once every session process has exited
         and been reaped. Before/after snapshots are taken once every
         client has logged in and once every session has ended, so logins
         are left out.
  idle   master RSS per logged-in idle session, 10,000 sessions, with the
         default password cost (argon2id, 19 MiB) and the default
         per-address limit (20): each client socket is bound to a source
         address 127.0.X.Y before connecting, at most 15 sessions each. Logins run
         concurrently (non-blocking sockets, a window of 64 in flight, under
         the 60 s login timeout while the master verifies on its bounded
         pool). KiB per session = (RSS ~1 s after the last 230 - RSS before
         the first connection) / sessions (RSS 5 s after is shown too); then
         every session must still answer NOOP.
  db     the file database at 1M and 10M files (examples/filedb.rs).

The table is printed; a full run (every figure, not --quick, without
--no-results) is prepended to bench/RESULTS.md with date, commit and
machine. --quick uses tiny sizes: a smoke test of the harness (CI), not a
measurement.

Only loopback addresses are used.
"""

import argparse
import datetime
import ftplib
import multiprocessing
import os
import queue
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "bench", "bench"
LINK_KEY = "bench-link-key-not-secret"
FIGURES = ["retr", "stor", "relay", "small", "cpu", "idle", "db"]
TICK = os.sysconf("SC_CLK_TCK")
# The separate-process site: the slave's data address (loopback, not used
# by the cluster's 127.0.0.11-13).
SITE_SLAVE_IP = "127.0.0.21"
# vsftpd's control and passive address: its own, like dftpd's slaves. On
# 127.0.0.1 its passive ports (inside the kernel's ephemeral range) collide
# with client sockets in TIME_WAIT that other loopback traffic leaves there;
# after 9 failed binds vsftpd ends the session with "500 OOPS:
# vsf_sysutil_bind".
VSFTPD_IP = "127.0.0.31"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_port(host, port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# --- /proc ---------------------------------------------------------------------

def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in ticks, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                children.setdefault(st[0], []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu(pid):
    """CPU seconds of `pid` and every process it forked: its own and every
    live descendant's utime+stime+cutime+cstime (an exited, reaped
    descendant is in its parent's cutime/cstime)."""
    ticks = 0
    for p in [pid] + descendants(pid):
        st = proc_stat(p)
        if st:
            ticks += st[1] + st[2]
    return ticks / TICK


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- servers -------------------------------------------------------------------

class Server:
    """A server process: stdout read up to a ready line, then drained;
    stderr to a log file (its warnings are listed at stop)."""

    def __init__(self, name, cmd, ready, logdir):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"),
                                     stdin=subprocess.DEVNULL, text=True, preexec_fn=raise_nofile)
        self.lines = []
        while ready:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} did not print {ready!r}; see {self.log_path}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith(ready):
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    @property
    def pid(self):
        return self.proc.pid

    def log_size(self):
        return os.path.getsize(self.log_path)

    def stop(self, upto=None):
        """Stops the process, then lists the warnings it logged before (or
        before its log reached `upto` bytes)."""
        upto = self.log_size() if upto is None else upto
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        problems = []
        try:
            with open(self.log_path, errors="replace") as f:
                problems = [l.rstrip() for l in f.read(upto).splitlines() if (" WARN " in l or " ERROR " in l)
                            and "plain-text password" not in l]  # the bench's users are plain
        except OSError:
            pass
        if problems:
            log(f"{self.name}: {len(problems)} WARN/ERROR log line(s) (in {self.log_path}), first ones:")
            for l in problems[:5]:
                log("   ", l[:300])


def ensure_vsftpd():
    path = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if os.path.exists(path):
        return path
    log("installing vsftpd with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "vsftpd"], check=True, env=env)
    return "/usr/sbin/vsftpd"


# Runs vsftpd (argv[1:]) as its child and is a child subreaper
# (PR_SET_CHILD_SUBREAPER), reaping everything until vsftpd has exited and
# no child is left. vsftpd's session processes do not always wait for
# their own children (a session's processes were seen reparented to pid 1),
# so the listener's cutime misses some of them; under this reaper every
# process vsftpd forks ends up in the reaper's cutime/cstime.
REAPER = r"""
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execv(sys.argv[1], sys.argv[1:])
print(f"vsftpd pid {pid}", flush=True)
signal.signal(signal.SIGTERM, lambda *_: os.killpg(pid, signal.SIGTERM))
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


class Vsftpd:
    """Anonymous vsftpd on VSFTPD_IP, root `root` (uploads into `up/`),
    under REAPER so that the CPU of all its processes can be counted."""

    label = "vsftpd"
    pret = False
    creds = ("anonymous", "")

    def __init__(self, root, logdir):
        self.root = root
        self.host = VSFTPD_IP
        self.port = free_port(self.host)
        os.makedirs(os.path.join(root, "up"), exist_ok=True)
        os.chmod(root, 0o755)
        os.chmod(os.path.join(root, "up"), 0o777)
        os.makedirs("/var/run/vsftpd/empty", exist_ok=True)
        conf = os.path.join(logdir, "vsftpd.conf")
        with open(conf, "w") as f:
            f.write(f"""listen=YES
listen_ipv6=NO
listen_address={self.host}
listen_port={self.port}
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
anon_root={root}
write_enable=YES
anon_upload_enable=YES
anon_umask=022
pasv_enable=YES
pasv_address={self.host}
pasv_min_port=40000
pasv_max_port=44999
max_clients=0
max_per_ip=0
xferlog_enable=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
use_sendfile=YES
secure_chroot_dir=/var/run/vsftpd/empty
""")
        self.server = Server("vsftpd", [sys.executable, "-c", REAPER, ensure_vsftpd(), conf], "vsftpd pid",
                             logdir)
        self.listener = int(self.server.lines[-1].split()[-1])
        wait_port(self.host, self.port, self.server.proc)

    def cpu(self):
        """CPU seconds of every process vsftpd forked so far (and of the
        reaper, which only waits)."""
        return {"server": tree_cpu(self.server.pid)}

    def settle(self):
        """Waits until every session process has exited and been reaped."""
        for _ in range(200):
            if descendants(self.server.pid) == [self.listener]:
                return
            time.sleep(0.025)
        log("vsftpd: session processes still alive 5 s after the clients quit")

    def stop(self):
        self.server.stop()


class DftpdCluster:
    """`dftpd cluster` (master + 3 slaves in one process), defaults but for
    the listen address, the data directory and the user."""

    def __init__(self, binary, data_dir, logdir, record=None):
        self.port = free_port()
        extra = ["--record", record] if record else []
        self.server = Server("dftpd-cluster", [binary, "cluster", "--listen", f"127.0.0.1:{self.port}",
                                               "--data-dir", data_dir, "--user", f"{USER}:{PASSWORD}"] + extra,
                             "cluster ready", logdir)
        self.metrics = next((l.split()[1] for l in self.server.lines if l.startswith("metrics: ")), None)

    def relayed_bytes(self):
        """dftpd_relayed_bytes_total summed over slaves (None: no metrics)."""
        if not self.metrics:
            return None
        with urllib.request.urlopen(self.metrics, timeout=10) as r:
            text = r.read().decode()
        return sum(float(m) for m in re.findall(r"^dftpd_relayed_bytes_total(?:\{[^}]*\})? (\S+)$", text, re.M))

    def stop(self):
        self.server.stop()


class DftpdSite:
    """`dftpd master --config` and one `dftpd slave --config`, separate
    processes, default settings but for addresses, paths, users and the
    link key."""

    label = "dftpd"
    host = "127.0.0.1"
    pret = True
    creds = (USER, PASSWORD)

    def __init__(self, binary, tmp, logdir, slave_root, record=None):
        self.port = free_port()
        link = f"127.0.0.1:{free_port()}"
        mconf, sconf = os.path.join(tmp, "site-master.toml"), os.path.join(tmp, "site-slave.toml")
        with open(mconf, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\nlink_listen = "{link}"\nlink_key = "{LINK_KEY}"\n'
                    f'slaves = ["slave-1"]\nstore = "{os.path.join(tmp, "site-master.redb")}"\n'
                    + (f'record_dir = "{record}"\n' if record else "")
                    + f'[[users]]\nname = "{USER}"\npassword = "{PASSWORD}"\n')
        with open(sconf, "w") as f:
            f.write(f'name = "slave-1"\nmaster = "{link}"\nlink_key = "{LINK_KEY}"\nroot = "{slave_root}"\n'
                    f'data_ip = "{SITE_SLAVE_IP}"\n')
        self.master = Server("dftpd-master", [binary, "master", "--config", mconf], "master ready on", logdir)
        self.slave = Server("dftpd-slave", [binary, "slave", "--config", sconf], "slave-1 ready", logdir)

    def wait_files(self, name):
        """Until the master knows `name` (the slave's remerge is done)."""
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=30)
        ftp.login(USER, PASSWORD)
        ftp.voidcmd("TYPE I")
        for _ in range(600):
            try:
                ftp.size(name)
                ftp.quit()
                return
            except ftplib.error_perm:
                time.sleep(0.05)
        raise RuntimeError(f"the master never listed {name}")

    def cpu(self):
        return {"master": tree_cpu(self.master.pid), "slave": tree_cpu(self.slave.pid)}

    def settle(self):
        time.sleep(0.2)

    def stop(self):
        upto = self.slave.log_size(), self.master.log_size()  # not what stopping one makes the other say
        self.slave.stop(upto[0])
        self.master.stop(upto[1])


# --- statistics and table cells --------------------------------------------------

class Samples:
    def __init__(self):
        self.values = []
        self.errors = 0
        self.first_error = None

    def add(self, v):
        self.values.append(v)

    def error(self, e, count=1):
        self.errors += count
        if self.first_error is None:
            self.first_error = str(e)[:160]

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None

    def cell(self, fmt):
        if not self.values:
            txt = "no result"
        elif len(self.values) == 1:
            txt = fmt.format(self.values[0])
        else:
            txt = f"{fmt.format(self.median)} ({fmt.format(min(self.values))}-{fmt.format(max(self.values))})"
        if self.errors:
            txt += f" FAILED: {self.errors} error(s), first: {self.first_error}"
        return txt


def last(samples, fmt="{:.2f}"):
    """The latest sample, for progress lines."""
    return fmt.format(samples.values[-1]) if samples.values else "-"


def ratio_goal(num, den, op, threshold, suffix="x"):
    """Ratio and goal cells; `op` is '>=' or '<='."""
    if num is None or not den:
        return "-", f"{op} {threshold}{suffix}"
    r = num / den
    met = r >= threshold if op == ">=" else r <= threshold
    return f"{r:.2f}x", f"{op} {threshold}{suffix}: {'met' if met else 'NOT met'}"


class Row:
    def __init__(self, figure, dftpd, vsftpd="-", ratio="-", goal="-", failed=False):
        self.figure = ("FAILED: " if failed else "") + figure
        self.cells = [dftpd, vsftpd, ratio, goal]


# --- large files with curl -------------------------------------------------------

def curl_transfer(args, size, upload):
    """Seconds of the transfer phase (time_total - time_pretransfer)."""
    out = subprocess.run(["curl", "-sS", "--max-time", "900", "-w",
                          "\n%{time_pretransfer} %{time_total} %{size_download} %{size_upload}"] + args,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"curl exit {out.returncode}: {out.stderr.strip()[:120]}")
    pre, total, down, up = out.stdout.strip().splitlines()[-1].split()
    moved = float(up if upload else down)
    if moved != size:
        raise RuntimeError(f"curl moved {moved:.0f} bytes, not {size}")
    return float(total) - float(pre)


def dftpd_url(port, path, pret):
    return (["--ftp-pret", "--no-ftp-skip-pasv-ip"] if pret else []) + [
        "-u", f"{USER}:{PASSWORD}", f"ftp://127.0.0.1:{port}/{path}"]


def dftpd_delete(port, path):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=60)
    ftp.login(USER, PASSWORD)
    ftp.delete(path)
    ftp.quit()


def measure(samples, size, fn):
    """One timed run of `fn` (returns seconds) into `samples` as GB/s."""
    os.sync()
    try:
        samples.add(size / fn() / 1e9)
    except Exception as e:
        log("   error:", e)
        samples.error(e)


def fig_retr(cl, v, big, runs):
    d, vs = Samples(), Samples()
    for args in (["-o", "/dev/null"] + dftpd_url(cl.port, "big.bin", True),
                 ["-o", "/dev/null", f"ftp://{v.host}:{v.port}/big.bin"]):
        curl_transfer(args, big, False)  # warm the page cache and both servers
    for i in range(runs):
        measure(d, big, lambda: curl_transfer(["-o", "/dev/null"] + dftpd_url(cl.port, "big.bin", True), big, False))
        measure(vs, big, lambda: curl_transfer(["-o", "/dev/null", f"ftp://{v.host}:{v.port}/big.bin"], big, False))
        log(f"  retr run {i + 1}: dftpd {last(d)} vsftpd {last(vs)} GB/s")
    ratio, goal = ratio_goal(d.median, vs.median, ">=", 1.0)
    return [Row(f"large RETR {human(big)}, curl, dftpd direct (GB/s, median (min-max) of {runs})",
                d.cell("{:.2f}"), vs.cell("{:.2f}"), ratio, goal, d.errors or vs.errors)]


def stor_dftpd(cl, payload, big, name, pret):
    t = curl_transfer(["-T", payload] + dftpd_url(cl.port, name, pret), big, True)
    dftpd_delete(cl.port, name)
    return t


def stor_vsftpd(v, payload, big, name):
    t = curl_transfer(["-T", payload, f"ftp://{v.host}:{v.port}/up/{name}"], big, True)
    os.remove(os.path.join(v.root, "up", name))
    return t


def fig_stor(cl, v, payload, big, runs):
    d, vs = Samples(), Samples()
    for i in range(runs):
        measure(d, big, lambda: stor_dftpd(cl, payload, big, f"up{i}.bin", True))
        measure(vs, big, lambda: stor_vsftpd(v, payload, big, f"up{i}.bin"))
        log(f"  stor run {i + 1}: dftpd {last(d)} vsftpd {last(vs)} GB/s")
    ratio, goal = ratio_goal(d.median, vs.median, ">=", 1.0)
    return [Row(f"large STOR {human(big)}, curl, dftpd direct; dftpd fsyncs before its 226, vsftpd does not "
                f"(GB/s, median (min-max) of {runs})",
                d.cell("{:.2f}"), vs.cell("{:.2f}"), ratio, goal, d.errors or vs.errors)]


def checked_relay(cl, samples, size, fn, relayed):
    """`fn` in `measure`, then checks that the relayed-bytes counter moved
    by the size (relayed) or not at all (direct)."""
    before = cl.relayed_bytes()
    n = len(samples.values)
    measure(samples, size, fn)
    after = cl.relayed_bytes()
    if before is None or len(samples.values) == n:
        return
    moved = after - before
    if (moved < size) if relayed else (moved != 0):
        samples.values.pop()
        samples.error(f"relayed bytes moved by {moved:.0f} ({'relayed' if relayed else 'direct'} run)")


def fig_relay(cl, payload, big, runs, which):
    rows = []
    for kind in which:
        direct, relay = Samples(), Samples()
        for i in range(runs):
            if kind == "retr":
                fn = lambda pret: curl_transfer(["-o", "/dev/null"] + dftpd_url(cl.port, "big.bin", pret), big, False)
            else:
                fn = lambda pret: stor_dftpd(cl, payload, big, f"relay{i}.bin", pret)
            checked_relay(cl, direct, big, lambda: fn(True), False)
            checked_relay(cl, relay, big, lambda: fn(False), True)
            log(f"  relay {kind} run {i + 1}: direct {last(direct)} relayed {last(relay)} GB/s")
        ratio, goal = ratio_goal(relay.median, direct.median, ">=", 0.8)
        rows.append(Row(f"relayed {kind.upper()} {human(big)}, plain curl (no PRET) through the master of "
                        f"`dftpd cluster` (GB/s, median (min-max) of {runs}; ratio: relayed / direct, "
                        f"direct {direct.cell('{:.2f}')})",
                        relay.cell("{:.2f}"), "-", ratio, goal.replace("x", "x of direct", 1),
                        relay.errors or direct.errors))
    return rows


# --- small files: 8 ftplib client processes ----------------------------------------

# dftpd's [guard] defaults (core/src/config/policy.rs, README "Limits slow
# down"): a session may send command_burst commands, then
# commands_per_second; replies wait beyond that.
DFTPD_COMMAND_BURST, DFTPD_COMMANDS_PER_SECOND = 10_000, 5000
LOGIN_COMMANDS = 3  # USER, PASS, TYPE before the common start


def command_limit_cap(clients, duration, per_file):
    """The files/s dftpd's default command rate limit allows `clients`
    sessions of `per_file` commands per file over `duration` s."""
    budget = DFTPD_COMMAND_BURST - LOGIN_COMMANDS + DFTPD_COMMANDS_PER_SECOND * duration
    return clients * budget / per_file / duration


MAX_CLIENT_ERRORS = 50
BARRIER_TIMEOUT = 300


def ftp_login(host, port, creds):
    ftp = ftplib.FTP()
    ftp.trust_server_pasv_ipv4_address = True
    ftp.connect(host, port, timeout=60)
    ftp.login(*creds)
    ftp.voidcmd("TYPE I")
    return ftp


def fetch(ftp, name, pret):
    if pret:
        ftp.voidcmd(f"PRET RETR {name}")
    got = 0
    with ftp.transfercmd(f"RETR {name}") as conn:
        while True:
            b = conn.recv(65536)
            if not b:
                break
            got += len(b)
    ftp.voidresp()
    return got


def small_client(host, port, creds, pret, names, size, duration, ready, go, out):
    """One client process: log in, wait for the common start, fetch `names`
    once (duration None) or in a loop until `duration` s have passed."""
    res = {"files": 0, "errors": 0, "first_error": None, "start": None, "end": None, "cpu": 0.0}

    def error(e):
        res["errors"] += 1
        if res["first_error"] is None:
            res["first_error"] = f"{type(e).__name__}: {str(e) or 'connection closed'}"[:160]

    ftp = None
    try:
        ftp = ftp_login(host, port, creds)
    except Exception as e:
        error(e)
    try:
        ready.wait(BARRIER_TIMEOUT)
        go.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError as e:
        error(e)
        ftp = None
    if ftp is not None:
        cpu0, t0 = self_cpu(), time.monotonic()
        deadline = t0 + duration if duration else None
        i = 0
        while (i < len(names)) if deadline is None else (time.monotonic() < deadline):
            name = names[i % len(names)]
            i += 1
            try:
                got = fetch(ftp, name, pret)
                if got != size:
                    raise ftplib.error_proto(f"{name}: {got} bytes, not {size}")
                res["files"] += 1
            except (ftplib.Error, EOFError, OSError) as e:
                error(e)
                if res["errors"] >= MAX_CLIENT_ERRORS:
                    break
                clean = isinstance(e, (ftplib.error_temp, ftplib.error_perm)) and not str(e).startswith("421")
                if not clean:  # the session may be gone or out of step: a new one
                    try:
                        ftp.close()
                        ftp = ftp_login(host, port, creds)
                    except Exception as e2:
                        error(e2)
                        break
        res["start"], res["end"], res["cpu"] = t0, time.monotonic(), self_cpu() - cpu0
        try:
            ftp.quit()
        except Exception:
            ftp.close()
    out.put(res)


def small_run(server, names, size, clients, duration):
    """One run: `clients` processes against `server`. Returns a dict:
    files, wall (s), server (CPU s by part), clients (CPU s), errors,
    first_error."""
    ready, go = multiprocessing.Barrier(clients + 1), multiprocessing.Barrier(clients + 1)
    out = multiprocessing.Queue()
    procs = []
    for c in range(clients):
        k = c * len(names) // clients
        mine = names[k:] + names[:k]  # every client its own order of the same files
        procs.append(multiprocessing.Process(
            target=small_client,
            args=(server.host, server.port, server.creds, server.pret, mine, size, duration, ready, go, out)))
    for p in procs:
        p.start()
    errors, first = 0, None
    try:
        ready.wait(BARRIER_TIMEOUT)
        cpu0 = server.cpu()
        go.wait(BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        errors, first = 1, "clients never reached the start"
        cpu0 = server.cpu()
    results = []
    for _ in procs:
        try:
            results.append(out.get(timeout=(duration or 0) + BARRIER_TIMEOUT))
        except queue.Empty:
            errors += 1
            first = first or "a client process gave no result"
    for p in procs:
        p.join(30)
        if p.exitcode != 0:
            errors += 1
            first = first or f"a client process exited with {p.exitcode}"
    server.settle()
    cpu1 = server.cpu()
    files = sum(r["files"] for r in results)
    starts = [r["start"] for r in results if r["start"] is not None]
    ends = [r["end"] for r in results if r["end"] is not None]
    wall = (max(ends) - min(starts)) if starts else 0.0
    for r in results:
        errors += r["errors"]
        first = first or r["first_error"]
    return {"files": files, "wall": wall, "server": {k: cpu1[k] - cpu0[k] for k in cpu0},
            "clients": sum(r["cpu"] for r in results), "errors": errors, "first_error": first}


def record_run(rate, cpu, r, label):
    if r["errors"]:
        log(f"   {label}: {r['errors']} error(s), first: {r['first_error']}")
        rate.error(r["first_error"], r["errors"])
    if r["files"] and r["wall"] > 0:
        rate.add(r["files"] / r["wall"])
        if cpu is not None:
            for part, secs in list(r["server"].items()) + [("clients", r["clients"])]:
                cpu.setdefault(part, Samples()).add(secs / r["files"] * 1e6)


def fig_small(site, v, names, size, clients, runs, duration, duration_runs, want_small, want_cpu):
    rows = []
    # (a) fixed count, with CPU per file.
    rates = {"dftpd": Samples(), "vsftpd": Samples()}
    cpu = {"dftpd": {}, "vsftpd": {}}
    for i in range(runs):
        for server in (site, v):
            r = small_run(server, names, size, clients, None)
            record_run(rates[server.label], cpu[server.label], r, server.label)
        log(f"  small count run {i + 1}: dftpd {last(rates['dftpd'], '{:,.0f}')} vsftpd "
            f"{last(rates['vsftpd'], '{:,.0f}')} files/s")
    setup = "dftpd as separate master + 1 slave processes"
    d, vs = rates["dftpd"], rates["vsftpd"]
    if want_small:
        ratio, goal = ratio_goal(d.median, vs.median, ">=", 1.2)
        rows.append(Row(f"small files, fixed count: {len(names)} x {size // 1024} KiB per client, {clients} ftplib "
                        f"clients, logins excluded, {setup} (files/s, median (min-max) of {runs})",
                        d.cell("{:,.0f}"), vs.cell("{:,.0f}"), ratio, goal, d.errors or vs.errors))
    if want_cpu:
        failed = bool(d.errors or vs.errors)
        dc, vc = cpu["dftpd"], cpu["vsftpd"]
        total = Samples()
        for m, s in zip(dc.get("master", Samples()).values, dc.get("slave", Samples()).values):
            total.add(m + s)
        what = f"during the fixed-count runs (us/file, median (min-max) of {runs})"
        vserver = vc.get("server", Samples())
        ratio = f"{total.median / vserver.median:.2f}x" if total.values and vserver.median else "-"
        rows.append(Row(f"CPU per file, server: dftpd master + slave, vsftpd all its processes, {what}",
                        total.cell("{:.1f}"), vserver.cell("{:.1f}"), ratio, "-", failed))
        rows.append(Row(f"CPU per file, dftpd master process, {what}", dc.get("master", Samples()).cell("{:.1f}"),
                        "-", "-", "-", failed))
        rows.append(Row(f"CPU per file, dftpd slave process, {what}", dc.get("slave", Samples()).cell("{:.1f}"),
                        "-", "-", "-", failed))
        dcl, vcl = dc.get("clients", Samples()), vc.get("clients", Samples())
        ratio = f"{dcl.median / vcl.median:.2f}x" if dcl.values and vcl.median else "-"
        rows.append(Row(f"CPU per file, the {clients} ftplib client processes together (dftpd: PRET+PASV+RETR, "
                        f"vsftpd: PASV+RETR), {what}", dcl.cell("{:.1f}"), vcl.cell("{:.1f}"), ratio, "-", failed))
    # (b) fixed duration.
    if want_small:
        rates = {"dftpd": Samples(), "vsftpd": Samples()}
        for i in range(duration_runs):
            for server in (site, v):
                record_run(rates[server.label], None, small_run(server, names, size, clients, duration), server.label)
            log(f"  small duration run {i + 1}: dftpd {last(rates['dftpd'], '{:,.0f}')} vsftpd "
                f"{last(rates['vsftpd'], '{:,.0f}')} files/s")
        d, vs = rates["dftpd"], rates["vsftpd"]
        ratio, goal = ratio_goal(d.median, vs.median, ">=", 1.2)
        cap = command_limit_cap(clients, duration, 3)
        rows.append(Row(f"small files, fixed duration: {clients} ftplib clients loop over the {len(names)} x "
                        f"{size // 1024} KiB files for {duration:g} s, {setup}; dftpd's default command rate "
                        f"limit ({DFTPD_COMMAND_BURST} burst, then {DFTPD_COMMANDS_PER_SECOND}/s per session, 3 "
                        f"commands per file) caps it at {cap:,.0f} files/s "
                        f"(files/s, median (min-max) of {duration_runs})",
                        d.cell("{:,.0f}"), vs.cell("{:,.0f}"), ratio, goal, d.errors or vs.errors))
    return rows


# --- idle sessions -----------------------------------------------------------------

PER_ADDRESS = 15
LOGIN_WINDOW = 64


def source_address(i):
    k = i // PER_ADDRESS
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


class IdleSession:
    __slots__ = ("sock", "state", "buf")

    def __init__(self, sock):
        self.sock, self.state, self.buf = sock, "220", b""


def final_replies(sess, data):
    """Final reply lines (b'NNN text') completed by `data`."""
    sess.buf += data
    out = []
    while b"\r\n" in sess.buf:
        line, sess.buf = sess.buf.split(b"\r\n", 1)
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            out.append(line)
    return out


def open_idle_sessions(port, n, errors):
    """Opens `n` sessions, at most LOGIN_WINDOW logging in at once; returns
    the logged-in sockets."""
    sel = selectors.DefaultSelector()
    done, started, in_flight = [], 0, 0
    send = {"220": (b"USER %s\r\n" % USER.encode(), "331"), "331": (b"PASS %s\r\n" % PASSWORD.encode(), "230")}
    while started < n or in_flight:
        while in_flight < LOGIN_WINDOW and started < n:
            s = socket.socket()
            s.setblocking(False)
            try:
                s.bind((source_address(started), 0))
                s.connect_ex(("127.0.0.1", port))
            except OSError as e:
                errors.error(f"session {started}: {e}")
                s.close()
                started += 1
                continue
            sel.register(s, selectors.EVENT_READ, IdleSession(s))
            started += 1
            in_flight += 1
        events = sel.select(timeout=120)
        if not events:
            errors.error(f"no reply for 120 s with {in_flight} logins in flight")
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            break
        for key, _ in events:
            sess = key.data
            try:
                data = sess.sock.recv(4096)
                if not data:
                    raise ConnectionError("connection closed")
                for line in final_replies(sess, data):
                    if not line.startswith(sess.state.encode()):
                        raise ConnectionError(f"expected {sess.state}, got {line.decode(errors='replace')}")
                    if sess.state == "230":
                        sel.unregister(sess.sock)
                        done.append(sess.sock)
                        in_flight -= 1
                        break
                    cmd, sess.state = send[sess.state]
                    sess.sock.send(cmd)
            except BlockingIOError:
                continue
            except OSError as e:
                errors.error(f"{type(e).__name__}: {e}")
                sel.unregister(sess.sock)
                sess.sock.close()
                in_flight -= 1
    sel.close()
    return done


def check_alive(socks, errors):
    """Every session answers NOOP with 200."""
    for s in socks:
        try:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"NOOP\r\n")
            buf = b""
            while b"\r\n" not in buf:
                b = s.recv(4096)
                if not b:
                    raise ConnectionError("connection closed")
                buf += b
            if not buf.startswith(b"200"):
                raise ConnectionError(f"NOOP answered {buf.decode(errors='replace').strip()}")
        except OSError as e:
            errors.error(f"{type(e).__name__}: {e}")


def fig_idle(binary, n, tmp, logdir):
    """Logged-in control connections held on a master alone (no slaves)."""
    port = free_port()
    conf = os.path.join(tmp, "idle-master.toml")
    with open(conf, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nlink_listen = "127.0.0.1:{free_port()}"\n'
                f'link_key = "{LINK_KEY}"\nstore = "{os.path.join(tmp, "idle-master.redb")}"\n'
                f'[[users]]\nname = "{USER}"\npassword = "{PASSWORD}"\n')
    raise_nofile()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < n + 100:
        log(f"  idle: only {soft} file descriptors for {n} sessions")
    m = Server("dftpd-idle-master", [binary, "master", "--config", conf], "master ready on", logdir)
    errors = Samples()
    socks = []
    try:
        time.sleep(1)
        base = rss_kib(m.pid)
        t0 = time.monotonic()
        socks = open_idle_sessions(port, n, errors)
        login_s = time.monotonic() - t0
        time.sleep(1)
        rss, peak = rss_kib(m.pid), rss_kib(m.pid, "VmHWM")
        time.sleep(4)
        later = rss_kib(m.pid)  # shows what was still settling at 1 s
        check_alive(socks, errors)
    finally:
        for s in socks:
            s.close()
        m.stop()
    ok = len(socks)
    per = (rss - base) / ok if ok else None
    log(f"  idle: {ok}/{n} sessions logged in in {login_s:.1f} s; RSS {base} -> {rss} KiB, 5 s after: {later} "
        f"KiB (peak {peak} KiB); {errors.errors} error(s)")
    failed = bool(errors.errors) or ok < n
    err = f" FAILED: {errors.errors} error(s), {ok}/{n} logged in, first: {errors.first_error}" if failed else ""
    ratio, goal = ("-", "<= 10 KiB")
    if per is not None:
        goal += ": met" if per <= 10 else ": NOT met"
    setup = "dftpd master alone, default password cost and per-address limit, 15 sessions per 127.0.X.Y"
    return [
        Row(f"idle sessions: master RSS per logged-in session, {n:,} sessions, {setup} (KiB)",
            (f"{per:.1f}" if per is not None else "no result") + err, "-", ratio, goal, failed),
        Row(f"idle sessions: master RSS before -> 1 s after {n:,} logins (5 s after; peak during them) (MiB)",
            f"{base / 1024:.1f} -> {rss / 1024:.1f} ({later / 1024:.1f}; peak {peak / 1024:.1f})",
            "-", "-", "-", failed),
        Row(f"idle sessions: time for {n:,} logins, {LOGIN_WINDOW} in flight (s; logins/s)",
            f"{login_s:.1f} ({ok / login_s:,.0f}/s)", "-", "-", "-", failed),
    ]


# --- file database (Rust benchmark) ----------------------------------------------

def filedb(files, quick):
    cmd = ["cargo", "run", "--quiet"] + ([] if quick else ["--release"]) + [
        "--example", "filedb", "--", "--files", str(files)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    vals = dict(re.findall(r"^(\w+)=(\S+)$", out, re.M))
    return (float(vals["rss_mb"]), float(vals["pret_p99_us"]), float(vals["remerge_s"]),
            float(vals["remerge_max_lock_hold_us"]))


def fig_db(sizes, quick):
    rows = []
    for n in sizes:
        rss_mb, p99, remerge, hold = filedb(n, quick)
        rows.append(Row(f"file database {n:,} files: master RSS (MB)", f"{rss_mb:,.2f}", goal="10M in < 2 GB"))
        rows.append(Row(f"file database {n:,} files: PRET p99 during remerge (us)", f"{p99:,.2f}", goal="< 1000 us"))
        rows.append(Row(f"file database {n:,} files: remerge of one slave (s)", f"{remerge:,.2f}"))
        rows.append(Row(f"file database {n:,} files: longest lock hold by remerge (us)", f"{hold:,.2f}"))
    return rows


# --- main ----------------------------------------------------------------------------

def human(n):
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024 // 1024
    return f"{os.cpu_count()} cores, {mem} GiB"


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def write_file(path, size, chunk):
    with open(path, "wb") as f:
        for _ in range(max(1, size // len(chunk))):
            f.write(chunk)


def table(rows):
    lines = ["| figure | dftpd | vsftpd | ratio | goal |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r.figure] + r.cells) + " |")
    return "\n".join(lines)


def write_results(text):
    header = (f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
              f"{machine()}\n\n")
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    old = open(path).read() if os.path.exists(path) else \
        "# Benchmark results\n\nNewest first. Produced by `bench/bench.py`.\n\n"
    head, _, rest = old.partition("## ")
    with open(path, "w") as f:
        f.write(head + header + text + "\n\n" + (("## " + rest) if rest else ""))
    log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description="dftpd vs vsftpd on loopback (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/dftpd"))
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; --quick: 2)")
    ap.add_argument("--duration-runs", type=int, help="runs of the fixed-duration small-file figure (default 3; "
                                                      "--quick: 1)")
    ap.add_argument("--record", metavar="DIR",
                    help="run dftpd with session recording into DIR to measure its cost")
    ap.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures: " + ", ".join(FIGURES))
    a = ap.parse_args()
    only = set(a.only.split(","))
    unknown = only - set(FIGURES)
    if unknown:
        sys.exit(f"unknown figure(s): {', '.join(sorted(unknown))} (known: {', '.join(FIGURES)})")
    quick = a.quick
    runs = a.runs or (2 if quick else 5)
    duration_runs = a.duration_runs or (1 if quick else 3)
    big = (4 << 20) if quick else (1 << 30)
    small_n, small_size, clients = (20 if quick else 300), 4096, 8
    duration = 2.0 if quick else 30.0
    idle_n = 200 if quick else 10000
    db_sizes = [20000] if quick else [1_000_000, 10_000_000]
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: run `cargo build --release` first (or pass --bin)")
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="dftpd-bench-")
    logdir = os.path.join(tmp, "logs")
    os.makedirs(logdir)
    if a.record:
        os.makedirs(a.record, exist_ok=True)
    rows = []
    started = time.monotonic()
    try:
        vroot = os.path.join(tmp, "vsftpd-root")
        os.makedirs(os.path.join(vroot, "small"))
        v = Vsftpd(vroot, logdir) if only & {"retr", "stor", "small", "cpu"} else None
        try:
            if only & {"retr", "stor", "relay"}:
                ddir = os.path.join(tmp, "dftpd-data")
                os.makedirs(os.path.join(ddir, "slave-1"))
                payload = os.path.join(tmp, "payload.bin")
                write_file(payload, big, os.urandom(1 << 20))
                for dest in (os.path.join(vroot, "big.bin"), os.path.join(ddir, "slave-1", "big.bin")):
                    shutil.copyfile(payload, dest)
                cl = DftpdCluster(a.bin, ddir, logdir, a.record)
                try:
                    if "retr" in only:
                        log("large RETR ...")
                        rows += fig_retr(cl, v, big, runs)
                    if "stor" in only:
                        log("large STOR ...")
                        rows += fig_stor(cl, v, payload, big, runs)
                    if "relay" in only:
                        log("relay ...")
                        rows += fig_relay(cl, payload, big, runs, ["retr", "stor"])
                finally:
                    cl.stop()
                for f in (payload, os.path.join(vroot, "big.bin")):
                    os.remove(f)
            if only & {"small", "cpu"}:
                log("small files ...")
                sroot = os.path.join(tmp, "site-slave-1")
                os.makedirs(os.path.join(sroot, "small"))
                names = [f"small/f{i:04}.bin" for i in range(small_n)]
                for name in names:
                    blob = os.urandom(small_size)
                    for base in (vroot, sroot):
                        with open(os.path.join(base, name), "wb") as f:
                            f.write(blob)
                site = DftpdSite(a.bin, tmp, logdir, sroot, a.record)
                try:
                    site.wait_files(names[-1])
                    time.sleep(1)  # let the slave's start-up work (remerge, scrub) finish
                    rows += fig_small(site, v, names, small_size, clients, runs, duration, duration_runs,
                                      "small" in only, "cpu" in only)
                finally:
                    site.stop()
        finally:
            if v:
                v.stop()
        if "idle" in only:
            log("idle sessions ...")
            rows += fig_idle(a.bin, idle_n, tmp, logdir)
        if "db" in only:
            log("file database ...")
            rows += fig_db(db_sizes, quick)
    finally:
        if sys.exc_info()[0] is not None or any(r.figure.startswith("FAILED") for r in rows):
            kept = tempfile.mkdtemp(prefix="dftpd-bench-logs-")
            shutil.copytree(logdir, kept, dirs_exist_ok=True)
            log(f"server logs kept in {kept}")
        shutil.rmtree(tmp, ignore_errors=True)

    text = table(rows)
    print(text)
    log(f"total time {time.monotonic() - started:.0f} s")
    if not quick and not a.no_results and only == set(FIGURES):
        write_results(text)
    if any(r.figure.startswith("FAILED") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
