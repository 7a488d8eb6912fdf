#!/usr/bin/env python3
"""drover's worker side, side by side in one run (issue 13): the FastAPI example app
(examples/fastapi, `main:app`) under

  drover + uvicorn --fd 3            each worker imports the app itself (cold)
  drover + drover-uvicorn            the same, readiness by READY=1, the keep-alive drain
  drover + drover-uvicorn, preload   one preloader imports the app; workers are forked from it
  uvicorn --workers, gunicorn, gunicorn --preload

    bash bench/setup.sh                     # peers, wrk, drover --release, drover-uvicorn
    python3 bench/worker.py memory          # total PSS at 4 and 16 workers, idle and after load
    python3 bench/worker.py respawn         # kill -9 -> the replacement ready
    python3 bench/worker.py roll            # rolling restart under keep-alive load
    python3 bench/worker.py throughput      # drover-uvicorn vs uvicorn --fd 3
    python3 bench/worker.py all
"""
import datetime
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, pss_kib, run_peer, save, table, wrk  # noqa: E402
from peers import ROOT, TOKEN, UVICORN_FLAGS, VENV, Drover, Gunicorn, Uvicorn, wait_for  # noqa: E402

APP_DIR = os.path.join(ROOT, "examples", "fastapi")


class App:
    """Peers run the example app, from its directory."""

    def env(self):
        e = super().env()
        e["PYTHONPATH"] = APP_DIR
        return e


class DroverCold(App, Drover):
    name = "drover + uvicorn --fd 3"

    def __init__(self, kind, workers, port=None, stamps=None, extra=None):
        extra = dict(extra or {})
        extra.setdefault("command", [os.path.join(VENV, "uvicorn"), "main:app", "--fd", "3"] + UVICORN_FLAGS)
        super().__init__(kind, workers, port, stamps, extra)


class DroverWorker(App, Drover):
    name = "drover + drover-uvicorn"
    preload = False

    def __init__(self, kind, workers, port=None, stamps=None, extra=None):
        extra = dict(extra or {})
        extra["command"] = [os.path.join(VENV, "drover-uvicorn"), "main:app"] + UVICORN_FLAGS
        lines = ['readiness = { check = "notify" }', 'backoff = { initial = "100ms", max = "30s", reset_after = "1s" }']
        if self.preload:
            lines.append("preload = true")
        extra["program"] = "\n".join(lines)
        super().__init__(kind, workers, port, stamps, extra)



class DroverPreload(DroverWorker):
    name = "drover + drover-uvicorn, preload"
    preload = True


class UvicornApp(App, Uvicorn):
    def argv(self):
        return [a.replace("app:app", "main:app") for a in super().argv()]


class GunicornApp(App, Gunicorn):
    def argv(self):
        return [a.replace("app:app", "main:app") for a in super().argv()]


class GunicornPreload(GunicornApp):
    name = "gunicorn --preload"

    def argv(self):
        return super().argv() + ["--preload"]


