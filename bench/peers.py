"""How each supervisor is started, asked for its workers, reloaded and stopped.

Every peer runs in its own temporary directory and its own session; `stop()` ends it by pid
(PM2's daemon, which detaches, by its pid file) and then kills whatever is left in its process
groups, so a benchmark never leaves a process behind.

Two kinds of workload:
  "stamp" - N copies of bench/.build/stamp (a C program that writes its pid and the time right
            after exec, then sleeps): supervisors that run any command.
  "app"   - N FastAPI workers of bench/app.py serving one port: the socket-sharing peers.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv", "bin")
STAMP = os.path.join(BENCH, ".build", "stamp")
DROVER = os.environ.get("DROVER_BIN", os.path.join(ROOT, "target", "release", "drover"))
PM2_BIN = os.path.join(BENCH, "node_modules", ".bin", "pm2")
UVICORN_FLAGS = ["--no-access-log", "--log-level", "warning"]
TOKEN = "bench-token-0123456789abcdef"


def wait_for(cond, what, deadline=30.0, every=0.01):
    end = time.time() + deadline
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"timed out after {deadline:.0f}s waiting for {what}")


def stop_group(proc, grace=15):
    """TERM a process started with start_new_session, and its group; KILL after `grace` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_open(port):
    import socket
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Peer:
    name = "?"
    kinds = ("stamp", "app")

    def __init__(self, kind, workers, port=None, stamps=None, extra=None):
        assert kind in self.kinds, f"{self.name} does not run {kind}"
        self.kind, self.workers, self.port, self.stamps = kind, workers, port, stamps
        self.extra = extra or {}
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        self.proc = None
        self.groups = set()

    # -- to override
    def argv(self):
        raise NotImplementedError

    def worker_pids(self):
        return [p for p in children(self.main_pid()) if self.is_worker(p)]

    def is_worker(self, pid):
        return True

    def own_pids(self):
        """The supervisor's own processes (not workers): what its memory and CPU figures cover."""
        return [self.main_pid()]

    def reload(self):
        os.kill(self.main_pid(), signal.SIGHUP)

    def main_pid(self):
        return self.proc.pid

    # -- common
    def env(self):
        e = dict(os.environ)
        e["PATH"] = VENV + ":" + e.get("PATH", "")
        e["PYTHONPATH"] = BENCH
        if self.stamps:
            e["BENCH_STAMPS"] = self.stamps
        return e

    def start(self):
        self.log = open(os.path.join(self.tmp, "out.log"), "w")
        self.proc = subprocess.Popen(self.argv(), cwd=BENCH, env=self.env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.add(self.proc.pid)
        return self

    def ready(self, deadline=60.0):
        def ok():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            w = self.worker_pids()
            if len(w) < self.workers:
                return False
            if self.kind == "app":
                return port_open(self.port) and http_ok(self.port)
            return True
        wait_for(ok, f"{self.name}: {self.workers} workers", deadline, 0.05)
        for p in self.worker_pids():
            try:
                self.groups.add(os.getpgid(p))
            except OSError:
                pass
        return self

    def tail(self, n=15):
        try:
            return "".join(open(os.path.join(self.tmp, "out.log")).readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout=30.0):
        """SIGTERM the supervisor; returns (exit code, seconds to exit)."""
        self.note_workers()
        t0 = time.time()
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        elif self.proc:
            rc = self.proc.returncode
        took = time.time() - t0
        self.cleanup()
        return rc, took

    def note_workers(self):
        """Remember the process groups of the workers running now: replacements started after
        ready() (Circus puts each in a session of its own) must be cleaned up too."""
        try:
            pids = self.worker_pids()
        except Exception:  # noqa: BLE001 - a supervisor already gone has no workers to note
            pids = []
        for p in pids:
            try:
                self.groups.add(os.getpgid(p))
            except OSError:
                pass

    def cleanup(self):
        self.kill_groups()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def kill_groups(self):
        for g in list(self.groups):
            try:
                os.killpg(g, signal.SIGKILL)
            except OSError:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http_ok(port, path="/"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Drover(Peer):
    name = "drover"

    def argv(self):
        conf = os.path.join(self.tmp, "drover.toml")
        with open(os.path.join(self.tmp, "token"), "w") as f:
            f.write(TOKEN)
        os.chmod(os.path.join(self.tmp, "token"), 0o600)
        lines = [
            "[supervisor]",
            'status = "127.0.0.1:0"',
            f'control_token_file = "{self.tmp}/token"',
            'drain_delay = "0s"',
            self.extra.get("supervisor", ""),
            self.extra.get("budget", ""),
        ]
        if self.kind == "app":
            lines += [
                "[socket.http]",
                f'listen = "127.0.0.1:{self.port}"',
                "[program.web]",
                "command = " + json.dumps(self.extra.get(
                    "command", [os.path.join(VENV, "uvicorn"), "app:app", "--fd", "3"] + UVICORN_FLAGS)),
                'sockets = ["http"]',
            ]
        else:
            lines += ["[program.web]", "command = " + json.dumps([STAMP, self.stamps or "/dev/null"])]
        lines += [
            f"workers = {self.workers}",
            self.extra.get("program", 'backoff = { initial = "100ms", max = "30s", reset_after = "1s" }'),
        ]
        lines += self.extra.get("tables", [])
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [DROVER, "run", "-c", conf]

    def status_addr(self):
        if getattr(self, "_addr", None):
            return self._addr

        def addr():
            m = re.search(r"status endpoint on ([0-9.:]+)", open(os.path.join(self.tmp, "out.log")).read())
            return m and m.group(1)
        self._addr = wait_for(addr, "drover's status address")
        return self._addr

    def status(self):
        with urllib.request.urlopen(f"http://{self.status_addr()}/status", timeout=10) as r:
            return json.load(r)

    def worker_pids(self):
        try:
            st = self.status()
        except (OSError, TimeoutError, ValueError):
            return []
        return [w["pid"] for p in st["programs"] for w in p["workers"] if w["pid"] and w["state"] == "running"]

    def own_pids(self):
        # drover and its guard (a fork of drover that kills the workers if drover is SIGKILLed)
        return [self.proc.pid] + [p for p in children(self.proc.pid) if cmdline(p).startswith(DROVER)]

    def reload(self):
        req = urllib.request.Request(f"http://{self.status_addr()}/programs/web/restart", method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"}, data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def reload_done(self):
        """True once every worker was started after the reload and is ready."""
        p = self.status()["programs"][0]
        return not p["rolling"] and p["ready_workers"] == self.workers


class Uvicorn(Peer):
    name = "uvicorn --workers"
    kinds = ("app",)

    def argv(self):
        return [os.path.join(VENV, "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers)] + UVICORN_FLAGS

    def is_worker(self, pid):
        return "multiprocessing" in cmdline(pid) and "resource_tracker" not in cmdline(pid)


class Gunicorn(Peer):
    name = "gunicorn"
    kinds = ("app",)

    def argv(self):
        return [os.path.join(VENV, "gunicorn"), "app:app", "-k", "uvicorn.workers.UvicornWorker",
                "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}", "--log-level", "warning"]


class Supervisord(Peer):
    name = "supervisord"

    def argv(self):
        conf = os.path.join(self.tmp, "supervisord.conf")
        sock = os.path.join(self.tmp, "supervisor.sock")
        body = f"""[supervisord]
nodaemon = true
logfile = {self.tmp}/supervisord.log
pidfile = {self.tmp}/supervisord.pid
childlogdir = {self.tmp}
[unix_http_server]
file = {sock}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{sock}
"""
        if self.kind == "app":
            body += f"""[fcgi-program:web]
socket = tcp://127.0.0.1:{self.port}
command = {VENV}/uvicorn app:app --fd 0 {' '.join(UVICORN_FLAGS)}
directory = {BENCH}
process_name = %(program_name)s_%(process_num)s
numprocs = {self.workers}
startsecs = 0
stopasgroup = true
"""
        else:
            body += f"""[program:web]
command = {STAMP} {self.stamps or '/dev/null'}
process_name = %(program_name)s_%(process_num)s
numprocs = {self.workers}
startsecs = 0
"""
        with open(conf, "w") as f:
            f.write(body)
        self.ctl = [os.path.join(VENV, "supervisorctl"), "-c", conf]
        return [os.path.join(VENV, "supervisord"), "-c", conf]

    def reload(self):
        # supervisord has no rolling restart: `restart` stops every process, then starts them
        subprocess.run(self.ctl + ["restart", "web:*"], capture_output=True, timeout=60)


class Circus(Peer):
    name = "circus"

    def argv(self):
        import socket
        ports = []
        # no stats_endpoint: circus turns statsd on when one is named, and its circusd-stats
        # process outlived every run
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
            s.close()
        conf = os.path.join(self.tmp, "circus.ini")
        body = f"""[circus]
endpoint = tcp://127.0.0.1:{ports[0]}
pubsub_endpoint = tcp://127.0.0.1:{ports[1]}
statsd = false
"""
        if self.kind == "app":
            body += f"""[socket:web]
host = 127.0.0.1
port = {self.port}
[watcher:web]
cmd = {VENV}/uvicorn app:app --fd $(circus.sockets.web) {' '.join(UVICORN_FLAGS)}
use_sockets = true
working_dir = {BENCH}
numprocesses = {self.workers}
copy_env = true
"""
        else:
            body += f"""[watcher:web]
cmd = {STAMP} {self.stamps or '/dev/null'}
numprocesses = {self.workers}
"""
        with open(conf, "w") as f:
            f.write(body)
        self.ctl = [os.path.join(VENV, "circusctl"), "--endpoint", f"tcp://127.0.0.1:{ports[0]}"]
        return [os.path.join(VENV, "circusd"), conf]

    def is_worker(self, pid):
        c = cmdline(pid)
        return "uvicorn" in c or STAMP in c  # circusd also has helper children

    def reload(self):
        # graceful reload: new processes first, then the old ones stopped
        subprocess.run(self.ctl + ["reload", "web"], capture_output=True, timeout=60)


class PM2(Peer):
    name = "PM2 (fork mode)"
    kinds = ("stamp",)

    def env(self):
        e = super().env()
        e["PM2_HOME"] = os.path.join(self.tmp, "pm2")
        return e

    def start(self):
        eco = os.path.join(self.tmp, "ecosystem.config.js")
        app = {"name": "web", "script": STAMP, "args": [self.stamps or "/dev/null"], "interpreter": "none",
               "exec_mode": "fork", "instances": self.workers, "autorestart": True}
        with open(eco, "w") as f:
            f.write("module.exports = " + json.dumps({"apps": [app]}) + ";\n")
        self.log = open(os.path.join(self.tmp, "out.log"), "w")
        subprocess.run([PM2_BIN, "start", eco], env=self.env(), stdout=self.log, stderr=subprocess.STDOUT,
                       timeout=60, check=True, start_new_session=True)
        self.daemon = int(wait_for(lambda: _read(os.path.join(self.tmp, "pm2", "pm2.pid")), "PM2 daemon pid"))
        self.groups.add(os.getpgid(self.daemon))
        return self

    def main_pid(self):
        return self.daemon

    def ready(self, deadline=60.0):
        wait_for(lambda: len(self.worker_pids()) >= self.workers, "PM2 workers", deadline, 0.05)
        return self

    def stop(self, timeout=30.0):
        self.note_workers()
        t0 = time.time()
        r = subprocess.run([PM2_BIN, "kill"], env=self.env(), capture_output=True, timeout=timeout)
        took = time.time() - t0
        self.cleanup()
        return r.returncode, took

    def cleanup(self):
        self.kill_groups()
        for p in [self.daemon] + children(self.daemon):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _read(path):
    try:
        return open(path).read().strip() or None
    except OSError:
        return None


STAMP_PEERS = [Drover, Supervisord, Circus, PM2]
APP_PEERS = [Drover, Uvicorn, Gunicorn, Supervisord, Circus]


def versions():
    out = {}
    for mod in ("uvicorn", "uvloop", "httptools", "gunicorn", "supervisor", "circus", "fastapi"):
        r = subprocess.run([os.path.join(VENV, "python"), "-c",
                            f"import importlib.metadata as m; print(m.version('{mod}'))"], capture_output=True, text=True)
        out[mod] = r.stdout.strip()
    # from its package.json: `pm2 --version` can leave a daemon behind
    with open(os.path.join(BENCH, "node_modules", "pm2", "package.json")) as f:
        out["pm2"] = json.load(f)["version"]
    out["drover"] = subprocess.run([DROVER, "--version"], capture_output=True, text=True).stdout.strip()
    out["python"] = sys.version.split()[0]
    out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    out["wrk"] = (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout or "").split("\n")[0].strip()
    out["kernel"] = os.uname().release
    return out
