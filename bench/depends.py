#!/usr/bin/env python3
"""What the dependency gate costs at start-up (and ordered shutdown at the end): N programs in a
chain, each depending on the one before (`started`, or `ready`), against the same N programs
independent; beside supervisord with the same N programs, independent and ordered by `priority`
(its own ordering: it spawns in priority order and waits for nothing in between) and in a
chain through the supervisord-dependent-startup plugin (each program waits for the one before
to be RUNNING; with startsecs = 0 that is drover's `started`).

    python3 bench/depends.py [--programs 100] [--runs 5]

Each program is one bench/.build/stamp worker (`bash bench/setup.sh` builds it), which appends
its pid and CLOCK_REALTIME right after exec to one file. "start" is the time from the
supervisor's exec to the last program's stamp; "stop" from TERM to the supervisor's exit (a
chain stops dependents first, one link after the other); "CPU" is the supervisor's own time on CPU
(all its threads, /proc/PID/task/*/schedstat) when the last program had started. drover: target/release/drover (or $DROVER_BIN);
supervisord: $BENCH_VENV/supervisord (default bench/.venv/bin).
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import DROVER, STAMP, VENV, wait_for  # noqa: E402

PEER_VENV = os.environ.get("BENCH_VENV", VENV)


def cpu_ms(pid):
    """Time on CPU of every thread of `pid` so far (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e6


def drover_config(n, stamps, link):
    """`link`: None (independent), "started" or "ready"."""
    out = ['[supervisor]\nstatus = "off"\nshutdown_timeout = "60s"\nhistory = "0s"\n']
    for i in range(n):
        out.append(
            f'[program.p{i}]\ncommand = ["{STAMP}", "{stamps}"]\n'
            'readiness = { check = "uptime", min_uptime = "0s" }\nstop_timeout = "10s"\n'
        )
        if link and i > 0:
            out.append(f'depends_on = {{ p{i - 1} = "{link}" }}\n')
    return "".join(out)


def supervisord_config(n, stamps, tmp, link, conf):
    """`link`: None (independent), "priority" (ordered spawns) or "dependent" (a chain through
    the supervisord-dependent-startup plugin, each waiting for the one before to be RUNNING,
    which with startsecs = 0 is drover's `started`)."""
    out = [f"""[supervisord]
nodaemon = true
logfile = {tmp}/supervisord.log
pidfile = {tmp}/supervisord.pid
childlogdir = {tmp}
"""]
    if link == "dependent":
        # the plugin starts programs through supervisord's XML-RPC interface
        out.append(f"""[unix_http_server]
file = {tmp}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{tmp}/supervisor.sock
[eventlistener:dependentstartup]
command = {os.path.join(PEER_VENV, "supervisord-dependent-startup")} -c {conf}
autostart = true
events = PROCESS_STATE
""")
    for i in range(n):
        # lower priority starts first and stops last; equal priorities: no order at all
        prio = 100 + i if link == "priority" else 999
        out.append(f"""[program:p{i}]
command = {STAMP} {stamps}
startsecs = 0
priority = {prio}
stopwaitsecs = 10
""")
        if link == "dependent":
            out.append("autostart = false\ndependent_startup = true\n")
            if i > 0:
                out.append(f"dependent_startup_wait_for = p{i - 1}:running\n")
    return "".join(out)


def stamps_in(path):
    try:
        with open(path) as f:
            return [float(line.split()[1]) for line in f if line.strip()]
    except OSError:
        return []


def one_run(kind, n, link):
    tmp = tempfile.mkdtemp(prefix="bench-depends-")
    stamps = os.path.join(tmp, "stamps")
    if kind == "drover":
        conf = os.path.join(tmp, "drover.toml")
        with open(conf, "w") as f:
            f.write(drover_config(n, stamps, link))
        argv = [DROVER, "run", "-c", conf]
    else:
        conf = os.path.join(tmp, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(supervisord_config(n, stamps, tmp, link, conf))
        argv = [os.path.join(PEER_VENV, "supervisord"), "-c", conf]
    log = open(os.path.join(tmp, "log"), "w")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    def all_up():
        if proc.poll() is not None:
            with open(os.path.join(tmp, "log")) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"{kind} exited with {proc.returncode} before every program had started:\n{tail}")
        return len(stamps_in(stamps)) >= n

    try:
        wait_for(all_up, f"{n} stamps under {kind}", 120, 0.002)
        started = max(stamps_in(stamps)) - t0
        cpu = cpu_ms(proc.pid)
        # every worker of a chain is up; TERM now measures the shutdown, dependents first
        t1 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        stopped = time.time() - t1
        return started, stopped, cpu
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    cases = [
        ("drover", None, "independent"),
        ("drover", "started", "chain, each `started`"),
        ("drover", "ready", "chain, each `ready` (uptime check, min_uptime 0s)"),
    ]
    if os.access(os.path.join(PEER_VENV, "supervisord"), os.X_OK):
        cases += [
            ("supervisord", None, "independent (one priority)"),
            ("supervisord", "priority", "ordered by `priority`"),
        ]
        if os.access(os.path.join(PEER_VENV, "supervisord-dependent-startup"), os.X_OK):
            cases.append(("supervisord", "dependent", "chain, each `running` (dependent-startup plugin)"))
        else:
            print("supervisord-dependent-startup not found: bash bench/setup.sh installs it")
    else:
        print(f"supervisord not found in {PEER_VENV}: bash bench/setup.sh (or BENCH_VENV=...)")
    if not os.access(STAMP, os.X_OK):
        sys.exit(f"{STAMP} is missing: bash bench/setup.sh builds it (gcc -O2 -o {STAMP} bench/stamp.c)")
    n = a.programs
    print(f"{n} programs of one stamp worker each, {a.runs} runs, median (min-max)\n")
    print("| supervisor | programs | start: exec to last worker | stop: TERM to exit | supervisor CPU at start |")
    print("|---|---|---|---|---|")
    for kind, link, what in cases:
        runs = [one_run(kind, n, link) for _ in range(a.runs)]
        cols = []
        for i in range(3):
            xs = [r[i] * (1 if i == 2 else 1000.0) for r in runs]
            cols.append(f"{statistics.median(xs):.0f} ms ({min(xs):.0f}-{max(xs):.0f})")
        print(f"| {kind} | {n}, {what} | {cols[0]} | {cols[1]} | {cols[2]} |")


if __name__ == "__main__":
    main()
