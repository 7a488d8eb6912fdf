#!/usr/bin/env python3
"""Crash-storm soak: 100 workers that all exit after 0.5 s, again and again, for 10 minutes.

    cargo build --release && python3 bench/soak.py [--minutes 10]

Prints drover's RSS, PSS and CPU every 30 s and the growth over the run (the promise: memory
grows < 1 MiB, CPU stays bounded by the backoff). The suite runs the same storm for 60 s
(tests/workers.rs).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import DROVER, wait_for  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def sample(pid):
    status = open(f"/proc/{pid}/status").read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    pss = int(re.search(r"Pss:\s+(\d+)", open(f"/proc/{pid}/smaps_rollup").read()).group(1))
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return rss, pss, int(f[11]) + int(f[12])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "drover.toml")
        open(conf, "w").write('[supervisor]\nstatus = "127.0.0.1:0"\n[program.w]\n'
                              'command = ["sh", "-c", "sleep 0.5; exit 1"]\nworkers = 100\n'
                              'backoff = { initial = "100ms", max = "2s" }\n')
        err = open(os.path.join(tmp, "err.log"), "w")
        p = subprocess.Popen([DROVER, "run", "-c", conf], stdout=subprocess.DEVNULL, stderr=err, cwd=tmp,
                             start_new_session=True)
        try:
            addr = wait_for(lambda: (lambda m: m and m.group(1))(
                re.search(r"status endpoint on ([0-9.:]+)", open(os.path.join(tmp, "err.log")).read())), "status")

            def restarts():
                with urllib.request.urlopen(f"http://{addr}/status", timeout=10) as r:
                    return sum(w["restarts"] for w in json.load(r)["programs"][0]["workers"])
            time.sleep(15)  # every worker has crashed a few times; its backoff has grown
            t0, r0 = time.time(), restarts()
            rss0, pss0, ticks0 = first = sample(p.pid)
            print("   min   RSS KiB   PSS KiB   CPU % (interval)   restarts/s (interval)")
            last_t, last_ticks, last_r = t0, ticks0, r0
            while time.time() - t0 < a.minutes * 60:
                time.sleep(30)
                now, r = time.time(), restarts()
                rss, pss, ticks = sample(p.pid)
                print(f"{(now - t0) / 60:6.1f} {rss:9d} {pss:9d} {100 * (ticks - last_ticks) / HZ / (now - last_t):12.1f}"
                      f" {(r - last_r) / (now - last_t):18.1f}", flush=True)
                last_t, last_ticks, last_r = now, ticks, r
            rss, pss, ticks = sample(p.pid)
            secs = time.time() - t0
            print(f"\n{secs / 60:.1f} min, {restarts() - r0} restarts ({(restarts() - r0) / secs:.0f}/s): "
                  f"RSS {rss0} -> {rss} KiB ({rss - rss0:+d}), PSS {pss0} -> {pss} KiB ({pss - pss0:+d}), "
                  f"CPU {100 * (ticks - first[2]) / HZ / secs:.1f} % of a core")
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(60)


if __name__ == "__main__":
    main()
