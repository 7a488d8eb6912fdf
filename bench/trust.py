#!/usr/bin/env python3
"""The hardening's cost and effect (issue 18), one drover build beside another in one run.

    python3 bench/trust.py all --old OLD_BIN [--new NEW_BIN]
    python3 bench/trust.py respawn | status | fork | flood --old OLD_BIN

OLD_BIN is a drover built from before the change (e.g. `git worktree add /tmp/old b0fc773 &&
cargo build --release` there); NEW_BIN defaults to target/release/drover. Runs alternate
between the two builds, so a busy moment of this shared machine hits both alike.

- respawn: a stable worker SIGKILLed -> its replacement's first action after exec (the C stamp
  worker of bench/setup.sh), median and p95 over many kills
- status:  /status and /healthz latency at 100 workers (wrk, one connection, back to back)
- fork:    /healthz latency while a preloader never answers a fork request (a hung
  pthread_atfork handler), and how long a killed worker of another program takes to come back
- flood:   a 10 s datagram flood on NOTIFY_SOCKET by a process that is not a worker: drover's
  RSS before and after, its CPU during and in the 10 s after, and how long a real READY=1 sent
  mid-flood takes to count
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from bench import RESULTS, pct, run_peer, stamps_of, table, ticks, wrk  # noqa: E402
from peers import BENCH, ROOT, Drover, alive, wait_for  # noqa: E402

FAKE = os.path.join(ROOT, "tests", "fixtures", "fake_preloader.py")
HZ = os.sysconf("SC_CLK_TCK")


def save(metric, data):
    """Into bench/results/latest.json beside the peers' figures (without their versions: this
    compares drover with itself)."""
    try:
        allr = json.load(open(RESULTS))
    except (OSError, ValueError):
        allr = {}
    allr[metric] = data
    allr["updated"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    json.dump(allr, open(RESULTS, "w"), indent=1)


def use(binary):
    """Make the peers' Drover class start this build."""
    peers.DROVER = binary


def label(binary, builds):
    return "before" if binary == builds["old"] else "after"


class Raw:
    """drover on a config of our own (the peers' Drover class writes its own)."""

    def __init__(self, binary, config):
        self.tmp = tempfile.mkdtemp(prefix="bench-trust-")
        self.conf = os.path.join(self.tmp, "drover.toml")
        with open(self.conf, "w") as f:
            f.write(config.replace("{dir}", self.tmp))
        self.log = open(os.path.join(self.tmp, "err.log"), "w")
        self.out = open(os.path.join(self.tmp, "out.log"), "w")
        self.proc = subprocess.Popen([binary, "run", "-c", self.conf], cwd=self.tmp, stdout=self.out,
                                     stderr=self.log, start_new_session=True)
        self.addr = wait_for(self._addr, "drover's status address", 30)

    def _addr(self):
        m = re.search(r"status endpoint on ([0-9.:]+)", open(os.path.join(self.tmp, "err.log")).read())
        return m and m.group(1)

    def status(self):
        with urllib.request.urlopen(f"http://{self.addr}/status", timeout=30) as r:
            return json.load(r)

    def stop(self):
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def healthz_ms(addr, timeout=30):
    t = time.time()
    try:
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            ok = s.recv(64).split(b"\r\n")[0].endswith(b" 200 OK")
    except OSError:
        ok = False
    return (time.time() - t) * 1000, ok


# ---------------------------------------------------------------- metrics

def respawn(builds, rounds=4, kills=8):
    data = {"before": [], "after": []}
    stable = 1.2
    for r in range(rounds):
        for b in (builds["old"], builds["new"]) if r % 2 == 0 else (builds["new"], builds["old"]):
            use(b)
            stamps = tempfile.mktemp(prefix="bench-trust-stamps-")
            p = run_peer(Drover, "stamp", 2, stamps=stamps)
            try:
                for _ in range(kills):
                    def stable_worker():
                        live = {pid: t for pid, t in stamps_of(stamps) if alive(pid)}
                        ws = [(t, pid) for pid, t in live.items() if pid in p.worker_pids()]
                        return ws and max(ws)
                    t_start, victim = wait_for(stable_worker, "a live worker", 60)
                    time.sleep(max(0.0, stable - (time.time() - t_start)))
                    n = len(stamps_of(stamps))
                    t0 = time.time()
                    os.kill(victim, signal.SIGKILL)
                    new = wait_for(lambda: (lambda s: s[n:] if len(s) > n else None)(stamps_of(stamps)),
                                   "the replacement", 60, 0.001)
                    data[label(b, builds)].append((new[0][1] - t0) * 1000)
            finally:
                p.stop(15)
                if os.path.exists(stamps):
                    os.unlink(stamps)
    rows = [[k, len(v), f"{statistics.median(v):.2f}", f"{pct(v, 0.95):.2f}", f"{min(v):.2f}", f"{max(v):.2f}"]
            for k, v in data.items()]
    text = table("Respawn latency after SIGKILL, before and after the hardening (ms)",
                 ["drover", "kills", "median", "p95", "min", "max"], rows)
    save("trust_respawn", {"ms": data, "table": text})


