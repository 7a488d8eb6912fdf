#!/usr/bin/env python3
"""Supervisor-core figures: respawn latency and drover's own memory.

    cargo build --release && python3 bench/core.py [--kills 20]

Respawn latency: a stable worker is SIGKILLed; the figure is the time from just before kill(2)
to the replacement's first action, a bash builtin writing $EPOCHREALTIME (so it includes bash's
own start-up, ~1 ms: an upper bound on drover's part). Memory: drover's RSS and PSS (smaps_rollup)
with N sleeping workers, output captured (one pipe and reader each).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("DROVER_BIN", os.path.join(ROOT, "target/release/drover"))


def start(conf, tmp):
    path = os.path.join(tmp, "drover.toml")
    with open(path, "w") as f:
        f.write(conf)
    err = open(os.path.join(tmp, "stderr.log"), "w")
    p = subprocess.Popen([BIN, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=err, cwd=tmp)
    return p


def status_addr(tmp, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        log = open(os.path.join(tmp, "stderr.log")).read()
        m = re.search(r"status endpoint on ([0-9.:]+)", log)
        if m:
            return m.group(1)
        time.sleep(0.02)
    sys.exit("drover did not log its status address")


def status(addr):
    with urllib.request.urlopen(f"http://{addr}/status", timeout=5) as r:
        return json.load(r)


def wait(cond, what, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.005)
    sys.exit(f"timed out waiting for {what}")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def respawn(kills):
    with tempfile.TemporaryDirectory() as tmp:
        starts = os.path.join(tmp, "starts")
        conf = f"""
[supervisor]
status = "127.0.0.1:0"
[program.w]
command = ["bash", "-c", "echo $EPOCHREALTIME >> {starts}; exec sleep 100000"]
backoff = {{ initial = "100ms", max = "1s", reset_after = "500ms" }}
log = "inherit"
"""
        p = start(conf, tmp)
        try:
            addr = status_addr(tmp)
            lat = []
            for i in range(kills):
                st = wait(lambda: (lambda s: s if s["programs"][0]["workers"][0]["pid"] else None)(status(addr)), "worker")
                w = st["programs"][0]["workers"][0]
                # stable: up longer than reset_after, so the restart is immediate
                time.sleep(max(0.0, 0.6 - (w["uptime_s"] or 0)))
                n = len(open(starts).read().split())
                t0 = time.time()
                os.kill(w["pid"], signal.SIGKILL)
                line = wait(lambda: (lambda l: l[n] if len(l) > n else None)(open(starts).read().split()), "replacement")
                lat.append((float(line) - t0) * 1000)
            return lat
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)


def bash_baseline(n=20):
    """fork+exec of the same bash command straight from Python: the part that is not drover's."""
    out = []
    for _ in range(n):
        t0 = time.time()
        r = subprocess.run(["bash", "-c", "echo $EPOCHREALTIME"], capture_output=True, text=True)
        out.append((float(r.stdout) - t0) * 1000)
    return out


def memory(workers):
    with tempfile.TemporaryDirectory() as tmp:
        conf = f"""
[supervisor]
status = "127.0.0.1:0"
[program.w]
command = ["sleep", "100000"]
workers = {workers}
"""
        p = start(conf, tmp)
        try:
            addr = status_addr(tmp)
            wait(lambda: all(w["state"] == "running" for w in status(addr)["programs"][0]["workers"])
                 and len(status(addr)["programs"][0]["workers"]) == workers, "workers running", 60)
            for _ in range(20):  # a few status requests, as a real deployment would see
                status(addr)
            rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
            pss = int(re.search(r"Pss:\s+(\d+)", open(f"/proc/{p.pid}/smaps_rollup").read()).group(1))
            threads = int(re.search(r"Threads:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
            return rss / 1024, pss / 1024, threads
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)


def sampling_cost(workers, budget, seconds, program_budget=""):
    """drover's own CPU over `seconds` with `workers` sleeping workers under a budget setting."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = f"""
[supervisor]
status = "127.0.0.1:0"
{budget}
[program.w]
command = ["sleep", "100000"]
workers = {workers}
{program_budget}
"""
        p = start(conf, tmp)
        try:
            addr = status_addr(tmp)
            wait(lambda: len([w for w in status(addr)["programs"][0]["workers"] if w["state"] == "running"]) == workers,
                 "workers running", 60)
            mode = status(addr)["budget"]["mode"]
            ticks = lambda: sum(int(x) for x in open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
            a = ticks()
            time.sleep(seconds)
            b = ticks()
            hz = os.sysconf("SC_CLK_TCK")
            return mode, (b - a) / hz, seconds
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sampling-seconds", type=int, default=30)
    a = ap.parse_args()
    lat = respawn(a.kills)
    print(f"respawn latency over {len(lat)} kills: median {statistics.median(lat):.2f} ms, "
          f"p95 {pct(lat, 0.95):.2f} ms, min {min(lat):.2f} ms, max {max(lat):.2f} ms")
    base = bash_baseline()
    print(f"baseline, Python fork+exec of the same bash command: median {statistics.median(base):.2f} ms, "
          f"p95 {pct(base, 0.95):.2f} ms")
    for n in (4, 100):
        rss, pss, th = memory(n)
        print(f"drover with {n:>3} workers: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB, {th} threads")
    cases = [
        ("budgets off", "", ""),
        ("sampling every 1s", '[budget]\nmode = "sample"', 'budget = { memory_hard = "1GiB" }'),
        ("cgroup + sampling every 1s", '[budget]\nmode = "auto"', 'budget = { memory_hard = "1GiB" }'),
    ]
    for label, node, prog in cases:
        mode, cpu, secs = sampling_cost(100, node, a.sampling_seconds, prog)
        print(f"100 workers, {label} (mode {mode}): drover used {cpu:.2f} s CPU in {secs} s = {100 * cpu / secs:.2f}% of a core")


if __name__ == "__main__":
    main()
