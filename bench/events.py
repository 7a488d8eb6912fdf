#!/usr/bin/env python3
"""GET /events: how soon a SIGKILLed worker's exit is on the stream, and whether 100 streams
and a stalled one cost the loop (respawn latency) or the status thread (/healthz) anything.

    cargo build --release
    python3 bench/events.py [--kills 30] [--clients 100] [--seconds 30] [--rounds 3]

(a) A stable worker is SIGKILLed; the figure runs from just before kill(2) to the moment the
    `worker_exited` event carrying its pid has been read off /events by a client (one line
    reader on a thread of its own).
(b) Respawn latency (kill(2) -> the replacement's first action after exec, a stamp the C worker
    writes, as bench/bench.py respawn measures it) and /healthz p50/p99 (a new connection every
    5 ms) while a second program churns (4 workers that exit every 1.2 s), once with no event
    client and once with N clients reading /events plus one that connects and never reads;
    `--rounds` alternates the two conditions (kills and seconds split across rounds).

Loopback only. drover and its workers are stopped by pid (its process group) at the end of
each part. Results are printed as Markdown tables.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import pct, stamps_of  # noqa: E402
from peers import alive, stop_group as stop, wait_for  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROVER = os.path.join(ROOT, "target", "release", "drover")


def stamp_binary(tmp):
    out = os.path.join(tmp, "stamp")
    subprocess.run(["cc", "-O2", "-o", out, os.path.join(ROOT, "bench", "stamp.c")], check=True)
    return out


def start(tmp, stamp, stamps, churn):
    conf = os.path.join(tmp, "drover.toml")
    lines = [
        "[supervisor]", 'status = "127.0.0.1:0"', 'history = "0s"',
        "[program.web]", "command = " + json.dumps([stamp, stamps]), "workers = 2",
        'backoff = { initial = "100ms", max = "30s", reset_after = "1s" }',
    ]
    if churn:
        lines += ["[program.churn]", 'command = ["sleep", "1.2"]', "workers = 4",
                  'backoff = { initial = "100ms", max = "30s", reset_after = "1s" }']
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    log = open(os.path.join(tmp, "drover.log"), "w")
    proc = subprocess.Popen([DROVER, "run", "-c", conf], cwd=tmp, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)

    def addr():
        m = re.search(r"status endpoint on ([0-9.]+):(\d+)", open(os.path.join(tmp, "drover.log")).read())
        return m and (m.group(1), int(m.group(2)))
    return proc, wait_for(addr, "drover's status address")


def get(addr, path):
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return buf.split(b"\r\n\r\n", 1)[1].decode()


def open_stream(addr, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(addr)
    s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    return s


class Reader(threading.Thread):
    """Reads one /events stream; notes when each worker_exited line for a pid arrived."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.sock = open_stream(addr)
        self.exits = {}
        self.started = []
        self.cond = threading.Condition()

    def run(self):
        f = self.sock.makefile("rb")
        for line in f:
            t = time.perf_counter()
            if line.startswith(b"data: "):
                v = json.loads(line[6:])
                with self.cond:
                    if v["type"] == "worker_exited":
                        self.exits[v["pid"]] = t
                    elif v["type"] == "worker_started" and v["program"] == "web":
                        self.started.append((t, v["pid"]))
                    self.cond.notify_all()


def kill_stable(stamps, stable=1.2):
    """SIGKILL a web worker up for at least `stable` s; returns (pid, perf t0, wall t0, stamps before)."""
    def pick():
        live = [(t, pid) for pid, t in stamps_of(stamps) if alive(pid)]
        return live and max(live)
    t_start, victim = wait_for(pick, "a live web worker", 60)
    time.sleep(max(0.0, stable - (time.time() - t_start)))
    n = len(stamps_of(stamps))
    t0, w0 = time.perf_counter(), time.time()
    os.kill(victim, signal.SIGKILL)
    return victim, t0, w0, n


def part_a(stamp, kills):
    tmp = tempfile.mkdtemp(prefix="drover-events-a-")
    stamps = os.path.join(tmp, "stamps")
    proc, addr = start(tmp, stamp, stamps, churn=False)
    lat = []
    try:
        r = Reader(addr)
        r.start()
        for _ in range(kills):
            victim, t0, _, n = kill_stable(stamps)
            with r.cond:
                r.cond.wait_for(lambda: victim in r.exits, 10)
                if victim not in r.exits:
                    raise SystemExit(f"no worker_exited for pid {victim} within 10 s")
                lat.append((r.exits[victim] - t0) * 1000)
            wait_for(lambda: len(stamps_of(stamps)) > n, "the replacement", 30)
    finally:
        stop(proc)
    return lat


