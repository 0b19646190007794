"""Migrations: naming, yoyo vs pyglue, concurrent runners, a killed runner, the upgrade path."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pyglue import dsn as dsns
from pyglue import migrate, paths
from pyglue.errors import PyglueError
from tests import catalog
from tests.sessions import wait_for

ALL = sorted(p.stem for p in paths.MIGRATIONS.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def pyglue_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyglue", *args]


def test_migration_names_have_no_gaps_and_chain_depends():
    assert migrate.check_names() == []


def test_check_names_reports_gap_and_bad_depends(tmp_path):
    (tmp_path / "0001_a.sql").write_text("-- depends:\nselect 1;\n")
    (tmp_path / "0003_c.sql").write_text("-- depends: 0001_a\nselect 1;\n")
    (tmp_path / "2_bad.sql").write_text("select 1;\n")
    problems = migrate.check_names(tmp_path)
    assert "0003_c.sql: expected number 0002" in problems
    assert "2_bad.sql: name is not NNNN_slug.sql" in problems


def test_every_migration_says_why_and_has_a_rollback_or_a_reason():
    for path in paths.MIGRATIONS.glob("[0-9]*.sql"):
        if path.name.endswith(".rollback.sql"):
            continue
        text = path.read_text()
        assert text.startswith("-- "), f"{path.name} lacks a leading comment saying why"
        rollback = path.with_name(path.stem + ".rollback.sql")
        assert rollback.exists() or "-- no rollback:" in text, f"{path.name}: no rollback and no reason"


def test_yoyo_apply_and_pyglue_migrate_build_the_same_schema(make_database):
    by_yoyo, by_pyglue = make_database(), make_database()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "yoyo"), "apply", "--batch", "--database", dsns.to_yoyo_url(by_yoyo)],
        cwd=paths.ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert migrate.migrate(by_pyglue) == ALL
    yoyo_catalog, pyglue_catalog = catalog.snapshot(by_yoyo), catalog.snapshot(by_pyglue)
    assert len(yoyo_catalog) > 50
    assert yoyo_catalog == pyglue_catalog


def test_second_run_applies_nothing(make_database):
    target = make_database()
    assert migrate.migrate(target) == ALL
    assert migrate.migrate(target) == []
    assert all(state.applied for state in migrate.status(target))


@pytest.mark.slow
def test_eight_concurrent_runners_apply_each_migration_once(make_database):
    target = make_database()
    runners = [subprocess.Popen(pyglue_cmd("--dsn", target, "db", "migrate"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=paths.ROOT) for _ in range(8)]
    results = [(r.wait(timeout=120), *r.communicate()) for r in runners]
    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    applied_counts = sorted(int(out.strip().splitlines()[-1].split()[0]) for _, out, _ in results)
    assert applied_counts == [0] * 7 + [len(ALL)]
    with psycopg.connect(target) as c:
        ids = [r[0] for r in c.execute("select migration_id from _yoyo_migration order by migration_id")]
        assert ids == ALL
        assert c.execute("select count(*) from yoyo_lock").fetchone()[0] == 0


def _sleepy_migrations(tmp_path: Path) -> Path:
    """The real migrations plus one that sleeps as long as the session setting asks."""
    folder = tmp_path / "migrations"
    shutil.copytree(paths.MIGRATIONS, folder)
    (folder / f"{len(ALL) + 1:04d}_sleep.sql").write_text(
        f"-- sleep: lets a test kill a runner mid-migration\n-- depends: {ALL[-1]}\n"
        "create table if not exists public.slept (at timestamptz default now());\n"
        "select pg_sleep(coalesce(nullif(current_setting('pyglue.test_sleep', true), ''), '0')::float);\n"
    )
    return folder


@pytest.mark.slow
def test_runner_killed_while_holding_the_lock_does_not_block_the_next(make_database, tmp_path):
    target = make_database()
    folder = _sleepy_migrations(tmp_path)
    env = dict(os.environ, PGOPTIONS="-c pyglue.test_sleep=60")
    victim = subprocess.Popen(pyglue_cmd("--dsn", target, "db", "migrate", "--migrations-dir", str(folder)),
                              env=env, cwd=paths.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with psycopg.connect(target, autocommit=True) as watcher:
        def sleeping() -> bool:
            return watcher.execute(
                "select count(*) from pg_stat_activity where query like 'select pg_sleep%%' and state = 'active'"
            ).fetchone()[0] == 1
        wait_for(sleeping)
        held = watcher.execute("select count(*) from pg_locks where locktype = 'advisory' and granted").fetchone()[0]
        assert held == 1
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)

    started = time.monotonic()
    done = subprocess.run(pyglue_cmd("--dsn", target, "db", "migrate", "--migrations-dir", str(folder),
                                     "--lock-timeout", "20"),
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20
    assert done.stdout.splitlines()[0] == f"applying {len(ALL) + 1:04d}_sleep"
    assert "1 migration(s) applied" in done.stdout
    assert [s.applied for s in migrate.status(target, folder)] == [True] * (len(ALL) + 1)


def test_yoyo_lock_row_is_kept_while_another_session_could_hold_it(make_database):
    target = make_database()
    migrate.migrate(target)
    with psycopg.connect(target, autocommit=True) as other:  # could be a live `yoyo apply`
        other.execute("insert into yoyo_lock (locked, ctime, pid) values (1, now(), 424242)")
        with pytest.raises(PyglueError, match="held by process 424242.*--break-lock"):
            migrate.migrate(target, lock_timeout=0.5)
        assert other.execute("select count(*) from yoyo_lock").fetchone()[0] == 1
        assert migrate.migrate(target, break_lock=True) == []
        assert other.execute("select count(*) from yoyo_lock").fetchone()[0] == 0


@pytest.mark.slow
def test_lock_row_of_a_killed_yoyo_apply_is_removed_without_waiting(make_database, tmp_path):
    """A plain `yoyo apply` killed mid-migration leaves its committed yoyo_lock row; once its
    session is gone nobody can hold it, and pyglue db migrate removes it with one line."""
    target = make_database()
    folder = _sleepy_migrations(tmp_path)
    env = dict(os.environ, PGOPTIONS="-c pyglue.test_sleep=60")
    yoyo = [str(Path(sys.executable).with_name("yoyo")), "apply", "--batch", "--no-config-file",
            "--database", dsns.to_yoyo_url(target), str(folder)]
    victim = subprocess.Popen(yoyo, env=env, cwd=paths.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with psycopg.connect(target, autocommit=True) as watcher:
        def sleeping() -> bool:
            return watcher.execute("select count(*) from pg_stat_activity"
                                   " where query like 'select pg_sleep%%' and state = 'active'").fetchone()[0] == 1
        wait_for(sleeping)
        assert watcher.execute("select count(*) from yoyo_lock").fetchone()[0] == 1
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # the server ends the orphaned backend when it next talks to its client; here, now
        watcher.execute("select pg_terminate_backend(pid) from pg_stat_activity where query like 'select pg_sleep%%'"
                        " and pid <> pg_backend_pid()")
        wait_for(lambda: not sleeping())

    started = time.monotonic()
    done = subprocess.run(pyglue_cmd("--dsn", target, "db", "migrate", "--migrations-dir", str(folder),
                                     "--lock-timeout", "60"),
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    lines = done.stdout.splitlines()
    assert lines[0].startswith("removed a stale yoyo_lock row of process ")
    assert "no other session is connected" in lines[0]
    assert lines[1:] == [f"applying {len(ALL) + 1:04d}_sleep", f"1 migration(s) applied to {dsns.describe(target)}"]
    assert [s.applied for s in migrate.status(target, folder)] == [True] * (len(ALL) + 1)
    with psycopg.connect(target) as c:
        assert c.execute("select count(*) from yoyo_lock").fetchone()[0] == 0


def test_upgrade_path_keeps_data_written_before_the_last_migration(make_database, tmp_path):
    target = make_database()
    older = tmp_path / "older"
    older.mkdir()
    base = max(2, len(ALL) - 1)  # 0002 creates the app model the data goes into
    for stem in ALL[:base]:
        for path in paths.MIGRATIONS.glob(f"{stem}*.sql"):
            shutil.copy(path, older / path.name)
    migrate.migrate(target, older)
    with psycopg.connect(target) as c:
        c.execute("insert into app.projects (id, display_name) values ('before_upgrade', 'Kept')")
    assert migrate.migrate(target) == ALL[base:]
    with psycopg.connect(target) as c:
        row = c.execute("select display_name from app.projects where id = 'before_upgrade'").fetchone()
        assert row == ("Kept",)


def test_failing_migration_names_itself_and_leaves_nothing(make_database, tmp_path):
    target = make_database()
    folder = tmp_path / "bad"
    shutil.copytree(paths.MIGRATIONS, folder)
    (folder / f"{len(ALL) + 1:04d}_broken.sql").write_text(
        f"-- broken: on purpose\n-- depends: {ALL[-1]}\n"
        "create table public.half_written (id int);\nselect * from no_such_table;\n"
    )
    with pytest.raises(PyglueError, match=rf"migration {len(ALL) + 1:04d}_broken failed: .*no_such_table"):
        migrate.migrate(target, folder)
    with psycopg.connect(target) as c:
        assert c.execute("select to_regclass('public.half_written')").fetchone()[0] is None
    assert [s.applied for s in migrate.status(target, folder)] == [True] * len(ALL) + [False]


def test_new_migration_copies_routines_and_chains_depends(tmp_path):
    (tmp_path / "0001_first.sql").write_text("-- first\n-- depends:\n")
    routine = paths.FUNCTIONS / "pyglue.set_fusebox.sql"
    path = migrate.new_migration("ship_fusebox", [routine], tmp_path)
    assert path.name == "0002_ship_fusebox.sql"
    text = path.read_text()
    assert "-- depends: 0001_first\n" in text
    assert "-- copied from sql/functions/pyglue.set_fusebox.sql\n" + routine.read_text() in text
    assert migrate.check_names(tmp_path) == []
    with pytest.raises(PyglueError, match="invalid migration slug 'Bad-Slug'"):
        migrate.new_migration("Bad-Slug", [], tmp_path)


@pytest.mark.parametrize("to", [None, "0005_track_app_tables", "0002_app_model"])
def test_rollback_then_migrate_again_gives_the_same_schema(make_database, to):
    fresh, cycled = make_database(), make_database()
    migrate.migrate(fresh)
    migrate.migrate(cycled)
    undone = migrate.rollback(cycled, to)
    kept = ALL[: ALL.index(to) + 1] if to else []
    assert undone == list(reversed(ALL[len(kept):]))
    assert [s.id for s in migrate.status(cycled) if s.applied] == kept
    if to is None:
        with psycopg.connect(cycled) as c:
            assert c.execute("select count(*) from pg_namespace where nspname in ('pyglue', 'app', 'billing')"
                             ).fetchone()[0] == 0
    assert migrate.migrate(cycled) == ALL[len(kept):]
    # a dropped and re-added column keeps its new place (Postgres never reuses attnums)
    assert without_positions(catalog.snapshot(cycled)) == without_positions(catalog.snapshot(fresh))


def without_positions(snapshot: dict) -> dict:
    return {key: (value.split(" ", 1)[1] if key[0] == "column" else value) for key, value in snapshot.items()}


def test_rollback_to_an_unknown_migration_is_refused(make_database):
    with pytest.raises(PyglueError, match="unknown migration '0099_nope'"):
        migrate.rollback(make_database(), "0099_nope")


def test_item_ledger_points_move_into_chunks_and_back(make_database, tmp_path):
    """0016 rebuilds the stored points of existing histories as chunks; its rollback rebuilds
    them as rows per instant. The balances read the same, and verify_ledger() is empty, at
    each step."""
    target = make_database()
    older = tmp_path / "older"
    older.mkdir()
    for stem in ALL[:ALL.index("0016_item_ledger_chunks")]:
        for path in paths.MIGRATIONS.glob(f"{stem}*.sql"):
            shutil.copy(path, older / path.name)
    migrate.migrate(target, older)
    changes = [(10, "2030-01-01", "2030-03-01"), (-4, "2030-01-02", None), (7, "2030-01-03", None)]
    probes = ["2030-01-01", "2030-01-02", "2030-02-01", "2030-03-01"]
    expected = [10, 6, 13, 7]

    def balances(c) -> list[int]:
        assert c.execute("select count(*) from billing.verify_ledger()").fetchone() == (0,)
        return [c.execute("select billing.item_quantity(t.id, 'custom', 'c', 'credits', %s::timestamptz)"
                          " from app.tenancies t", (p,)).fetchone()[0] for p in probes]

    with psycopg.connect(target, autocommit=True) as c:
        c.execute("insert into app.projects (id, display_name) values ('p', 'P')")
        c.execute("insert into app.tenancies (project_id) values ('p')")
        for delta, at, expires in changes:
            c.execute("select billing.change_item_quantity(t.id, 'custom', 'c', 'credits', %s, %s, false, %s)"
                      " from app.tenancies t", (delta, expires, at))
        assert balances(c) == expected
        migrate.migrate(target)
        assert c.execute("select count(*), sum(cardinality(ats)) from billing.item_balance_chunks").fetchone() == (1, 4)
        assert balances(c) == expected
        migrate.rollback(target, "0015_billing_job_steps")
        assert c.execute("select count(*) from billing.item_balances").fetchone() == (4,)
        assert c.execute("select to_regclass('billing.item_balance_chunks')").fetchone() == (None,)
        assert balances(c) == expected
