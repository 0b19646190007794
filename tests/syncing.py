"""Helpers for sync tests: a source database, targets, running a sync, reading a target."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from pyglue.sync import engine, mappings, targets
from tests import factories as f


@dataclass
class World:
    """A migrated source database with one tenancy, and helpers to add targets and sync."""

    dsn: str
    conn: psycopg.Connection  # autocommit, dict rows
    make_database: object
    tenancy: uuid.UUID = None
    targets: dict[str, str] = field(default_factory=dict)

    def add_target(self, name: str = "main", tenancy=None, dsn: str | None = None) -> str:
        dsn = dsn or self.make_database()
        targets.add(self.conn, tenancy or self.tenancy, name, dsn)
        self.targets[name] = dsn
        return dsn

    def sync(self, tenancy=None, page_size: int = 5000, names=None, extra_dirs=None,
             paged: bool = False) -> engine.TenancyResult:
        """`pyglue sync --tenant`; paged: without snapshot templates, so a first sync goes page by page."""
        chosen = mappings.select(mappings.load_all(extra_dirs), names)
        if paged:
            chosen = without_snapshots(chosen)
        return engine.sync_until_caught_up(self.dsn, tenancy or self.tenancy, chosen,
                                           engine.Options(page_size=page_size, ignore_backoff=True))

    def rows(self, table: str, target: str = "main", order: str = "1") -> list[dict]:
        with psycopg.connect(self.targets[target], row_factory=dict_row) as c:
            return c.execute(f"select * from {table} order by {order}").fetchall()

    def cursors(self, target: str = "main") -> dict[str, int]:
        with psycopg.connect(self.targets[target]) as c:
            return dict(c.execute("select mapping_name, last_synced_sequence_id from _pyglue_sync_metadata").fetchall())


def without_snapshots(chosen: list[mappings.Mapping]) -> list[mappings.Mapping]:
    return [dataclasses.replace(m, snapshot_sql=None) for m in chosen]


def make_world(fresh_db, connect, make_database) -> World:
    conn = connect(fresh_db, autocommit=True)
    world = World(fresh_db, conn, make_database)
    world.tenancy = f.tenancy(conn)
    return world


def source_users(conn, tenancy) -> set[tuple]:
    return {(r["id"], r["display_name"]) for r in conn.execute(
        "select id, display_name from app.users where tenancy_id = %s", (tenancy,))}


def target_users(world: World, target: str = "main") -> set[tuple]:
    return {(r["id"], r["display_name"]) for r in world.rows("users", target)}


def write_mapping(folder, name, fetch, spec=None, snapshot: str | None = None):
    d = folder / name
    d.mkdir(parents=True)
    if snapshot is not None:
        (d / "snapshot.sql.j2").write_text(snapshot)
    (d / "mapping.json").write_text(json.dumps(spec or {"source_table": "app.users", "target_table": name,
                                                        "key_columns": ["id"]}))
    (d / "fetch.sql.j2").write_text(fetch)
    (d / "ddl.sql.j2").write_text("create table if not exists {{ schema | ident }}.{{ table | ident }}"
                                  " (id uuid primary key, display_name text)")
    return folder
