#!/usr/bin/env python3
"""Following output must not starve the status thread or slow respawns (issue 21).

    python3 bench/follow.py [--bin target/release/drover] [--kills 25] [--probes 400]

One drover runs two programs: `flood`, printing as fast as it can (`yes` with an 80-byte line,
drover's stdout going to /dev/null), and `victim`, a `sleep` worker. Twice, first with no
follower, then with 100 clients following `GET /programs/flood/logs?follow=1` (read by one
thread with a selector, as fast as they come) plus 1 stalled follower (connects, asks, never
reads):

- respawn: SIGKILL the victim worker (up 1.2 s, past its reset_after: restarted at once) -> a new
  pid in /status (polled every 2 ms), median and p95 over --kills kills
- healthz: /healthz latency over --probes requests (one connection each, 5 ms apart), p50/p99
- skipped: how many lines the followers were told they skipped (drover_log_follow_skipped_total)
"""
import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[supervisor]
status = "127.0.0.1:0"
on_exhausted = "stay"
[program.flood]
command = "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678"
[program.victim]
command = "sleep 100000"
backoff = { initial = "100ms", max = "1s", reset_after = "1s" }
"""


def get(addr, path, timeout=5.0):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n".encode())
    buf = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        buf += b
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


class Drover:
    def __init__(self, binary):
        self.tmp = tempfile.mkdtemp(prefix="bench-follow-")
        conf = os.path.join(self.tmp, "drover.toml")
        open(conf, "w").write(CONFIG)
        self.err = os.path.join(self.tmp, "err.log")
        self.proc = subprocess.Popen([os.path.abspath(binary), "run", "-c", conf], cwd=self.tmp,
                                     stdout=subprocess.DEVNULL, stderr=open(self.err, "w"),
                                     start_new_session=True)
        end = time.time() + 30
        while True:
            m = re.search(r"status endpoint on ([0-9.:]+)", open(self.err).read())
            if m:
                self.addr = m.group(1)
                break
            if time.time() > end:
                raise SystemExit("drover did not start: " + open(self.err).read()[-2000:])
            time.sleep(0.05)
        while self.victim() is None:
            time.sleep(0.05)

    def status(self):
        return json.loads(get(self.addr, "/status")[1])

    def victim(self):
        for p in self.status()["programs"]:
            if p["name"] == "victim":
                w = p["workers"][0] if p["workers"] else None
                # spawned is what counts (ready comes 1 s later, by the default readiness)
                return w["pid"] if w else None
        return None

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def respawns(d, kills):
    out = []
    for _ in range(kills):
        old = d.victim()
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        while True:
            pid = d.victim()
            if pid is not None and pid != old:
                out.append((time.perf_counter() - t0) * 1000)
                break
            time.sleep(0.002)
        # up longer than reset_after: the next kill is of a stable worker, restarted at once
        time.sleep(1.2)
    return out


def healthz(d, probes):
    out = []
    for _ in range(probes):
        t0 = time.perf_counter()
        code, _ = get(d.addr, "/healthz")
        out.append((time.perf_counter() - t0) * 1000)
        if code != 200:
            out[-1] = float("inf")
        time.sleep(0.005)
    return out


class Followers:
    """n followers read by one thread, and one stalled follower."""

    def __init__(self, addr, n):
        host, port = addr.rsplit(":", 1)
        req = f"GET /programs/flood/logs?n=0&follow=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode()
        self.sel = selectors.DefaultSelector()
        self.socks = []
        for _ in range(n):
            s = socket.create_connection((host, int(port)))
            s.sendall(req)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ)
            self.socks.append(s)
        self.stalled = socket.create_connection((host, int(port)))
        self.stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.stalled.sendall(req)
        self.bytes = 0
        self.running = True
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        while self.running:
            for key, _ in self.sel.select(0.1):
                try:
                    b = key.fileobj.recv(262144)
                except BlockingIOError:
                    continue
                if not b:
                    self.sel.unregister(key.fileobj)
                self.bytes += len(b)

    def close(self):
        self.running = False
        self.t.join()
        for s in self.socks + [self.stalled]:
            s.close()


def metric(d, name):
    _, body = get(d.addr, "/metrics")
    total = 0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "drover"))
    ap.add_argument("--kills", type=int, default=25)
    ap.add_argument("--probes", type=int, default=400)
    ap.add_argument("--followers", type=int, default=100)
    a = ap.parse_args()
    rows = []
    for n in (0, a.followers):
        d = Drover(a.bin)
        f = Followers(d.addr, n) if n else None
        time.sleep(1)
        try:
            r = respawns(d, a.kills)
            h = healthz(d, a.probes)
            got = f.bytes if f else 0
            skipped = metric(d, "drover_log_follow_skipped_total")
            lines = metric(d, "drover_log_lines_total")
        finally:
            if f:
                f.close()
            d.stop()
        rows.append((n, r, h, got, skipped, lines))
    print(f"{'followers':>12} {'respawn p50':>12} {'p95':>8} {'healthz p50':>12} {'p99':>8} {'max':>8} "
          f"{'lines':>10} {'read MiB':>9} {'skipped':>10}")
    for n, r, h, got, skipped, lines in rows:
        label = f"{n}+1 stalled" if n else "0"
        print(f"{label:>12} {statistics.median(r):>10.1f}ms {pct(r, 95):>6.1f}ms "
              f"{statistics.median(h):>10.2f}ms {pct(h, 99):>6.2f}ms {max(h):>6.1f}ms "
              f"{lines:>10} {got / 2**20:>9.1f} {skipped:>10}")


if __name__ == "__main__":
    sys.exit(main())