def status(builds, rounds=2, seconds=5, workers=100):
    data = {}
    for r in range(rounds):
        for b in (builds["old"], builds["new"]) if r % 2 == 0 else (builds["new"], builds["old"]):
            use(b)
            p = run_peer(Drover, "stamp", workers)
            try:
                port = int(p.status_addr().rsplit(":", 1)[1])
                for path in ("/status", "/healthz"):
                    w = wrk(port, seconds, conns=1, threads=1, path=path)
                    data.setdefault(f"{label(b, builds)} {path}", []).append(w)
            finally:
                p.stop(60)
    rows = []
    for k, ws in data.items():
        rows.append([k, f"{statistics.median(w['p50_ms'] for w in ws):.2f}",
                     f"{statistics.median(w['p99_ms'] for w in ws):.2f}",
                     f"{statistics.median(w['rps'] for w in ws):.0f}"])
    text = table(f"Status endpoint at {workers} workers, before and after (wrk, one connection; median of {rounds} runs)",
                 ["build route", "p50 ms", "p99 ms", "requests/s"], rows)
    save("trust_status", {"data": data, "table": text})


FORK_CONFIG = f"""[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "5s"
[socket.http]
listen = "127.0.0.1:0"
[program.web]
command = ["{os.path.join(ROOT, 'target', 'release', 'drover')}", "demo-worker"]
sockets = ["http"]
readiness = {{ check = "uptime", min_uptime = "50ms" }}
backoff = {{ reset_after = "1s" }}   # each kill restarts at once: what is measured is the loop
[program.api]
command = ["python3", "{FAKE}"]
preload = true
workers = 1
readiness = {{ check = "uptime", min_uptime = "100ms", timeout = "60s" }}
env = {{ FAKE_MODES = "hang" }}
"""


def fork(builds, seconds=20, kills=5):
    rows, data = [], {}
    for b in (builds["old"], builds["new"]):
        d = Raw(b, FORK_CONFIG)
        try:
            def web_ready():
                ps = {p["name"]: p for p in d.status()["programs"]}
                return ps["web"]["ready_workers"] == 1
            # the old build blocks its loop in each fork, 10 s at a time: /status waits with it
            wait_for(web_ready, "web ready", 120)
            # the preloader has loaded and a fork is asked for (the fake prints its mode first)
            wait_for(lambda: "mode hang" in open(os.path.join(d.tmp, "out.log")).read(), "the fake preloader", 60)
            time.sleep(1)
            lat, fails = [], 0
            end = time.time() + seconds

            def probe():
                nonlocal fails
                while time.time() < end:
                    ms, ok = healthz_ms(d.addr)
                    lat.append(ms)
                    fails += not ok
                    time.sleep(0.02)
            prober = threading.Thread(target=probe)
            prober.start()
            # in the same window, a worker of the other program is killed every few seconds
            backs = []
            for i in range(kills):
                time.sleep(max(0.0, end - seconds + 2 + i * (seconds - 4) / kills - time.time()))
                old = [w["pid"] for p in d.status()["programs"] if p["name"] == "web" for w in p["workers"]][0]
                t0 = time.time()
                os.kill(old, signal.SIGKILL)
                wait_for(lambda: any(w["pid"] not in (None, old) and w["state"] == "running"
                                     for p in d.status()["programs"] if p["name"] == "web" for w in p["workers"]),
                         "web's replacement", 60, 0.005)
                backs.append((time.time() - t0) * 1000)
            prober.join()
            back = statistics.median(backs)
        finally:
            d.stop()
        k = label(b, builds)
        data[k] = {"healthz_ms": lat, "failed": fails, "replaced_ms": backs}
        rows.append([k, len(lat), fails, f"{statistics.median(lat):.2f}", f"{pct(lat, 0.99):.1f}",
                     f"{max(lat):.0f}", f"{back:.0f} ({min(backs):.0f}–{max(backs):.0f})"])
    text = table(f"While a preloader never answers a fork ({seconds} s): /healthz and a killed worker of another program",
                 ["drover", "probes", "failed", "p50 ms", "p99 ms", "max ms",
                  f"another program's killed worker running again, ms: median of {kills} (range)"], rows)
    save("trust_fork", {"data": data, "table": text})


