"""Named SQL: `queries.load("demo_seed")` reads pyglue/queries/demo_seed.sql."""

from __future__ import annotations

from functools import cache
from pathlib import Path

FOLDER = Path(__file__).parent


@cache
def load(name: str) -> str:
    return (FOLDER / f"{name}.sql").read_text()
