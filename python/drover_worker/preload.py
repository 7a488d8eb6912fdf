"""The preloader: drover's `preload = true` (docs/worker-protocol.md).

It imports the application once, freezes the garbage collector's view of everything imported
(gc.freeze(): collections in the workers never touch, and so never copy, those pages), tells
drover "ready", then forks one worker per request. Each worker is forked twice — the middle
process exits at once, so the worker is re-parented to drover (a child subreaper, or PID 1) —
puts itself in its own process group, announces its own pid to drover (so the kernel's
credentials on the message prove who sent it), and waits until drover has placed it (its
cgroup) before it serves. The preloader itself never serves and never runs the app's lifespan: that runs in
each worker, with its own event loop.
"""

import gc
import os
import signal
import socket
import sys
import threading
import time


def _log(msg):
    print(f"drover-uvicorn preloader: {msg}", file=sys.stderr, flush=True)


def preloader(config, server_class, fd):
    ctl = socket.socket(fileno=fd)
    try:
        config.load()
    except SystemExit as e:
        ctl.send(f"error cannot load the app {config.app!r} (exit {e.code})".encode())
        return 1
    except BaseException as e:  # noqa: BLE001 - everything goes to drover, with its name
        ctl.send(f"error cannot load the app {config.app!r}: {type(e).__name__}: {e}".encode())
        return 1
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        msg = (
            f"error the preloader runs {len(threads) + 1} threads after importing {config.app!r} "
            f"(besides the main one: {', '.join(threads)}); fork() copies only the calling thread, "
            "so the workers would inherit locks held by threads that do not exist in them. "
            "Start threads in the app's lifespan startup (it runs in each worker), not at import; "
            "or set preload = false"
        )
        _log(msg[6:])
        ctl.send(msg.encode())
        return 1
    gc.collect()
    gc.freeze()
    ctl.send(b"ready")
    gos = {}
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 4096, 1)
        except InterruptedError:
            continue
        if not msg:
            return 0  # drover closed its end: it is gone or stopping us
        cmd, _, arg = msg.decode().partition(" ")
        if cmd == "fork":
            out = fds[0] if fds else None
            try:
                pid, go = _fork(int(arg), out, ctl, config, server_class)
            except OSError as e:
                ctl.send(f"error fork: {e}".encode())
                continue
            finally:
                if out is not None:
                    os.close(out)
            # the worker announced itself to drover (`pid PID`, with the kernel's credentials);
            # drover answers go or abort for it
            gos[pid] = go
        elif cmd in ("go", "abort"):
            go = gos.pop(int(arg), None)
            if go is not None:
                if cmd == "go":
                    os.write(go, b"g")
                os.close(go)
        else:
            _log(f"unknown request {msg!r}; ignored")


def _fork(index, out, ctl, config, server_class):
    """Fork worker `index`; its pid once it is re-parented and in its own process group."""
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        code = 1
        try:
            os.close(go_w)
            os.close(pid_r)
            middle_pid = os.getpid()
            if os.fork() != 0:
                os._exit(0)  # the middle process: the worker is re-parented to drover
            os.setpgid(0, 0)
            # drover accepts a worker only once it is drover's own child: wait for the middle
            # process to be gone (microseconds)
            while os.getppid() == middle_pid:
                time.sleep(0.0002)
            # The worker itself tells drover its pid: the message carries its credentials,
            # which the kernel fills in, so drover knows the claim comes from the process it
            # names (docs/worker-protocol.md). Then the preloader learns it too, for the go.
            ctl.send(f"pid {os.getpid()}".encode())
            ctl.close()
            os.write(pid_w, str(os.getpid()).encode())
            os.close(pid_w)
            code = _worker(index, out, go_r, config, server_class)
        except BaseException as e:  # noqa: BLE001
            _log(f"worker {index}: {type(e).__name__}: {e}")
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(pid_w)
    os.waitpid(middle, 0)
    raw = os.read(pid_r, 32)
    os.close(pid_r)
    if not raw:
        os.close(go_w)
        raise OSError("the forked worker did not report its pid")
    return int(raw), go_w


def _worker(index, out, go_r, config, server_class):
    if out is not None:
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    # drover's go: placed in its cgroup (an empty read: drover aborted it)
    placed = os.read(go_r, 1) == b"g"
    os.close(go_r)
    if not placed:
        return 0
    _die_with_parent()
    os.environ["DROVER_WORKER"] = str(index)
    os.environ["LISTEN_PID"] = str(os.getpid())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server_class(config).run()
    return 0


def _die_with_parent():
    """PR_SET_PDEATHSIG: the worker's parent is now drover; die with it, as drover's own
    workers do."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
