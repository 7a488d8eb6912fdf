#!/usr/bin/env python3
"""drover as a tini-style init beside tini and dumb-init: the whole process, start to exit, of
`INIT -- sh -c 'exit 3'` (each must exit 3), runs interleaved so that machine noise falls on all
alike. A start-up figure: it includes drover's guard fork, runtime and logging set-up.

    apt-get install tini dumb-init     # the peers, from Debian; a missing one is skipped
    cargo build --release && python3 bench/init.py [RUNS]
"""
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROVER = os.environ.get("DROVER_BIN", os.path.join(ROOT, "target", "release", "drover"))
JOB = ["/bin/sh", "-c", "exit 3"]


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    cmds = {"sh alone": JOB, "drover run --": [DROVER, "run", "--", *JOB]}
    for name, argv in (("tini --", ["tini", "--"]), ("dumb-init", ["dumb-init"])):
        if shutil.which(argv[0]):
            cmds[name] = argv + JOB
        else:
            print(f"SKIPPED: {argv[0]} is not installed (apt-get install {argv[0]})")
    times = {k: [] for k in cmds}
    for _ in range(runs):
        for k, argv in cmds.items():
            t0 = time.perf_counter()
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[k].append((time.perf_counter() - t0) * 1000)
            if r.returncode != 3:
                sys.exit(f"{k}: exit {r.returncode}, expected the child's 3")
    print(f"| init | runs | median ms | p95 ms |\n|---|---|---|---|")
    for k, xs in times.items():
        xs.sort()
        print(f"| {k} | {runs} | {statistics.median(xs):.2f} | {xs[int(0.95 * runs) - 1]:.2f} |")


if __name__ == "__main__":
    main()
