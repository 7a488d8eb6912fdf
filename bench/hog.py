"""The benchmark worker for memory-budget reaction. Once up for HOG_AFTER seconds it allocates
1 MiB at a time until its own PSS (HOG_METER=cgroup: its cgroup's usage) crosses HOG_SOFT_MIB, appends "cross PID SECONDS" to
HOG_STAMPS, and waits; on SIGTERM (drover's graceful recycle) it appends "term PID SECONDS".
It also appends "start PID SECONDS" when it starts: a replacement's start is when the recycle
began (drover starts the replacement first and stops the old worker once the new one is ready)."""
import os
import signal
import sys
import time

stamps = os.environ["HOG_STAMPS"]
soft = int(os.environ["HOG_SOFT_MIB"]) * 1024 * 1024


def note(what):
    with open(stamps, "a") as f:
        f.write(f"{what} {os.getpid()} {time.time():.6f}\n")


def on_term(*_):
    note("term")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
note("start")
time.sleep(float(os.environ.get("HOG_AFTER", "1.5")))


def usage_file():
    """The counter drover watches in cgroup mode: this cgroup's memory usage."""
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        if "memory" in ctrls.split(","):
            return f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"
        if ctrls == "":
            return f"/sys/fs/cgroup{path}/memory.current"
    return None


meter = usage_file() if os.environ.get("HOG_METER") == "cgroup" else None


def used():
    if meter:
        with open(meter) as f:
            return int(f.read())
    # what drover samples without a cgroup: PSS
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


hoard = []
while True:
    hoard.append(bytearray(b"x" * (1024 * 1024)))
    if used() > soft:
        note("cross")
        break
# a margin above the line, so that the figure drover reads is over it too
hoard += [bytearray(b"x" * (1024 * 1024)) for _ in range(4)]
while True:
    time.sleep(3600)
