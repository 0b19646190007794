"""Where pyglue's SQL and templates live, and where it keeps local state."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "sql"
MIGRATIONS = SQL / "migrations"
FUNCTIONS = SQL / "functions"
TRIGGERS = SQL / "triggers"
TEMPLATES = ROOT / "templates"
DASHBOARD_TEMPLATES = TEMPLATES / "dashboard"  # pages of pyglue dashboard


def home() -> Path:
    """Directory for local state (the embedded server's data): $PYGLUE_HOME or ./.pyglue."""
    return Path(os.environ.get("PYGLUE_HOME") or Path.cwd() / ".pyglue").resolve()
