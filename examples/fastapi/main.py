"""The reference workload: a FastAPI app served by `uvicorn main:app --fd 3` under drover."""

import asyncio
import contextlib
import os
import time

from fastapi import FastAPI, Response

try:  # the app's own metrics (optional): right across workers with drover's prometheus_multiproc_dir
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError:  # pragma: no cover
    prometheus_client = None

if prometheus_client is not None:
    REQUESTS = prometheus_client.Counter("app_requests_total", "Requests served by the app.")
    # one sample per live worker, summed; a dead worker's file is removed by drover
    WORKERS = prometheus_client.Gauge("app_workers", "Workers serving.", multiprocess_mode="livesum")


@contextlib.asynccontextmanager
async def lifespan(app):
    # runs in each worker (under drover's preload too: after the fork, never in the preloader)
    if prometheus_client is not None:
        WORKERS.inc()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/metrics")
def metrics():
    """The app's metrics; with PROMETHEUS_MULTIPROC_DIR, every worker's together."""
    if prometheus_client is None:
        return Response("prometheus_client is not installed\n", status_code=404)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prometheus_client.REGISTRY
    return Response(prometheus_client.generate_latest(registry), media_type=prometheus_client.CONTENT_TYPE_LATEST)


@app.get("/")
def root():
    if prometheus_client is not None:
        REQUESTS.inc()
    return {"hello": "world", "pid": os.getpid(), "worker": os.environ.get("DROVER_WORKER")}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.get("/slow")
async def slow(seconds: float = 2.0):
    await asyncio.sleep(min(seconds, 60.0))
    return {"slept": seconds, "pid": os.getpid()}


@app.get("/burn")
def burn(ms: int = 100):
    """Burn CPU for `ms` milliseconds (autoscaling demos)."""
    end = time.perf_counter() + min(ms, 10_000) / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return {"iterations": n, "pid": os.getpid()}
