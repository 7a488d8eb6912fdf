"""The one-shot migration of config/dev.toml's local stack: brings the SQLite schema at
$DATABASE (default var/app.db) up to date and exits 0; any failure exits non-zero, and drover
then starts neither the API nor the worker (`depends_on = { migrate = "succeeded" }`)."""

import os
import sqlite3

path = os.environ.get("DATABASE", "var/app.db")
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
with sqlite3.connect(path) as db:
    db.execute("CREATE TABLE IF NOT EXISTS done (job TEXT NOT NULL, worker_pid INTEGER, at REAL)")
print(f"migrate: {path} is up to date", flush=True)
