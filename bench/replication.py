#!/usr/bin/env python3
"""Replication benchmark (issue 15), on loopback.

Usage: bench/replication.py [--quick] [--bin PATH] [--runs N] [--no-results]

1. Repair throughput: files already on slave-1's disk, a cluster started
   with `--copies 2`: the time until slave-2's disk holds every file (each
   copied slave to slave, checked and committed), beside `cp -r` of the same
   files on the same disk. Large files (GB/s) and 4 KiB files (files/s),
   with the default copy rate cap (`rate_per_slave`, 200 MiB/s) and without
   it (`--copy-rate 0`, what README suggests when repair speed matters).
2. The cost of `sync_copies = 2` on STOR throughput (curl, PRET), beside
   `sync_copies = 1`, same cluster size (3 slaves, copies = 2).

Prints a table and appends it to bench/RESULTS.md with date and commit.
--quick uses tiny sizes: a smoke test of the harness, not a measurement.
Only loopback addresses are used.
"""

import argparse
import datetime
import os
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


def write_files(root, count, size, prefix):
    os.makedirs(root, exist_ok=True)
    chunk = os.urandom(min(size, 1 << 20))
    for i in range(count):
        with open(os.path.join(root, f"{prefix}{i}"), "wb") as f:
            left = size
            while left > 0:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n


def tree_done(root, want):
    """Whether `root` holds every (relative path, size) of `want`."""
    for rel, size in want.items():
        try:
            if os.path.getsize(os.path.join(root, rel)) != size:
                return False
        except OSError:
            return False
    return True


def listing(root):
    out = {}
    for d, _, files in os.walk(root):
        if ".dftpd-tmp" in d:
            continue
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


class Cluster:
    def __init__(self, binary, data_dir, slaves, extra):
        self.port = free_port()
        args = [
            binary, "cluster", "--listen", f"127.0.0.1:{self.port}",
            "--slaves", str(slaves), "--data-dir", data_dir,
            "--user", f"{USER}:{PASSWORD}", "--no-admin",
            "--passive-ports", "0",
        ] + extra
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("cluster exited before it was ready")
            if line.startswith("cluster ready"):
                self.ready_at = time.monotonic()
                return
        raise RuntimeError("cluster not ready in time")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def repair_run(binary, tmp, count, size, extra):
    """Seconds from cluster ready to every file on slave-2 (and cp's)."""
    data = tempfile.mkdtemp(dir=tmp)
    src = os.path.join(data, "slave-1", "d")
    write_files(src, count, size, "f")
    want = {os.path.join("d", k): v for k, v in listing(src).items()}
    # cp of the same files on the same disk (page cache warm for both).
    dst = os.path.join(data, "cp-copy")
    t = time.monotonic()
    subprocess.run(["cp", "-r", "--reflink=never", src, dst], check=True)
    cp_secs = time.monotonic() - t
    shutil.rmtree(dst)
    c = Cluster(binary, data, 2, ["--copies", "2"] + extra)
    target = os.path.join(data, "slave-2")
    try:
        deadline = time.monotonic() + 3600
        while not tree_done(target, want):
            if time.monotonic() > deadline:
                raise RuntimeError("repair did not finish")
            time.sleep(0.005)
        secs = time.monotonic() - c.ready_at
    finally:
        c.stop()
        shutil.rmtree(data, ignore_errors=True)
    return secs, cp_secs


def stor_run(binary, tmp, path, sync):
    data = tempfile.mkdtemp(dir=tmp)
    c = Cluster(
        binary, data, 3, ["--copies", "2", "--sync-copies", str(sync)]
    )
    try:
        t = time.monotonic()
        r = subprocess.run(
            ["curl", "-sS", "--ftp-pret", "--no-ftp-skip-pasv-ip",
             "-u", f"{USER}:{PASSWORD}", "-T", path,
             f"ftp://127.0.0.1:{c.port}/up.bin"],
            capture_output=True, text=True,
        )
        secs = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"curl: {r.stderr}")
    finally:
        c.stop()
        shutil.rmtree(data, ignore_errors=True)
    return secs


def median_spread(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "dftpd"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-results", action="store_true")
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        subprocess.run(["cargo", "build", "--release", "--bin", "dftpd"], cwd=ROOT, check=True)
    large = (2, 8 << 20) if a.quick else (2, 512 << 20)
    small = (100, 4096) if a.quick else (2000, 4096)
    stor_size = (16 << 20) if a.quick else (1 << 30)
    runs = 1 if a.quick else a.runs
    tmp = tempfile.mkdtemp(prefix="dftpd-bench-repl-")
    rows = []
    try:
        for label, extra in [("default cap", []), ("no cap", ["--copy-rate", "0"])]:
            n, size = large
            res = [repair_run(a.bin, tmp, n, size, extra) for _ in range(runs)]
            gbs = [n * size / s / 1e9 for s, _ in res]
            cps = [n * size / c / 1e9 for _, c in res]
            m, lo, hi = median_spread(gbs)
            rows.append((f"repair, {n} x {size >> 20} MiB, {label} (GB/s)", m, lo, hi,
                         statistics.median(cps), "cp -r, same disk"))
            log(rows[-1])
            n, size = small
            res = [repair_run(a.bin, tmp, n, size, extra) for _ in range(runs)]
            fps = [n / s for s, _ in res]
            cps = [n / c for _, c in res]
            m, lo, hi = median_spread(fps)
            rows.append((f"repair, {n} x 4 KiB, {label} (files/s)", m, lo, hi,
                         statistics.median(cps), "cp -r, same disk"))
            log(rows[-1])
        src = os.path.join(tmp, "upload.bin")
        write_files(tmp, 1, stor_size, "upload.bin-")
        os.rename(os.path.join(tmp, "upload.bin-0"), src)
        per = {1: [], 2: []}
        for _ in range(runs):
            for sync in (1, 2):
                per[sync].append(stor_size / stor_run(a.bin, tmp, src, sync) / 1e9)
        base = statistics.median(per[1])
        for sync in (1, 2):
            m, lo, hi = median_spread(per[sync])
            rows.append((f"STOR {stor_size >> 20} MiB, copies=2, sync_copies={sync} (GB/s)",
                         m, lo, hi, base, "sync_copies=1"))
            log(rows[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = ["| figure | dftpd (median) | spread | beside | what |", "|---|---|---|---|---|"]
    for fig, m, lo, hi, other, what in rows:
        table.append(f"| {fig} | {m:,.2f} | {lo:,.2f} - {hi:,.2f} | {other:,.2f} | {what} |")
    text = "\n".join(table)
    print(text)
    if a.quick or a.no_results:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"\n## Replication, {when}, commit {commit}, {os.cpu_count()} cores "
            f"({runs} runs each; bench/replication.py)\n\n")
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    with open(path) as f:
        old = f.read()
    marker = "Newest first. Produced by `bench/bench.py`.\n"
    if marker in old:
        new = old.replace(marker, marker + head + text + "\n", 1)
    else:
        new = old + head + text + "\n"
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
