#!/usr/bin/env python3
"""drover's benchmark suite: every figure measured side by side with the peers, in one run.

    bash bench/setup.sh                 # peers, wrk, the stamp worker, drover --release
    python3 bench/bench.py all          # every metric (~15 min); or one of:
    python3 bench/bench.py respawn | memory | idle | budget | status | throughput | kill | reload | stop | queue
    python3 bench/bench.py hold [--bin PATH]...   # /healthz under an idle-connection flood; --bin
                                                  # repeated compares binaries (e.g. an older build)
    python3 bench/bench.py smoke        # a short pass over each metric (what CI can afford)

Loopback only. Every process a metric starts is stopped by pid before the next one starts.
Results are printed as Markdown tables and merged into bench/results/latest.json.
"""
import argparse
import calendar
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import (APP_PEERS, BENCH, ROOT, STAMP_PEERS, Circus, Drover, Gunicorn, PM2,  # noqa: E402
                   Supervisord, Uvicorn, alive, versions, wait_for, stop_group)

RESULTS = os.path.join(BENCH, "results", "latest.json")
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- helpers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def wakeups(pid):
    """Context switches of every thread of `pid`: each time one of them slept and was woken."""
    n = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
    except OSError:
        pass
    return n


def rss_kib(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))


def pss_kib(pid):
    return int(re.search(r"Pss:\s+(\d+)", open(f"/proc/{pid}/smaps_rollup").read()).group(1))


