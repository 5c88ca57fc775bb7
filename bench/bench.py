#!/usr/bin/env python3
"""Side-by-side benchmark: dftpd (loopback cluster) against Debian's vsftpd.

Usage: bench/bench.py [--quick] [--bin PATH] [--no-results]

Starts `dftpd cluster` and vsftpd (anonymous, its own temporary root and
port; installed with apt when absent), runs each figure against both,
alternating runs, prints one table (figure, dftpd, vsftpd, ratio, goal) and
writes it with date, commit and machine to bench/RESULTS.md. --quick uses
tiny sizes: a smoke test of the harness for CI, not a measurement.

Only loopback addresses are used.
"""

import argparse
import datetime
import ftplib
import io
import multiprocessing
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "bench", "bench"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ensure_vsftpd():
    path = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if os.path.exists(path):
        return path
    log("installing vsftpd with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "vsftpd"], check=True, env=env)
    return "/usr/sbin/vsftpd"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Vsftpd:
    def __init__(self, root):
        self.root = root
        self.port = free_port()
        os.makedirs(os.path.join(root, "up"), exist_ok=True)
        os.chmod(root, 0o755)
        os.chmod(os.path.join(root, "up"), 0o777)
        os.makedirs("/var/run/vsftpd/empty", exist_ok=True)
        conf = os.path.join(os.path.dirname(root), "vsftpd.conf")
        with open(conf, "w") as f:
            f.write(f"""listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
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
pasv_address=127.0.0.1
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
        self.proc = subprocess.Popen([ensure_vsftpd(), conf], stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Dftpd:
    def __init__(self, binary, data_dir, record=None):
        self.port = free_port()
        self.data_dir = data_dir
        extra = ["--record", record] if record else []
        self.proc = subprocess.Popen(
            [binary, "cluster", "--listen", f"127.0.0.1:{self.port}", "--data-dir", data_dir,
             "--user", f"{USER}:{PASSWORD}", "--passive-ports", "45000-49999"] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=raise_nofile)
        for line in self.proc.stdout:
            if line.startswith("cluster ready"):
                break
        else:
            raise RuntimeError("dftpd cluster did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def curl_time(args):
    out = subprocess.run(["curl", "-sS", "--max-time", "300", "-w", "%{time_total}"] + args,
                         check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def dftpd_curl(port, path, extra):
    return ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", f"{USER}:{PASSWORD}"] + extra + [
        f"ftp://127.0.0.1:{port}/{path}"]


def vsftpd_curl(port, path, extra):
    return extra + [f"ftp://127.0.0.1:{port}/{path}"]


# --- small files: 8 ftplib clients, one login each ----------------------------

def small_worker(args):
    port, names, pret, anonymous = args
    ftp = ftplib.FTP()
    ftp.trust_server_pasv_ipv4_address = True
    ftp.connect("127.0.0.1", port, timeout=60)
    if anonymous:
        ftp.login()
    else:
        ftp.login(USER, PASSWORD)
    ftp.voidcmd("TYPE I")
    total = 0
    for name in names:
        if pret:
            ftp.voidcmd(f"PRET RETR {name}")
        with ftp.transfercmd(f"RETR {name}") as conn:
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                total += len(b)
        ftp.voidresp()
    ftp.quit()
    return total


def small_files(port, names, size, clients, pret, anonymous):
    jobs = [(port, names, pret, anonymous) for _ in range(clients)]
    with multiprocessing.Pool(clients) as pool:
        t0 = time.perf_counter()
        totals = pool.map(small_worker, jobs)
        dt = time.perf_counter() - t0
    assert all(t == size * len(names) for t in totals), totals
    return clients * len(names) / dt


# --- idle sessions -----------------------------------------------------------

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_sessions(binary, n, tmp):
    """Logged-in control connections held on a master (no slaves needed)."""
    port = free_port()
    conf = os.path.join(tmp, "idle-master.toml")
    with open(conf, "w") as f:
        # Thousands of sessions from one address, each logging in: lift the
        # per-IP limit and make the password hash cheap (this measures
        # memory per session, not argon2).
        f.write(f'listen = "127.0.0.1:{port}"\nlink_listen = "127.0.0.1:0"\n'
                f'store = "{os.path.join(tmp, "idle-master.redb")}"\n'
                f'[guard]\nmax_sessions_per_ip = 0\n'
                f'[password_cost]\nmemory_kib = 64\niterations = 1\n'
                f'[[users]]\nname = "{USER}"\npassword = "{PASSWORD}"\n')
    proc = subprocess.Popen([binary, "master", "--config", conf], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, preexec_fn=raise_nofile)
    proc.stdout.readline()
    base = rss_kb(proc.pid)
    raise_nofile()
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
        def send_all(line):
            for s in socks:
                s.sendall(line)
        def read_all(code):
            for s in socks:
                buf = b""
                while b"\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("session closed")
                    buf += chunk
                assert buf.startswith(code), buf
        read_all(b"220")
        send_all(f"USER {USER}\r\n".encode())
        read_all(b"331")
        send_all(f"PASS {PASSWORD}\r\n".encode())
        read_all(b"230")
        time.sleep(0.5)
        rss = rss_kb(proc.pid)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait()
    return rss / 1024.0, base / 1024.0


# --- file database (Rust benchmark) -------------------------------------------

def filedb(files, quick):
    cmd = ["cargo", "run", "--quiet"] + ([] if quick else ["--release"]) + [
        "--example", "filedb", "--", "--files", str(files)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    vals = dict(re.findall(r"^(\w+)=(\S+)$", out, re.M))
    return (float(vals["rss_mb"]), float(vals["pret_p99_us"]), float(vals["remerge_s"]),
            float(vals["remerge_max_lock_hold_us"]))


# --- main ----------------------------------------------------------------------

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/dftpd"))
    ap.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record", metavar="DIR",
                    help="run dftpd with --record DIR (session recording on) to measure its cost")
    ap.add_argument("--only", default="retr,stor,small,idle,db",
                    help="comma-separated figures: retr, stor, small, idle, db")
    a = ap.parse_args()
    only = set(a.only.split(","))
    quick = a.quick
    runs = 1 if quick else a.runs
    big = (4 << 20) if quick else (1 << 30)
    small_n, small_size, clients = (20, 4096, 2) if quick else (300, 4096, 8)
    idle_n = 200 if quick else 10000
    db_sizes = [20000] if quick else [1_000_000, 10_000_000]
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: run `cargo build --release` first (or pass --bin)")
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="dftpd-bench-")
    rows = []
    try:
        vroot = os.path.join(tmp, "vsftpd-root")
        ddir = os.path.join(tmp, "dftpd-data")
        os.makedirs(vroot)
        os.makedirs(os.path.join(ddir, "slave-1"))
        payload = os.path.join(tmp, "payload.bin")
        with open(payload, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(big // len(chunk) or 1):
                f.write(chunk)
        for dest in (os.path.join(vroot, "big.bin"), os.path.join(ddir, "slave-1", "big.bin")):
            shutil.copyfile(payload, dest)
        os.makedirs(os.path.join(vroot, "small"))
        names = []
        for i in range(small_n):
            name = f"small/f{i:04}.bin"
            names.append(name)
            blob = os.urandom(small_size)
            for base in (vroot, os.path.join(ddir, f"slave-{1 + i % 3}")):
                os.makedirs(os.path.join(base, "small"), exist_ok=True)
                with open(os.path.join(base, name), "wb") as f:
                    f.write(blob)
        v = Vsftpd(vroot)
        d = Dftpd(a.bin, ddir, a.record)
        try:
            if "retr" in only:
                # Warm the page cache and both servers.
                curl_time(dftpd_curl(d.port, "big.bin", ["-o", "/dev/null"]))
                curl_time(vsftpd_curl(v.port, "big.bin", ["-o", "/dev/null"]))
                dr, vr = [], []
                for _ in range(runs):
                    dr.append(big / curl_time(dftpd_curl(d.port, "big.bin", ["-o", "/dev/null"])))
                    vr.append(big / curl_time(vsftpd_curl(v.port, "big.bin", ["-o", "/dev/null"])))
                rows.append(("large RETR (GB/s)", statistics.median(dr) / 1e9, statistics.median(vr) / 1e9,
                             ">= 1.0x"))
            if "stor" in only:
                ds, vs = [], []
                for i in range(runs):
                    ds.append(big / curl_time(dftpd_curl(d.port, f"up{i}.bin", ["-T", payload])))
                    vs.append(big / curl_time(vsftpd_curl(v.port, f"up/up{i}.bin", ["-T", payload])))
                rows.append(("large STOR (GB/s)", statistics.median(ds) / 1e9, statistics.median(vs) / 1e9,
                             ">= 0.9x"))
            if "small" in only:
                df, vf = [], []
                for _ in range(runs):
                    df.append(small_files(d.port, names, small_size, clients, True, False))
                    vf.append(small_files(v.port, names, small_size, clients, False, True))
                rows.append((f"small files ({small_n}x4KiB, {clients} clients, files/s)", statistics.median(df),
                             statistics.median(vf), ">= 1.0x"))
        finally:
            d.stop()
            v.stop()
        if "idle" in only:
            rss, base = idle_sessions(a.bin, idle_n, tmp)
            rows.append((f"idle sessions: master RSS for {idle_n} (MB)", rss, None, "< 100 MB for 10,000"))
        for n in (db_sizes if "db" in only else []):
            rss_mb, p99, remerge, hold = filedb(n, quick)
            rows.append((f"file database {n:,} files: master RSS (MB)", rss_mb, None, "10M in < 2 GB"))
            rows.append((f"file database {n:,} files: PRET p99 during remerge (us)", p99, None, "< 1000 us"))
            rows.append((f"file database {n:,} files: remerge of one slave (s)", remerge, None, "-"))
            rows.append((f"file database {n:,} files: longest lock hold by remerge (us)", hold, None, "-"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["| figure | dftpd | vsftpd | ratio | goal |", "|---|---|---|---|---|"]
    for name, dv, vv, goal in rows:
        ratio = f"{dv / vv:.2f}x" if vv else "-"
        vtxt = f"{vv:,.2f}" if vv is not None else "-"
        lines.append(f"| {name} | {dv:,.2f} | {vtxt} | {ratio} | {goal} |")
    table = "\n".join(lines)
    print(table)
    if not quick and not a.no_results and only == {"retr", "stor", "small", "idle", "db"}:
        header = (f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
                  f"{machine()}\n\n")
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        old = open(path).read() if os.path.exists(path) else "# Benchmark results\n\nNewest first. Produced by `bench/bench.py`.\n\n"
        head, _, rest = old.partition("## ")
        with open(path, "w") as f:
            f.write(head + header + table + "\n\n" + (("## " + rest) if rest else ""))
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