# the worker's own process sends READY=1 and stays up, as a server does (a sender that has
# exited by the time drover reads its datagram cannot be placed in a worker's process group)
FLOOD_CONFIG = """[supervisor]
status = "127.0.0.1:0"
history = "0s"
[program.web]
command = ["sh", "-c", "while [ ! -e {dir}/go ]; do sleep 0.01; done; exec python3 -c 'import os,socket,time; a=os.environ[\\"NOTIFY_SOCKET\\"]; a=\\"\\\\0\\"+a[1:] if a[0]==\\"@\\" else a; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\\"READY=1\\", a); time.sleep(100000)'"]
readiness = { check = "notify", timeout = "120s" }
"""


def _flood(addr, stop, counts):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    n = 0
    while not stop.is_set():
        try:
            s.sendto(b"READY=1\nSTATUS=flood", addr)
            n += 1
        except OSError:
            pass
    counts.append(n)


def flood(builds, seconds=10):
    rows, data = [], {}
    for b in (builds["old"], builds["new"]):
        d = Raw(b, FLOOD_CONFIG)
        try:
            st = wait_for(lambda: d.status()["programs"][0]["workers"][0]["pid"], "the worker", 30)
            env = open(f"/proc/{st}/environ", "rb").read().split(b"\0")
            sock = [e[len(b"NOTIFY_SOCKET="):].decode() for e in env if e.startswith(b"NOTIFY_SOCKET=")][0]
            addr = "\0" + sock[1:] if sock.startswith("@") else sock
            rss0 = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{d.proc.pid}/status").read()).group(1))
            c0 = ticks(d.proc.pid)
            stop, counts = threading.Event(), []
            ts = [threading.Thread(target=_flood, args=(addr, stop, counts)) for _ in range(2)]
            for t in ts:
                t.start()
            time.sleep(seconds / 2)
            t_go = time.time()
            open(os.path.join(d.tmp, "go"), "w").close()
            ready_ms = None
            while time.time() < t_go + seconds / 2:
                try:
                    if d.status()["programs"][0]["ready_workers"] == 1 and ready_ms is None:
                        ready_ms = (time.time() - t_go) * 1000
                except OSError:
                    pass
                time.sleep(0.05)
            stop.set()
            for t in ts:
                t.join()
            c1 = ticks(d.proc.pid)
            time.sleep(10)
            c2 = ticks(d.proc.pid)
            rss1 = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{d.proc.pid}/status").read()).group(1))
            if ready_ms is None:
                ready_ms = wait_for(lambda: d.status()["programs"][0]["ready_workers"] == 1
                                    and (time.time() - t_go) * 1000, "READY=1 counted", 120)
        finally:
            d.stop()
        k = label(b, builds)
        data[k] = {"sent": sum(counts), "rss_kib": [rss0, rss1], "cpu_s_during": (c1 - c0) / HZ,
                   "cpu_s_after": (c2 - c1) / HZ, "ready_ms": ready_ms}
        rows.append([k, sum(counts), f"{rss0 / 1024:.1f} → {rss1 / 1024:.1f}", f"{(c1 - c0) / HZ:.2f}",
                     f"{(c2 - c1) / HZ:.2f}", f"{ready_ms:.0f}"])
    text = table(f"A {seconds} s datagram flood on NOTIFY_SOCKET from a process that is not a worker",
                 ["drover", "datagrams", "RSS MiB before → after", "CPU s during", "CPU s in the 10 s after",
                  "READY=1 sent mid-flood counted after ms"], rows)
    save("trust_flood", {"data": data, "table": text})


METRICS = {"respawn": respawn, "status": status, "fork": fork, "flood": flood}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metric", choices=list(METRICS) + ["all"])
    ap.add_argument("--old", required=True, help="drover built from before the change")
    ap.add_argument("--new", default=os.path.join(ROOT, "target", "release", "drover"))
    a = ap.parse_args()
    builds = {"old": os.path.abspath(a.old), "new": os.path.abspath(a.new)}
    for f in (METRICS.values() if a.metric == "all" else [METRICS[a.metric]]):
        f(builds)


if __name__ == "__main__":
    main()