def session_pids(sid):
    """Every process in session `sid`: the supervisor, its workers, a preloader, helpers."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            rest = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[3]) == sid:
            out.append(int(d))
    return out


def total_pss_mib(p):
    total = 0
    for pid in session_pids(p.proc.pid):
        try:
            total += pss_kib(pid)
        except (OSError, AttributeError):
            pass
    return total / 1024


PEERS = [DroverCold, DroverWorker, DroverPreload, UvicornApp, GunicornApp, GunicornPreload]


def memory(sizes=(4, 16), load_s=30):
    """Total PSS of everything each server runs, idle (8 s after ready) and after `load_s` of
    wrk -c64; one peer at a time."""
    rows, data = [], {}
    for n in sizes:
        for cls in PEERS:
            port = free_port()
            p = run_peer(cls, "app", n, port=port)
            try:
                time.sleep(8)
                idle = total_pss_mib(p)
                procs = len(session_pids(p.proc.pid))
                wrk(port, load_s)
                time.sleep(2)
                loaded = total_pss_mib(p)
            finally:
                p.stop(30)
            data[f"{cls.name} {n}"] = {"idle_mib": idle, "loaded_mib": loaded, "processes": procs}
            rows.append([cls.name, n, procs, f"{idle:.1f}", f"{loaded:.1f}"])
    for n in sizes:
        base = data[f"{UvicornApp.name} {n}"]["loaded_mib"]
        for r in rows:
            if r[1] == n:
                r.append(f"{data[f'{r[0]} {n}']['loaded_mib'] / base:.2f}")
    text = table(f"Total PSS of the server's processes, the FastAPI example app (MiB; load: wrk -c64 {load_s} s)",
                 ["server", "workers", "processes", "idle", f"after {load_s} s of load", "after load vs uvicorn --workers"],
                 rows)
    save("worker_memory", {"data": data, "table": text})


def _ready_log_times(p):
    """(pid, wall time) of each worker's "ready in" line in drover's JSON log."""
    out = []
    for line in open(os.path.join(p.tmp, "out.log")):
        if ' ready in ' not in line or not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        secs = datetime.datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append((j.get("pid"), secs))
    return out


def respawn(kills=10):
    """kill -9 a worker; from just before kill(2) to drover's log line saying its replacement is
    ready (accepting on the socket for uvicorn --fd 3, READY=1 after lifespan startup for
    drover-uvicorn), both wall-clock."""
    rows, data = [], {}
    for cls in (DroverCold, DroverWorker, DroverPreload):
        p = run_peer(cls, "app", 2, port=free_port())
        lat = []
        try:
            for _ in range(kills):
                victim = sorted(p.worker_pids())[0]
                seen = {pid for pid, _ in _ready_log_times(p)}
                t0 = time.time()
                os.kill(victim, signal.SIGKILL)
                new = wait_for(lambda: [x for x in _ready_log_times(p) if x[0] not in seen], "the replacement ready", 60)
                lat.append((new[0][1] - t0) * 1000)
                wait_for(lambda: len(p.worker_pids()) >= 2, "2 workers", 30)
                time.sleep(1.5)  # not measured: past reset_after, so the next kill is not a quick failure
        finally:
            p.stop(30)
        if min(lat) <= 0:
            sys.exit(f"bench respawn: {cls.name}: a latency of {min(lat):.2f} ms is not a measurement")
        data[cls.name] = lat
        rows.append([cls.name, kills, f"{statistics.median(lat):.1f}", f"{max(lat):.1f}", f"{min(lat):.1f}"])
    cold = statistics.median(data[DroverCold.name])
    for r in rows:
        r.append(f"{cold / statistics.median(data[r[0]]):.1f}×")
    text = table("kill -9 of a worker -> its replacement ready (ms), the FastAPI example app",
                 ["server", "kills", "median", "max", "min", "faster than cold"], rows)
    save("worker_respawn", {"ms": data, "table": text})


def _restart(p):
    req = urllib.request.Request(f"http://{p.status_addr()}/programs/web/restart", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(req, timeout=10).read()


def roll(seconds=20, sizes=(2, 4)):
    """A rolling restart of every worker inside a keep-alive wrk -c64 run."""
    rows, data = [], {}
    for n in sizes:
        for cls in (DroverCold, DroverWorker, DroverPreload):
            port = free_port()
            p = run_peer(cls, "app", n, port=port)
            try:
                before = set(p.worker_pids())
                res = {}
                t = threading.Thread(target=lambda: res.update(wrk(port, seconds)))
                t.start()
                time.sleep(3)
                t0 = time.time()
                _restart(p)
                wait_for(lambda: not (set(p.worker_pids()) & before) and len(p.worker_pids()) >= n
                         and not p.status()["programs"][0]["rolling"], "the roll", seconds - 4, 0.05)
                took = time.time() - t0
                t.join()
            finally:
                p.stop(30)
            errs = res["connect"] + res["read"] + res["write"] + res["timeout"] + res["non2xx"]
            data[f"{cls.name} {n}"] = {"wrk": res, "roll_s": took}
            rows.append([cls.name, n, f"{took:.1f}", res["requests"], res["read"] + res["write"], res["connect"],
                         res["non2xx"], res["timeout"], errs])
    text = table(f"Rolling restart inside a keep-alive wrk -t2 -c64 -d{seconds}s run",
                 ["server", "workers", "roll took (s)", "requests", "reset", "refused", "non-2xx", "timeouts",
                  "failed in all"], rows)
    save("worker_roll", {"data": data, "table": text})


def throughput(runs=3, seconds=10):
    """drover-uvicorn against plain uvicorn --fd 3 under drover, 2 workers, interleaved."""
    peers = [DroverCold, DroverWorker, DroverPreload]
    ports = {c: free_port() for c in peers}
    running = {}
    res = {c: [] for c in peers}
    try:
        for c in peers:
            running[c] = run_peer(c, "app", 2, port=ports[c])
        for c in peers:
            wrk(ports[c], 2)
        for r in range(runs):
            for c in peers[r % len(peers):] + peers[:r % len(peers)]:
                res[c].append(wrk(ports[c], seconds))
    finally:
        for p in running.values():
            p.stop(30)
    base = statistics.median(x["rps"] for x in res[DroverCold])
    rows = []
    for c in peers:
        rps = [x["rps"] for x in res[c]]
        rows.append([c.name, " / ".join(f"{x:.0f}" for x in rps), f"{statistics.median(rps):.0f}",
                     f"{statistics.median(rps) / base:.3f}", f"{statistics.median(x['p99_ms'] for x in res[c]):.1f}"])
    text = table(f"The example app, 2 workers, wrk -t2 -c64 -d{seconds}s, {runs} runs interleaved",
                 ["server", "requests/s per run", "median", "vs uvicorn --fd 3", "p99 ms"], rows)
    save("worker_throughput", {"runs": {c.name: res[c] for c in peers}, "table": text})


METRICS = {"memory": memory, "respawn": respawn, "roll": roll, "throughput": throughput}

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    t0 = time.time()
    for name, f in METRICS.items():
        if which in (name, "all"):
            f()
    print(f"\n{which}: {time.time() - t0:.0f} s")
