"""The queue worker of config/dev.toml's local stack: takes jobs from the queue program (port
$QUEUE_PORT, default 6390) and records each in the SQLite database the migration made. On TERM
it finishes the job in hand and exits 0."""

import os
import signal
import socket
import sqlite3
import time

stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
db = sqlite3.connect(os.environ.get("DATABASE", "var/app.db"))
conn = socket.create_connection(("127.0.0.1", int(os.environ.get("QUEUE_PORT", "6390"))))
conn.settimeout(0.5)
print("worker: waiting for jobs", flush=True)
asked, buf = False, b""
while not stopping:
    if not asked:
        conn.sendall(b"TAKE\n")  # one job at a time
        asked = True
    try:
        chunk = conn.recv(4096)
    except (TimeoutError, socket.timeout):
        continue  # look at `stopping` twice a second
    if not chunk:
        print("worker: the queue went away", flush=True)
        raise SystemExit(1)
    buf += chunk
    if b"\n" not in buf:
        continue
    line, buf = buf.split(b"\n", 1)
    job, asked = line.decode(errors="replace"), False
    with db:
        db.execute("INSERT INTO done VALUES (?, ?, ?)", (job, os.getpid(), time.time()))
    print(f"worker: did {job}", flush=True)
print("worker: stopped", flush=True)
