"""The embedded default server: a private Postgres from the pgserver wheel under $PYGLUE_HOME.

pgserver runs the server as an OS user `pgserver` when we are root, listens only on a
unix socket inside the data directory, and keeps running after we exit (cleanup_mode=None),
so every later pyglue command reuses it in a few milliseconds.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from pyglue import paths
from pyglue.errors import PyglueError


@dataclass(frozen=True)
class Embedded:
    data_dir: Path
    dsn: str
    pid: int


def data_dir(home: Path | None = None) -> Path:
    return (home or paths.home()) / "pgdata"


def _pgserver():
    # pgserver keeps an inter-process lock file under the runtime dir; without one it warns.
    runtime = paths.home()
    runtime.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RuntimeDirWarning from platformdirs
        import pgserver

    return pgserver


def start(home: Path | None = None) -> Embedded:
    """Start the embedded server, or reuse it if it already runs; returns where it is."""
    pgdata = data_dir(home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # pgserver raises CalledProcessError, OSError, AssertionError, ...
        raise PyglueError(f"cannot start the embedded Postgres in {pgdata}: {exc}") from None
    return Embedded(pgdata, server.get_uri(), server.get_pid())


def running(home: Path | None = None) -> Embedded | None:
    """The running embedded server, or None, without starting one."""
    pgdata = data_dir(home)
    if not (pgdata / "postmaster.pid").exists():
        return None
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return Embedded(pgdata, info.get_uri(), info.pid)


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server; False when none was running."""
    server = running(home)
    if server is None:
        return False
    pg_ctl(server.data_dir, "-w", "-m", "fast", "stop")
    return True


def pg_ctl(pgdata: Path, *args: str) -> None:
    """pg_ctl on an embedded server's data directory, through pgserver's own wrapper, as the
    OS user pgserver runs the server as (pgserver, when we are root)."""
    _pgserver()
    from pgserver._commands import pg_ctl as run

    run(list(args), pgdata=pgdata, user="pgserver" if os.geteuid() == 0 else None)