def table(title, header, rows):
    out = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def save(metric, data, peers=True):
    """peers=False: a drover-only metric that records its own binaries' versions, so it runs
    without the peers installed and leaves the suite's `versions` as they are."""
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    try:
        allr = json.load(open(RESULTS))
    except (OSError, ValueError):
        allr = {}
    allr[metric] = data
    if peers:
        allr["versions"] = versions()
    allr["updated"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    json.dump(allr, open(RESULTS, "w"), indent=1)


def run_peer(cls, kind, workers, **kw):
    """Start a peer and wait for its workers; on failure stop it and re-raise."""
    p = cls(kind, workers, **kw)
    try:
        return p.start().ready()
    except BaseException:
        p.stop(10)
        raise


def wrk(port, seconds, conns=64, threads=2, path="/", close=False):
    """wrk against the peer; close=True sends `Connection: close` (a new connection per request)."""
    extra = ["-H", "Connection: close"] if close else []
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"] + extra
                       + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(r.stdout)


def parse_wrk(out):
    def ms(v):
        n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
        return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
    res = {"requests": 0, "rps": 0.0, "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        res[f"p{q}_ms"] = ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["connect"], res["read"], res["write"], res["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def stamps_of(path):
    try:
        return [(int(a), float(b)) for a, b in (l.split() for l in open(path).read().splitlines() if l.strip())]
    except OSError:
        return []


# ---------------------------------------------------------------- metrics

def respawn(kills=15):
    """A stable worker SIGKILLed -> its replacement's first action after exec (stamp written by the
    worker itself; for uvicorn and gunicorn, whose workers are Python, the first line of app.py)."""
    rows, data = [], {}
    stable = 1.2  # > drover's reset_after in the bench config (1 s) and supervisord's startsecs
    for cls in STAMP_PEERS + [Uvicorn, Gunicorn]:
        kind = "stamp" if "stamp" in cls.kinds else "app"
        tmp_stamps = f"/tmp/bench-stamps-{os.getpid()}-{cls.__name__}"
        if os.path.exists(tmp_stamps):
            os.unlink(tmp_stamps)
        port = free_port() if kind == "app" else None
        p = run_peer(cls, kind, 2, port=port, stamps=tmp_stamps)
        lat = []
        try:
            for _ in range(kills):
                def stable_worker():
                    live = {pid: t for pid, t in stamps_of(tmp_stamps) if alive(pid)}
                    ws = [(t, pid) for pid, t in live.items() if pid in p.worker_pids()]
                    return ws and max(ws)
                t_start, victim = wait_for(stable_worker, f"{cls.name}: a live worker", 60)
                time.sleep(max(0.0, stable - (time.time() - t_start)))
                n = len(stamps_of(tmp_stamps))
                t0 = time.time()
                os.kill(victim, signal.SIGKILL)
                new = wait_for(lambda: (lambda s: s[n:] if len(s) > n else None)(stamps_of(tmp_stamps)),
                               f"{cls.name}: the replacement", 60, 0.001)
                lat.append((new[0][1] - t0) * 1000)
        finally:
            p.stop(15)
            if os.path.exists(tmp_stamps):
                os.unlink(tmp_stamps)
        data[cls.name] = lat
        rows.append([cls.name, "C stamp" if kind == "stamp" else "app.py import", len(lat),
                     f"{statistics.median(lat):.2f}", f"{pct(lat, 0.95):.2f}", f"{min(lat):.2f}", f"{max(lat):.2f}"])
    d = statistics.median(data["drover"])
    for r in rows:
        r.append(f"{statistics.median(data[r[0]]) / d:.1f}×")
    text = table("Respawn latency after SIGKILL (ms)", ["supervisor", "worker", "kills", "median", "p95", "min", "max",
                                                       "median vs drover"], rows)
    save("respawn", {"ms": data, "table": text})


def memory():
    """The supervisor's own processes, N sleeping workers (drover: main + guard; RSS of the main
    process, PSS summed)."""
    rows, data = [], {}
    cases = [(Drover, 4), (Drover, 100), (Drover, 1000), (Supervisord, 4), (Circus, 4), (PM2, 4), (Uvicorn, 4),
             (Gunicorn, 4)]
    for cls, n in cases:
        kind = "stamp" if "stamp" in cls.kinds else "app"
        p = run_peer(cls, kind, n, port=free_port() if kind == "app" else None)
        try:
            time.sleep(2)
            if cls is Drover:
                for _ in range(20):  # a deployment sees status requests; count what they leave behind
                    p.status()
                time.sleep(0.5)
            own = p.own_pids()
            rss = rss_kib(own[0]) / 1024
            pss = sum(pss_kib(x) for x in own) / 1024
            threads = int(re.search(r"Threads:\s+(\d+)", open(f"/proc/{own[0]}/status").read()).group(1))
        finally:
            p.stop(60)
        data[f"{cls.name} {n}"] = {"rss_mib": rss, "pss_mib": pss, "processes": len(own), "threads": threads}
        rows.append([cls.name, n, "sleeping C stamp" if kind == "stamp" else "FastAPI app", f"{rss:.1f}", f"{pss:.1f}",
                     len(own), threads])
    text = table("Supervisor memory (MiB)", ["supervisor", "workers", "worker", "RSS (main process)",
                                            "PSS (all own processes)", "own processes", "threads"], rows)
    save("memory", {"data": data, "table": text})


def idle(seconds=60):
    """Clock ticks the supervisor's own processes use over `seconds`, all peers idling at once."""
    sample = {"budget": '[budget]\nmode = "sample"\nsample_interval = "1s"',
              "program": 'budget = { memory_hard = "1GiB" }'}
    cgroup = {"budget": '[budget]\nmode = "cgroup"\nsample_interval = "1s"',
              "program": 'budget = { memory_hard = "1GiB" }'}
    hist_off = {"supervisor": 'history = "0s"'}
    hist_1s = {"supervisor": 'history_interval = "1s"'}
    cases = [(Drover, "stamp", 0, {}, "no worker running: history on, nothing to sample"),
             (Drover, "stamp", 4, hist_off, "budgets off, history off"),
             (Drover, "stamp", 4, {}, "budgets off, history every 10 s (default)"),
             (Drover, "stamp", 4, hist_1s, "budgets off, history every 1 s"),
             (Drover, "stamp", 4, sample, "sampling /proc every 1 s"),
             (Drover, "stamp", 4, cgroup, "cgroup v1 + sampling every 1 s"),
             (Drover, "stamp", 100, hist_off, "budgets off, history off"),
             (Drover, "stamp", 100, {}, "budgets off, history every 10 s (default)"),
             (Drover, "stamp", 100, hist_1s, "budgets off, history every 1 s"),
             (Drover, "stamp", 100, sample, "sampling /proc every 1 s"),
             (Drover, "stamp", 100, cgroup, "cgroup v1 + sampling every 1 s"),
             (Supervisord, "stamp", 4, {}, "defaults"), (Circus, "stamp", 4, {}, "defaults"),
             (PM2, "stamp", 4, {}, "defaults"), (Uvicorn, "app", 4, {}, "defaults"), (Gunicorn, "app", 4, {}, "defaults")]
    running = []
    try:
        for cls, kind, n, extra, label in cases:
            running.append((run_peer(cls, kind, n, port=free_port() if kind == "app" else None, extra=extra), label))
        time.sleep(3)
        before = {id(p): sum(ticks(x) for x in p.own_pids()) for p, _ in running}
        woke = {id(p): sum(wakeups(x) for x in p.own_pids()) for p, _ in running}
        t0 = time.time()
        time.sleep(seconds)
        took = time.time() - t0
        after = {id(p): sum(ticks(x) for x in p.own_pids()) for p, _ in running}
        woke = {k: sum(wakeups(x) for x in p.own_pids()) - woke[k] for p, _ in running for k in [id(p)]}
    finally:
        for p, _ in running:
            p.stop(30)
    rows, data = [], {}
    for p, label in running:
        t = after[id(p)] - before[id(p)]
        data[f"{p.name} {p.workers} ({label})"] = {"ticks": t, "wakeups": woke[id(p)]}
        rows.append([p.name, p.workers, label, t, f"{100 * t / HZ / took:.2f}%", woke[id(p)]])
    text = table(f"CPU while idle, {took:.0f} s, all at once (clock ticks at {HZ} Hz)",
                 ["supervisor", "workers", "setting", "ticks", "of one core", "wake-ups"], rows)
    save("idle", {"ticks": data, "seconds": took, "table": text})


def _figure(mode, worker):
    """The figure drover watches for this worker: its cgroup's usage (what the v1 threshold
    eventfd fires on) in cgroup mode, its PSS (what sampling reads) otherwise. Bytes, or None."""
    try:
        if mode == "cgroup":
            cg = next(c for c in worker.get("cgroup", []) if "/memory/" in c or "memory" not in c)
            with open(os.path.join(cg, "memory.usage_in_bytes")) as f:
                return int(f.read())
        with open(f"/proc/{worker['pid']}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, TypeError):
        return None
    return None


def _crossings(p, mode, soft_bytes, stop, out):
    """Watch each worker's figure in a tight poll: for each pid, (last time seen below the line,
    first time seen at or above it). The crossing lies between the two, so a clock started at the
    first can only overstate drover's reaction, never make it negative."""
    seen = set()
    while not stop.is_set():
        try:
            st = p.status()
        except (OSError, TimeoutError, ValueError):
            st = {}
        ws = [w for pr in st.get("programs", []) for w in pr.get("workers", [])
              if w.get("pid") and w["pid"] not in seen and w.get("ready")]
        if not ws:
            time.sleep(0.01)
            continue
        w = ws[0]
        below = None
        while not stop.is_set():
            now = time.time()
            v = _figure(mode, w)
            if v is None:
                break  # gone before it crossed
            if v < soft_bytes:
                below = now
            elif below is not None:
                out[w["pid"]] = (below, now)
                break
            else:
                break  # first seen already above: no bracket, not counted
            time.sleep(0.0002)
        seen.add(w["pid"])


def budget(recycles=8):
    """memory_soft crossed -> drover decides the graceful recycle (its log line)."""
    rows, data = [], {}
    soft = 80
    for mode, meter, interval in (("cgroup", "cgroup", "1s"), ("sample", "pss", "1s"), ("sample", "pss", "250ms")):
        stamps = f"/tmp/bench-hog-{os.getpid()}"
        if os.path.exists(stamps):
            os.unlink(stamps)
        extra = {"budget": f'[budget]\nmode = "{mode}"\nsample_interval = "{interval}"',
                 "program": f'budget = {{ memory_soft = "{soft}MiB", memory_hard = "1GiB" }}\n'
                            f'env = {{ HOG_STAMPS = "{stamps}", HOG_SOFT_MIB = "{soft}", HOG_METER = "{meter}" }}\n'
                            'backoff = { initial = "100ms", max = "1s", reset_after = "1s" }\nstop_timeout = "5s"'}
        p = Drover("stamp", 1, extra=extra)
        p.argv_orig = p.argv
        p.argv = lambda p=p: _hog_argv(p)
        p.start()
        stop, crossed = threading.Event(), {}
        try:
            st = wait_for(lambda: p.status(), "drover status")
            got = (st.get("budget") or {}).get("mode") or ""
            if not got.startswith({"cgroup": "cgroup", "sample": "sampling"}[mode]):
                print(f"SKIPPED: budget reaction in {mode} mode: drover runs in {got!r} here")
                continue
            watcher = threading.Thread(target=_crossings, args=(p, mode, soft << 20, stop, crossed), daemon=True)
            watcher.start()

            def decisions():
                """pid -> when drover logged that it replaces the worker for memory_soft."""
                out = {}
                for line in open(os.path.join(p.tmp, "out.log")):
                    if "above memory_soft" in line:
                        j = json.loads(line)
                        ts = calendar.timegm(time.strptime(j["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
                        out.setdefault(j["pid"], ts + float("0." + j["timestamp"][20:-1]))
                return out

            def stamps_now():
                if not os.path.exists(stamps):
                    return []
                return [(w, int(q), float(t)) for w, q, t in (l.split() for l in open(stamps).read().splitlines())]

            def pairs():
                """Per recycle, from the last observation below the line: drover's decision, the
                replacement's first line, the old worker's SIGTERM; and the bracket's width."""
                d, ev, out = decisions(), stamps_now(), []
                for q, (below, above) in list(crossed.items()):
                    starts = [t for w, q2, t in ev if w == "start" and q2 != q and t >= below]
                    terms = [t for w, q2, t in ev if w == "term" and q2 == q]
                    if q in d and starts and terms:
                        out.append(((d[q] - below) * 1000, (min(starts) - below) * 1000,
                                    (terms[0] - below) * 1000, (above - below) * 1000))
                return out
            got = wait_for(lambda: (lambda x: x if len(x) >= recycles else None)(pairs()),
                           f"{recycles} memory recycles", 120, 0.1)
            lat = [g[0] for g in got]
            started = [g[1] for g in got]
            term = [g[2] for g in got]
            width = [g[3] for g in got]
            assert min(lat) >= 0, f"a negative reaction is a broken measurement: {lat}"
        finally:
            stop.set()
            p.stop(15)
            if os.path.exists(stamps):
                os.unlink(stamps)
        label = f"{mode} ({'v1 usage threshold, eventfd' if mode == 'cgroup' else 'sampling every ' + interval})"
        data[label] = {"decided_ms": lat, "replacement_first_line_ms": started,
                       "old_worker_signalled_ms": term, "bracket_ms": width}
        rows.append([label, len(lat), f"{statistics.median(lat):.2f}", f"{pct(lat, 0.95):.2f}", f"{max(lat):.2f}",
                     f"{statistics.median(width):.3f}", f"{statistics.median(started):.0f}",
                     f"{statistics.median(term):.0f}"])
    text = table("Memory budget reaction: memory_soft crossed -> drover decides the recycle (its log line), ms; "
                 "clock from the harness's last observation of the same figure below the line",
                 ["drover budget mode", "recycles", "median", "p95", "max", "observation bracket, median",
                  "replacement's first line (Python), median", "old worker's SIGTERM, median"], rows)
    save("budget", {"ms": data, "table": text})


def _hog_argv(p):
    argv = p.argv_orig()
    conf = argv[-1]
    body = open(conf).read().replace(
        "command = " + json.dumps([os.path.join(BENCH, ".build", "stamp"), "/dev/null"]),
        "command = " + json.dumps([sys.executable, os.path.join(BENCH, "hog.py")]))
    assert "hog.py" in body
    open(conf, "w").write(body)
    return argv


def status_latency(seconds=5):
    rows, data = [], {}
    for n in (4, 100, 1000):
        p = run_peer(Drover, "stamp", n)
        try:
            port = int(p.status_addr().rsplit(":", 1)[1])
            for path in ("/status", "/metrics", "/healthz"):
                w = wrk(port, seconds, conns=1, threads=1, path=path)
                data[f"{n} {path}"] = w
                rows.append([n, path, f"{w['p50_ms']:.2f}", f"{w['p99_ms']:.2f}", f"{w['rps']:.0f}"])
        finally:
            p.stop(60)
    text = table("drover status endpoint latency (one connection, back to back)",
                 ["workers", "route", "p50 ms", "p99 ms", "requests/s"], rows)
    save("status", {"data": data, "table": text})


def throughput(runs=5, seconds=10):
    """FastAPI hello world, 2 workers, 64 connections; peers interleaved run by run, the order
    rotated each round (this machine is shared: single runs vary by +-15 %)."""
    ports = {cls: free_port() for cls in APP_PEERS}
    running = {}
    try:
        for cls in APP_PEERS:
            running[cls] = run_peer(cls, "app", 2, port=ports[cls])
        for cls in APP_PEERS:
            wrk(ports[cls], 2)  # warm-up
        res = {cls: [] for cls in APP_PEERS}
        own_ticks = {cls: 0 for cls in APP_PEERS}
        for r in range(runs):
            for cls in APP_PEERS[r % len(APP_PEERS):] + APP_PEERS[:r % len(APP_PEERS)]:
                own = running[cls].own_pids()
                t0 = sum(ticks(x) for x in own)
                res[cls].append(wrk(ports[cls], seconds))
                own_ticks[cls] += sum(ticks(x) for x in own) - t0
    finally:
        for p in running.values():
            p.stop(30)
    base = statistics.median(r["rps"] for r in res[Uvicorn])
    rows, data = [], {}
    for cls in APP_PEERS:
        rps = [r["rps"] for r in res[cls]]
        p99 = [r["p99_ms"] for r in res[cls]]
        errs = sum(r["connect"] + r["read"] + r["write"] + r["timeout"] + r["non2xx"] for r in res[cls])
        data[cls.name] = {"runs": res[cls], "supervisor_ticks": own_ticks[cls]}
        rows.append([cls.name, " / ".join(f"{x:.0f}" for x in rps), f"{statistics.median(rps):.0f}",
                     f"{statistics.median(rps) / base:.3f}", f"{statistics.median(p99):.1f}", errs,
                     f"{own_ticks[cls] / HZ:.2f}"])
    text = table(f"FastAPI hello world, 2 workers, wrk -t2 -c64 -d{seconds}s, {runs} runs",
                 ["supervisor", "requests/s per run", "median", "vs uvicorn --workers", "p99 ms (median)", "errors",
                  "supervisor's own CPU during the runs (s)"],
                 rows)
    save("throughput", {"runs": data, "table": text})


def _loaded(cls, seconds, action, workers=2, close=False):
    """Run `action(peer, stop_event)` while wrk loads the peer; returns (wrk result, action result)."""
    port = free_port()
    p = run_peer(cls, "app", workers, port=port)
    try:
        out = {}
        t = threading.Thread(target=lambda: out.update(w=wrk(port, seconds, close=close)))
        t.start()
        time.sleep(1)
        r = action(p)
        t.join()
        return out["w"], r
    finally:
        p.stop(30)


def kill(seconds=20, every=2.0):
    """SIGKILL a worker every 2 s for 20 s under load."""
    rows, data = [], {}
    for cls in APP_PEERS:
        def killer(p):
            n, end = 0, time.time() + seconds
            while time.time() < end:
                ws = sorted(p.worker_pids())
                if ws:
                    try:
                        os.kill(ws[n % len(ws)], signal.SIGKILL)
                        n += 1
                    except OSError:
                        pass
                time.sleep(every)
            return n
        w, n = _loaded(cls, seconds + 2, killer)
        data[cls.name] = {"wrk": w, "kills": n}
        rows.append([cls.name, n, w["requests"], w["connect"], w["read"] + w["write"], w["timeout"], w["non2xx"],
                     f"{(w['read'] + w['write'] + w['timeout'] + w['non2xx']) / max(n, 1):.1f}"])
    text = table(f"SIGKILL a worker every {every:.0f} s for {seconds} s under load (2 workers, 64 connections)",
                 ["supervisor", "kills", "requests", "refused (connect errors)", "reset (read/write errors)",
                  "timeouts", "non-2xx", "failed per kill"], rows)
    save("kill", {"data": data, "table": text})


def reload(seconds=15):
    """A rolling reload under load: drover's control API, gunicorn and uvicorn HUP, Circus
    `reload`, supervisord `restart` (it has no rolling restart)."""
    rows, data = [], {}
    how = {Drover: "POST /programs/web/restart", Uvicorn: "SIGHUP", Gunicorn: "SIGHUP", Circus: "circusctl reload",
           Supervisord: "supervisorctl restart"}
    for cls, close in [(c, k) for k in (False, True) for c in APP_PEERS]:
        def act(p):
            before = set(p.worker_pids())
            t0 = time.time()
            p.reload()
            def done():
                now = set(p.worker_pids())
                return len(now) >= p.workers and not (now & before) and (not isinstance(p, Drover) or p.reload_done())
            try:
                wait_for(done, f"{cls.name}: reload", seconds - 3, 0.02)
                return time.time() - t0
            except TimeoutError:
                return None
        w, took = _loaded(cls, seconds, act, close=close)
        conn = "new per request" if close else "keep-alive"
        data[f"{cls.name} ({conn})"] = {"wrk": w, "seconds": took}
        failed = w["connect"] + w["read"] + w["write"] + w["timeout"] + w["non2xx"]
        rows.append([cls.name, how[cls], conn, "—" if took is None else f"{took:.2f}", w["requests"], failed,
                     w["connect"], w["read"] + w["write"], w["non2xx"]])
    text = table(f"Reload under load (2 workers, 64 connections, {seconds} s)",
                 ["supervisor", "how", "connections", "all workers replaced (s)", "requests", "failed", "refused",
                  "reset", "non-2xx"], rows)
    save("reload", {"data": data, "table": text})


def stop():
    """SIGTERM to the supervisor while a 2 s request is in flight."""
    rows, data = [], {}
    for cls in APP_PEERS:
        port = free_port()
        p = run_peer(cls, "app", 2, port=port)
        got = {}

        def request():
            t = time.time()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/slow?seconds=2", timeout=20) as r:
                    got["status"] = r.status
            except Exception as e:  # noqa: BLE001 - reported as the outcome
                got["status"] = type(e).__name__
            got["took"] = time.time() - t
        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.5)
        rc, took = p.stop(40)
        t.join()
        data[cls.name] = {"request": got, "exit": rc, "stop_s": took}
        rows.append([cls.name, got["status"], f"{got['took']:.2f}", rc, f"{took:.2f}"])
    text = table("Graceful stop: SIGTERM 0.5 s into a 2 s request",
                 ["supervisor", "request", "request took (s)", "exit code", "SIGTERM -> exit (s)"], rows)
    save("stop", {"data": data, "table": text})


def queue():
    """The cost of one accept-queue read (TCP_INFO for TCP, a sock_diag request for unix), from
    drover's own code built for release, beside the cheapest syscall (getppid), the floor."""
    r = subprocess.run(["cargo", "run", "--quiet", "--release", "--example", "queue_cost"], cwd=ROOT,
                       capture_output=True, text=True)
    m = re.search(r"QUEUE_COST (\{.*\})", r.stdout)
    if not m:
        sys.exit(f"bench queue: no figure from bench/queue_cost.rs:\n{r.stdout}\n{r.stderr}")
    d = json.loads(m.group(1))
    floor = d["syscall_floor_ns"]
    for k in ("tcp_ns", "unix_ns"):
        if d[k] < floor:
            sys.exit(f"bench queue: {k} {d[k]} ns is below the syscall floor {floor} ns: a broken measurement")
    rows = [["TCP listener", "getsockopt(TCP_INFO)", f"{d['tcp_ns']:.0f}", f"{d['tcp_ns'] / floor:.1f}×"],
            ["unix listener", "fstat + sock_diag send/recv" + ("" if d["unix_reported"] else " (not reported here)"),
             f"{d['unix_ns']:.0f}", f"{d['unix_ns'] / floor:.1f}×"],
            ["getppid (the floor)", "one syscall", f"{floor:.0f}", "1.0×"]]
    text = table(f"Reading one socket's accept queue ({d['reads']:,} reads each)",
                 ["listener", "how", "ns per read", "vs the floor"], rows)
    save("queue", {"data": d, "table": text})


# ---------------------------------------------------------------- hold

HOLD_CONNS = 300        # more than drover's cap of 256 status connections
HOLD_RECONNECTS = 1000  # per second at most: each connection the server closes is reopened at
                        # once (on b0fc773 that came to ~51/s: 256 header timeouts every 5 s)
PROBE_TIMEOUT = 3.0     # each /healthz probe's whole budget (the kubelet gives drover 2 s)


def _start_drover(binary, tmp):
    conf = os.path.join(tmp, "drover.toml")
    with open(conf, "w") as f:
        f.write("\n".join([
            "[supervisor]", 'status = "127.0.0.1:0"',
            "[socket.http]", 'listen = "127.0.0.1:0"',
            "[program.web]", "command = " + json.dumps([binary, "demo-worker"]), 'sockets = ["http"]', "workers = 2",
        ]) + "\n")
    log = open(os.path.join(tmp, "drover.log"), "w")
    proc = subprocess.Popen([binary, "run", "-c", conf], cwd=tmp, stdout=log, stderr=log, start_new_session=True,
                            env=dict(os.environ, DROVER_LOG="info"))

    def addr():
        m = re.search(r"status endpoint on ([0-9.]+):(\d+)", open(os.path.join(tmp, "drover.log")).read())
        return m and (m.group(1), int(m.group(2)))
    return proc, wait_for(addr, f"{binary}: its status address")


def _probe(addr):
    """One GET /healthz on a new connection: (ms, ok)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(addr, timeout=PROBE_TIMEOUT) as s:
            s.settimeout(max(0.01, PROBE_TIMEOUT - (time.perf_counter() - t0)))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            buf = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
                if time.perf_counter() - t0 > PROBE_TIMEOUT:
                    raise TimeoutError
        ok = buf.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    return (time.perf_counter() - t0) * 1000, ok


def _probes(addr, n, every):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        out.append(_probe(addr))
        time.sleep(max(0.0, every - (time.perf_counter() - t)))
    return out


def _hold(addr, stop, stats):
    """HOLD_CONNS idle connections that never send a byte; each one the server closes is opened
    again at once (at most HOLD_RECONNECTS a second)."""
    import selectors
    sel = selectors.DefaultSelector()

    def connect():
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(addr)
        sel.register(s, selectors.EVENT_READ)
    for _ in range(HOLD_CONNS):
        connect()
    owed, last = 0, time.perf_counter()
    while not stop.is_set():
        for key, _ in sel.select(0.001):
            s = key.fileobj
            try:
                gone = s.recv(1) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                sel.unregister(s)
                s.close()
                owed += 1
                stats["closed"] += 1
        now = time.perf_counter()
        budget = int((now - last) * HOLD_RECONNECTS)
        if budget:
            last = now
            for _ in range(min(budget, owed)):
                connect()
                owed -= 1
                stats["reconnects"] += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def hold(binaries=None, probes=200, seconds=10.0):
    """/healthz latency on a new connection per probe: (a) with nothing else going on, (b) while
    HOLD_CONNS idle connections are held open and reopened as the server closes them."""
    import tempfile
    binaries = binaries or [os.path.join(ROOT, "target", "release", "drover")]
    rows, data = [], {}
    for binary in binaries:
        binary = os.path.abspath(binary)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        with tempfile.TemporaryDirectory(prefix="bench-hold-") as tmp:
            proc, addr = _start_drover(binary, tmp)
            try:
                wait_for(lambda: _probe(addr)[1], f"{binary}: /healthz answering")
                quiet = _probes(addr, probes, seconds / probes)
                stop, stats = threading.Event(), {"closed": 0, "reconnects": 0}
                attacker = threading.Thread(target=_hold, args=(addr, stop, stats))
                attacker.start()
                time.sleep(0.5)  # the flood in place before the first probe
                t0 = time.perf_counter()
                held = _probes(addr, probes, seconds / probes)
                took = time.perf_counter() - t0
                stop.set()
                attacker.join()
            finally:
                stop_group(proc)
        data[binary] = {"version": version}
        for phase, res in (("no load", quiet), (f"{HOLD_CONNS} idle connections held", held)):
            ms = [m for m, ok in res if ok]
            failed = sum(1 for _, ok in res if not ok)
            fig = {"probes": len(res), "failed": failed, "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99),
                   "max_ms": max(ms) if ms else float("nan")}
            if phase != "no load":
                fig["server_closed_per_s"] = stats["closed"] / took
                fig["reconnects_per_s"] = stats["reconnects"] / took
            data[binary][phase] = fig
            rows.append([binary, phase, f"{failed}/{len(res)}", f"{fig['p50_ms']:.2f}", f"{fig['p99_ms']:.2f}",
                         f"{fig['max_ms']:.2f}", f"{fig.get('reconnects_per_s', 0):.0f}"])
    text = table(f"/healthz on a new connection each, {probes} probes over ~{seconds:.0f} s (failed: not 200 "
                 f"within {PROBE_TIMEOUT:.0f} s; latency of those answered)",
                 ["drover", "while", "failed", "p50 ms", "p99 ms", "max ms", "flood reconnects/s"], rows)
    save("hold", {"data": data, "table": text}, peers=False)


def _throughput_short():
    throughput(runs=1, seconds=3)


METRICS = {"respawn": respawn, "memory": memory, "idle": idle, "budget": budget, "status": status_latency,
           "throughput": throughput, "kill": kill, "reload": reload, "stop": stop, "queue": queue, "hold": hold}


def smoke():
    """Each metric, short: shows the harness and every peer still work (for CI). Its figures go
    to results/smoke.json, never over a full run's."""
    global RESULTS
    RESULTS = os.path.join(BENCH, "results", "smoke.json")
    respawn(kills=2)
    idle(seconds=2)
    budget(recycles=1)
    throughput(runs=1, seconds=2)
    kill(seconds=4)
    stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metric", choices=list(METRICS) + ["all", "smoke"])
    ap.add_argument("--bin", action="append", metavar="PATH",
                    help="hold: the drover binary to measure (default target/release/drover); repeat to compare")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("note: not root: cgroup budget figures will be skipped")
    t0 = time.time()
    if a.metric == "all":
        for f in METRICS.values():
            f()
    elif a.metric == "smoke":
        smoke()
    elif a.metric == "hold":
        hold(a.bin)
    else:
        METRICS[a.metric]()
    print(f"\n{a.metric}: {time.time() - t0:.0f} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
