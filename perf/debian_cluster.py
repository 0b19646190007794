"""A Debian PostgreSQL 15 cluster of the benchmarks' own: `15 bench` on port 5433.

The benchmarks that need a server with contrib extensions (pg_trgm) or settings of their own
(wal_level=logical for the logical replication peer, more shared memory for millions of rows)
create and start this cluster instead of changing one they did not start. Its settings live
in conf.d/pyglue-bench.conf; a change of them restarts it. Needs root (pg_createcluster) and
the Debian postgresql-15 packages.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

VERSION, NAME, PORT = "15", "bench", 5433
DSN = f"postgresql:///postgres?host=/var/run/postgresql&port={PORT}"
SETTINGS = {
    "shared_buffers": "2GB",
    "max_wal_size": "8GB",
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
}
CONF = Path(f"/etc/postgresql/{VERSION}/{NAME}/conf.d/pyglue-bench.conf")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ensure() -> str:
    """Create, configure and start the cluster as needed; the superuser DSN of its postgres database."""
    if not shutil.which("pg_createcluster"):
        raise RuntimeError("the Debian postgresql-common tools are not installed (pg_createcluster)")
    clusters = _run("pg_lsclusters", "-h").split("\n")
    if not any(line.split()[:2] == [VERSION, NAME] for line in clusters if line.strip()):
        _run("pg_createcluster", VERSION, NAME, "-p", str(PORT))
    text = "# written by perf/debian_cluster.py\n" + "".join(f"{k} = '{v}'\n" for k, v in SETTINGS.items())
    changed = not CONF.exists() or CONF.read_text() != text
    if changed:
        CONF.write_text(text)
    online = any(line.split()[:2] == [VERSION, NAME] and "online" in line for line in _run("pg_lsclusters", "-h").split("\n"))
    if not online:
        _run("pg_ctlcluster", VERSION, NAME, "start")
    elif changed:
        _run("pg_ctlcluster", VERSION, NAME, "restart")
    roles = _run("su", "postgres", "-c", f"psql -p {PORT} -qtAc \"select 1 from pg_roles where rolname = 'root'\"")
    if roles.strip() != "1":
        _run("su", "postgres", "-c", f"createuser -p {PORT} --superuser root")
    return DSN


def fetch_login(server_dsn: str) -> None:
    """A Debian server's socket uses peer authentication, which the fetch login cannot pass:
    pyglue_fetch (made by the migrations) gets a random password and PYGLUE_FETCH_DSN points
    at 127.0.0.1, as the test harness does."""
    password = secrets.token_hex(16)
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute(sql.SQL("alter role pyglue_fetch password {}").format(sql.Literal(password)))
    port = conninfo_to_dict(server_dsn).get("port") or "5432"
    os.environ["PYGLUE_FETCH_DSN"] = make_conninfo("", host="127.0.0.1", port=port, user="pyglue_fetch",
                                                   password=password)
