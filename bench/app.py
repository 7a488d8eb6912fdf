"""The benchmark app: FastAPI hello world, and a slow route for graceful-stop runs.

With BENCH_STAMPS set, each process that imports it appends "PID SECONDS" first thing (before
FastAPI is imported): the respawn figure for peers whose workers are Python processes.
"""
import os
import time

if os.environ.get("BENCH_STAMPS"):
    with open(os.environ["BENCH_STAMPS"], "a") as f:
        f.write(f"{os.getpid()} {time.time():.6f}\n")

import asyncio  # noqa: E402

from fastapi import FastAPI  # noqa: E402

app = FastAPI()


@app.get("/")
async def hello():
    return {"hello": "world"}


@app.get("/slow")
async def slow(seconds: float = 2.0):
    await asyncio.sleep(min(seconds, 30.0))
    return {"slept": seconds}
