"""The database-like program of config/dev.toml's local stack: a job queue served on drover's
socket (fd 3), one line per command — `PUT <job>` answers `OK`, `TAKE` waits for a job and
answers it. Jobs are kept in memory. A stand-in for the Redis or PostgreSQL a real stack runs,
needing nothing installed. `python jobqueue.py put JOB [PORT]` gives it a job (port 6390 unless
told) and prints the answer."""

import asyncio
import signal
import socket
import sys

jobs: asyncio.Queue = asyncio.Queue()


async def client(reader, writer):
    try:
        await serve(reader, writer)
    except (asyncio.CancelledError, ConnectionError):
        pass  # shutting down with a TAKE waiting, or the client went away
    finally:
        writer.close()


async def serve(reader, writer):
    while line := await reader.readline():
        cmd, _, arg = line.decode(errors="replace").strip().partition(" ")
        if cmd == "PUT" and arg:
            jobs.put_nowait(arg)
            writer.write(b"OK\n")
        elif cmd == "TAKE":
            writer.write((await jobs.get()).encode() + b"\n")
        else:
            writer.write(b"ERR expected PUT <job> or TAKE\n")
        await writer.drain()


async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # drover bound the socket and passed it as fd 3 (sockets = ["queue"])
    server = await asyncio.start_server(client, sock=socket.socket(fileno=3))
    print("queue: serving on drover's socket", flush=True)
    async with server:
        await stop.wait()
    print("queue: stopped", flush=True)


if sys.argv[1:2] == ["put"] and len(sys.argv) in (3, 4):
    port = int(sys.argv[3]) if len(sys.argv) == 4 else 6390
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"PUT {sys.argv[2]}\n".encode())
        print(s.makefile().readline().strip())
else:
    asyncio.run(main())
