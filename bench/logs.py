#!/usr/bin/env python3
"""Throughput of captured output to a log file with rotation: one program printing N numbered
100-byte lines as fast as its pipe takes them (bench/lines.c), under drover ([program.x.log]
file, max_size, backups), supervisord (stdout_logfile, stdout_logfile_maxbytes,
stdout_logfile_backups) and PM2 (out_file; PM2 itself does not rotate: that is the
pm2-logrotate module, not installed here).

    python3 bench/logs.py [--lines 1000000] [--max-size-mib 10] [--backups 30] [--runs 3]

"time" runs from the printer's start (once the supervisor runs it, it waits for a go, then writes
CLOCK_REALTIME to a file and prints) to the
moment its last line is in the supervisor's current log file (polled every 5 ms); lines/s and
MB/s are N and N x 100 bytes over it (the printer's bytes: drover adds a timestamp and the
worker's label to each line, so it writes ~30% more). "CPU" is the supervisor's own time
(utime + stime of every thread, /proc/PID/stat; 10 ms ticks) at that moment, minus its time
before the go. The files are then read back: every line must be whole (a number and its 88
x's, nothing torn) and every number there once; backups are chosen so nothing is rotated away.

drover: target/release/drover (or $DROVER_BIN); supervisord: $BENCH_VENV/supervisord (default
bench/.venv/bin); PM2: $PM2_BIN (default bench/node_modules/.bin/pm2). A missing peer is
SKIPPED.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import BENCH, DROVER, VENV, children, wait_for  # noqa: E402

PEER_VENV = os.environ.get("BENCH_VENV", VENV)
PM2 = os.environ.get("PM2_BIN", os.path.join(BENCH, "node_modules", ".bin", "pm2"))
LINES_BIN = os.path.join(BENCH, ".build", "lines")
LINE = re.compile(rb"(\d{10}) x{88}$")
TICK = os.sysconf("SC_CLK_TCK")


def build_printer():
    src = os.path.join(BENCH, "lines.c")
    if not os.access(LINES_BIN, os.X_OK) or os.path.getmtime(LINES_BIN) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(LINES_BIN), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", LINES_BIN, src], check=True)


def cpu_s(pid):
    """utime + stime of the whole process (its threads, live and ended), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def last_number(path):
    """The number on the last whole line of `path`, or -1."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError:
        return -1
    lines = tail.split(b"\n")
    for line in reversed(lines[:-1]):
        m = LINE.search(line)
        if m:
            return int(m.group(1))
    return -1


def check(files, n):
    """(whole lines, torn lines, numbers missing, numbers twice) over every kept file."""
    seen = bytearray(n)
    whole = torn = twice = 0
    for p in files:
        with open(p, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):
            if not line:
                continue
            m = LINE.search(line)
            if not m or line.count(b"x" * 88) != 1:
                torn += 1
                continue
            i = int(m.group(1))
            if i >= n:
                torn += 1
                continue
            whole += 1
            if seen[i]:
                twice += 1
            seen[i] = 1
    return whole, torn, n - sum(seen), twice


class Run:
    def __init__(self, kind, n, max_size, backups):
        self.kind, self.n, self.max_size, self.backups = kind, n, max_size, backups
        self.tmp = tempfile.mkdtemp(prefix=f"bench-logs-{kind}-")
        self.log = os.path.join(self.tmp, "x.log")
        self.started = os.path.join(self.tmp, "started")
        self.waiting = os.path.join(self.tmp, "waiting")
        self.go = os.path.join(self.tmp, "go")
        self.cmd = [LINES_BIN, str(n), self.started, self.waiting, self.go]
        self.proc = None
        self.pid = None

    def start(self):
        out = open(os.path.join(self.tmp, "supervisor.out"), "w")
        env = dict(os.environ)
        if self.kind == "drover":
            conf = os.path.join(self.tmp, "drover.toml")
            with open(conf, "w") as f:
                f.write(
                    '[supervisor]\nstatus = "off"\nhistory = "0s"\n'
                    f'[program.x]\ncommand = {json.dumps(self.cmd)}\n'
                    f'[program.x.log]\nfile = "{self.log}"\nmax_size = "{self.max_size}"\n'
                    f"backups = {self.backups}\n"
                )
            self.proc = subprocess.Popen([DROVER, "run", "-c", conf], stdout=out, stderr=out,
                                         start_new_session=True)
            self.pid = self.proc.pid
        elif self.kind == "supervisord":
            conf = os.path.join(self.tmp, "supervisord.conf")
            with open(conf, "w") as f:
                f.write(
                    f"[supervisord]\nnodaemon=true\nlogfile={self.tmp}/supervisord.log\n"
                    f"pidfile={self.tmp}/supervisord.pid\n"
                    f"[program:x]\ncommand={' '.join(self.cmd)}\nredirect_stderr=true\n"
                    f"stdout_logfile={self.log}\nstdout_logfile_maxbytes={self.max_size}\n"
                    f"stdout_logfile_backups={self.backups}\n"
                )
            self.proc = subprocess.Popen([os.path.join(PEER_VENV, "supervisord"), "-c", conf],
                                         stdout=out, stderr=out, start_new_session=True)
            self.pid = self.proc.pid
        else:
            env["PM2_HOME"] = os.path.join(self.tmp, "pm2")
            eco = os.path.join(self.tmp, "ecosystem.config.js")
            app = {"name": "x", "script": self.cmd[0], "args": self.cmd[1:], "interpreter": "none",
                   "exec_mode": "fork", "autorestart": False, "out_file": self.log,
                   "error_file": os.path.join(self.tmp, "x.err.log")}
            with open(eco, "w") as f:
                f.write("module.exports = " + json.dumps({"apps": [app]}) + ";\n")
            subprocess.run([PM2, "start", eco], env=env, stdout=out, stderr=subprocess.STDOUT,
                           timeout=60, check=True, start_new_session=True)
            self.pid = int(wait_for(lambda: _read(os.path.join(env["PM2_HOME"], "pm2.pid")), "PM2 pid"))
        self.env = env
        return self

    def measure(self):
        # the supervisor's CPU before the printer prints: its own start-up is not the stream's
        wait_for(lambda: os.path.exists(self.waiting), "the printer to run", 60)
        cpu0 = cpu_s(self.pid)
        open(self.go, "w").close()
        t0 = float(wait_for(lambda: _read(self.started), "the printer's start time"))
        wait_for(lambda: last_number(self.log) == self.n - 1, "the last line in the file", 600, 0.005)
        took = time.time() - t0
        cpu = cpu_s(self.pid) - cpu0
        files = [self.log] + sorted(glob.glob(self.log + ".*"))
        return took, cpu, files

    def stop(self):
        if self.kind == "pm2":
            subprocess.run([PM2, "kill"], env=self.env, capture_output=True, timeout=60)
        # the printer may have a process group of its own (supervisord's children do)
        for pid in children(self.pid) + [self.pid]:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except OSError:
                pass
        if self.proc:
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--max-size-mib", type=int, default=10)
    ap.add_argument("--backups", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    build_printer()
    kinds = []
    if os.access(DROVER, os.X_OK):
        kinds.append("drover")
    else:
        print(f"SKIPPED drover: {DROVER} is missing (cargo build --release)")
    if os.access(os.path.join(PEER_VENV, "supervisord"), os.X_OK):
        kinds.append("supervisord")
    else:
        print(f"SKIPPED supervisord: not found in {PEER_VENV} (bash bench/setup.sh, or BENCH_VENV=...)")
    if os.access(PM2, os.X_OK):
        kinds.append("pm2")
    else:
        print(f"SKIPPED PM2: {PM2} is missing (bash bench/setup.sh, or PM2_BIN=...)")
    mib = a.max_size_mib
    sizes = {"drover": f"{mib}MiB", "supervisord": f"{mib * 1024 * 1024}", "pm2": None}
    print(f"{a.lines} lines of 100 bytes, rotated at {mib} MiB with {a.backups} backups; "
          f"{a.runs} runs, median (min-max)\n")
    print("| supervisor | lines/s | MB/s (printer's bytes) | supervisor CPU s | files | whole lines | torn | lost | doubled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        rows = []
        for _ in range(a.runs):
            r = Run(kind, a.lines, sizes[kind], a.backups).start()
            try:
                took, cpu, files = r.measure()
                rows.append((took, cpu, len(files), check(files, a.lines)))
            finally:
                r.stop()
        took = [x[0] for x in rows]
        lps = [a.lines / t for t in took]
        mbs = [a.lines * 100 / t / 1e6 for t in took]
        cpu = [x[1] for x in rows]
        whole, torn, lost, twice = rows[-1][3]
        name = {"pm2": "PM2 (out_file, no rotation)"}.get(kind, kind)

        def fmt(xs, p):
            return f"{statistics.median(xs):,.{p}f} ({min(xs):,.{p}f}-{max(xs):,.{p}f})"

        print(f"| {name} | {fmt(lps, 0)} | {fmt(mbs, 1)} | {fmt(cpu, 2)} | {rows[-1][2]} | "
              f"{whole} | {torn} | {lost} | {twice} |")


if __name__ == "__main__":
    main()