def part_b(stamp, kills, clients, seconds):
    tmp = tempfile.mkdtemp(prefix="drover-events-b-")
    stamps = os.path.join(tmp, "stamps")
    proc, addr = start(tmp, stamp, stamps, churn=True)
    socks, respawn, probes = [], [], []
    stop_reading = threading.Event()
    try:
        wait_for(lambda: len(stamps_of(stamps)) >= 2, "2 web workers", 30)
        sel = selectors.DefaultSelector()
        for _ in range(clients):
            s = open_stream(addr)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        if clients:
            socks.append(open_stream(addr, rcvbuf=1024))  # the stalled one: never read

        def drain():
            while not stop_reading.is_set():
                for key, _ in sel.select(0.1):
                    try:
                        key.fileobj.recv(65536)
                    except OSError:
                        pass
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        want = clients + (1 if clients else 0)
        wait_for(lambda: re.search(r"^drover_events_streams (\d+)", get(addr, "/metrics"), re.M)
                 and int(re.search(r"^drover_events_streams (\d+)", get(addr, "/metrics"), re.M).group(1)) >= want,
                 f"{want} streams open", 30, 0.05)
        done = threading.Event()

        def probe_loop():
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    with socket.create_connection(addr, timeout=2) as s:
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                        buf = b""
                        while chunk := s.recv(4096):
                            buf += chunk
                    ok = buf.startswith(b"HTTP/1.1 200")
                except OSError:
                    ok = False
                probes.append(((time.perf_counter() - t0) * 1000, ok))
                time.sleep(max(0.0, 0.005 - (time.perf_counter() - t0)))
        prober = threading.Thread(target=probe_loop, daemon=True)
        prober.start()
        end = time.time() + seconds
        while len(respawn) < kills or time.time() < end:
            victim, _, w0, n = kill_stable(stamps)
            new = wait_for(lambda: (lambda s: s[n:] if len(s) > n else None)(stamps_of(stamps)),
                           "the replacement", 30, 0.001)
            respawn.append((new[0][1] - w0) * 1000)
        done.set()
        prober.join()
        metrics = get(addr, "/metrics")
        events = sum(int(m) for m in re.findall(r"^drover_events_total\{[^}]*\} (\d+)", metrics, re.M))
        dropped = int(re.search(r"^drover_events_dropped_clients_total (\d+)", metrics, re.M).group(1))
    finally:
        stop_reading.set()
        for s in socks:
            s.close()
        stop(proc)
    return respawn, probes, events, dropped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not os.path.exists(DROVER):
        raise SystemExit(f"{DROVER} is missing: cargo build --release first")
    tmp = tempfile.mkdtemp(prefix="drover-events-stamp-")
    stamp = stamp_binary(tmp)
    lat = part_a(stamp, a.kills)
    print(f"\n### SIGKILL -> worker_exited read off /events ({len(lat)} kills, ms)\n")
    print("| median | p99 | min | max |\n|---|---|---|---|")
    print(f"| {statistics.median(lat):.2f} | {pct(lat, 0.99):.2f} | {min(lat):.2f} | {max(lat):.2f} |")
    print(f"\n### Respawn and /healthz with a program churning (4 workers exiting every 1.2 s)\n")
    print(f"{a.rounds} rounds of each condition, alternating (a busy machine's drift hits both); load average before: "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| /events clients | kills | respawn median / p95 (ms) | /healthz probes | p50 / p99 / max (ms) | failed | events | dropped clients |")
    print("|---|---|---|---|---|---|---|---|")
    acc = {c: ([], [], 0, 0) for c in (0, a.clients)}
    for _ in range(a.rounds):
        for clients in (0, a.clients):
            respawn, probes, events, dropped = part_b(stamp, a.kills // a.rounds, clients, a.seconds / a.rounds)
            r, p, e, d = acc[clients]
            acc[clients] = (r + respawn, p + probes, e + events, d + dropped)
    for clients, (respawn, probes, events, dropped) in acc.items():
        ms = [p[0] for p in probes]
        failed = sum(1 for p in probes if not p[1])
        who = f"{clients} + 1 stalled" if clients else "0"
        print(f"| {who} | {len(respawn)} | {statistics.median(respawn):.2f} / {pct(respawn, 0.95):.2f} | {len(probes)} | "
              f"{statistics.median(ms):.2f} / {pct(ms, 0.99):.2f} / {max(ms):.2f} | {failed} | {events} | {dropped} |")

if __name__ == "__main__":
    main()
