"""The reference workload: a FastAPI app served by `uvicorn main:app --fd 3` under drover."""

import asyncio
import os
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def root():
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
