"""Sequencer benchmark: pyglue.sequence_changes against a bare UPDATE, and what tracking costs writes.

    .venv/bin/python -m perf.bench_sequencer [--rows 1000000] [--batch-size 50000] [--trigger-rows 200000]

Runs on the embedded server under .pyglue/bench, in a database it drops and recreates
(pyglue_bench, migrated from sql/migrations). Three measurements, one run, one machine:

1. sequencer: seed --rows flagged rows (perf/seed-tracked-rows.sql), then call
   pyglue.sequence_changes(batch) in autocommit until it returns 0;
2. baseline: flag the same rows again and stamp them with a bare batched UPDATE … nextval()
   per table, one commit per batch of the same size; the sequencer should reach half its speed;
3. tracking overhead: INSERT and UPDATE of --trigger-rows rows in three copies of app.users:
   plain (no sequence columns), columns (sequence columns and indexes, no triggers) and
   tracked (pyglue.track_table).

Both sequencer measurements start from the same kind of state: every row rewritten once
(flagged again), VACUUM ANALYZE, CHECKPOINT. Each tracking measurement starts after a
CHECKPOINT (the updates also after VACUUM FULL). Autovacuum is off on the measured tables.
Prints a table and rewrites the generated block of perf/RESULTS.md (text outside it is kept).
"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pyglue import db, embedded, migrate, paths

PERF = Path(__file__).resolve().parent
QUERIES = PERF / "sql"
SEED = PERF / "seed-tracked-rows.sql"
RESULTS = PERF / "RESULTS.md"
BENCH_HOME = paths.ROOT / ".pyglue" / "bench"
DATABASE = "pyglue_bench"
SEQUENCER_GOAL = 0.5  # sequencer rows/s over bare UPDATE rows/s
BEGIN, END = "<!-- bench_sequencer:begin -->", "<!-- bench_sequencer:end -->"

Table = tuple[str, str]  # (schema, name)
TRIGGER_VARIANTS = ("plain", "columns", "tracked")


@dataclass(frozen=True)
class Timing:
    rows: int
    seconds: float
    calls: int = 1

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass(frozen=True)
class Line:
    """One line of the report: a timing, and its ratio to the baseline of its group."""

    measure: str
    timing: Timing
    baseline: Timing | None = None
    goal: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.timing.rate / self.baseline.rate if self.baseline else None

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "no goal set" if self.baseline else ""
        return f">= {self.goal:g}: {'met' if self.ratio >= self.goal else 'MISSED'}"


# --- SQL by name ----------------------------------------------------------------------


def query(name: str, **identifiers: str | Table) -> sql.Composed:
    """perf/sql/<name>.sql with its {placeholders} replaced by quoted identifiers."""
    text = (QUERIES / f"{name}.sql").read_text()
    quoted = {k: sql.Identifier(*v) if isinstance(v, tuple) else sql.Identifier(v) for k, v in identifiers.items()}
    return sql.SQL(text).format(**quoted)


def run(conn: psycopg.Connection, name: str, params: dict | None = None, **identifiers: str | Table) -> psycopg.Cursor:
    return conn.execute(query(name, **identifiers), params)


def timed(action) -> Timing:
    """Time action(), which returns (rows, calls)."""
    start = time.perf_counter()
    rows, calls = action()
    return Timing(rows, time.perf_counter() - start, calls)


# --- set-up ---------------------------------------------------------------------------


def fresh_database(server_dsn: str, database: str = DATABASE) -> str:
    """Drop, create and migrate the benchmark's database on the server; its DSN."""
    with db.connect(server_dsn, autocommit=True) as conn:
        run(conn, "drop_database", database=database)
        run(conn, "create_database", database=database)
    dsn = make_conninfo(server_dsn, dbname=database)
    migrate.migrate(dsn)
    return dsn


def psql_path() -> str:
    """The psql of the embedded server's own version, else the one on PATH."""
    import pgserver  # already imported (and its warnings silenced) by embedded.start

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
    found = shutil.which("psql", path=str(bundled)) or shutil.which("psql")
    if not found:
        raise click.ClickException("psql not found")
    return found


def seed(dsn: str, rows: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"rows={rows}", "-d", dsn, "-f", str(SEED)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def settle(conn: psycopg.Connection, tables: list[Table]) -> None:
    """Flag every row again, vacuum, checkpoint: the start of both sequencer measurements.

    Also before the first, where the seeded rows are flagged already: the rewrite leaves the
    same free space in heap and indexes that the second measurement finds after the first.
    """
    for table in tables:
        run(conn, "reflag", table=table)
        run(conn, "vacuum_analyze", table=table)
    run(conn, "checkpoint")


def flagged(conn: psycopg.Connection, table: Table) -> int:
    return run(conn, "flagged_rows", table=table).fetchone()["flagged"]


# --- measurements ---------------------------------------------------------------------


def measure_sequencer(conn: psycopg.Connection, batch_size: int) -> Timing:
    def passes():
        rows = calls = 0
        while stamped := run(conn, "sequence_changes", {"batch_size": batch_size}).fetchone()["stamped"]:
            rows, calls = rows + stamped, calls + 1
        return rows, calls

    return timed(passes)


def measure_bare(conn: psycopg.Connection, tables: list[Table], batch_size: int) -> Timing:
    def batches():
        rows = calls = 0
        for table in tables:
            while stamped := run(conn, "stamp_batch_bare", {"batch_size": batch_size}, table=table).rowcount:
                rows, calls = rows + stamped, calls + 1
        return rows, calls

    return timed(batches)


def measure_tracking_overhead(conn: psycopg.Connection, rows: int) -> dict[str, dict[str, Timing]]:
    """INSERT and UPDATE timings of each variant of app.users: {'insert': {...}, 'update': {...}}."""
    tables = {variant: ("bench", f"users_{variant}") for variant in TRIGGER_VARIANTS}
    run(conn, "create_schema", schema="bench")
    for variant, table in tables.items():
        run(conn, "create_users_copy", table=table)
        if variant != "plain":
            run(conn, "track_table", {"table": sql.Identifier(*table).as_string(conn)})
        if variant == "columns":
            run(conn, "untrack_table", {"table": sql.Identifier(*table).as_string(conn)})
        run(conn, "autovacuum_off", table=table)

    def timed_statement(name: str, table: Table, params: dict | None = None) -> Timing:
        run(conn, "checkpoint")  # before the clock starts
        return timed(lambda: (run(conn, name, params, table=table).rowcount, 1))

    inserts = {variant: timed_statement("insert_users", table, {"rows": rows}) for variant, table in tables.items()}
    # Same physical state for the updates: stamped like after a sequencer run, then compacted.
    for variant, table in tables.items():
        if variant != "plain":
            run(conn, "stamp_all", table=table)
        run(conn, "vacuum_full_analyze", table=table)
    updates = {variant: timed_statement("rename_users", table) for variant, table in tables.items()}
    # the trigger did its job: every updated row of the tracked table is flagged again
    assert flagged(conn, tables["tracked"]) == rows and flagged(conn, tables["columns"]) == 0
    return {"insert": inserts, "update": updates}


# --- report ---------------------------------------------------------------------------


def machine_facts(conn: psycopg.Connection) -> dict[str, str]:
    server = run(conn, "server_facts").fetchone()
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {
        "uname -a": subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout.strip(),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip(),
        "memory": f"{mem_kb / 1024**2:.1f} GiB",
        "postgres": server["version"],
        "settings": ", ".join(f"{k}={server[k]}" for k in ("shared_buffers", "max_wal_size", "synchronous_commit", "fsync"))
        + " (pgserver defaults); autovacuum off on measured tables",
        "python": f"{platform.python_version()}, psycopg {psycopg.__version__}",
    }


def report_lines(seq: Timing, bare: Timing, overhead: dict[str, dict[str, Timing]], batch_size: int) -> list[Line]:
    lines = [
        Line(f"bare UPDATE … nextval(), batches of {batch_size:,} (commits: {bare.calls})", bare),
        Line(f"pyglue.sequence_changes({batch_size}) (calls: {seq.calls})", seq, bare, SEQUENCER_GOAL),
    ]
    for op, timings in overhead.items():
        plain = timings["plain"]
        lines.append(Line(f"{op} app.users copy: plain", plain))
        lines.append(Line(f"{op} app.users copy: sequence columns, untracked", timings["columns"], plain))
        lines.append(Line(f"{op} app.users copy: tracked", timings["tracked"], plain))
    return lines


def format_table(lines: list[Line], markdown: bool = False) -> str:
    header = ("measure", "rows", "seconds", "rows/s", "ratio", "goal")
    rows = [
        (
            line.measure,
            f"{line.timing.rows:,}",
            f"{line.timing.seconds:.2f}",
            f"{line.timing.rate:,.0f}",
            f"{line.ratio:.2f}" if line.ratio is not None else "",
            line.verdict,
        )
        for line in lines
    ]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|---|--:|--:|--:|--:|---|"]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join(fmt(r).rstrip() for r in [header, tuple("-" * w for w in widths), *rows])


def results_block(facts: dict[str, str], sizes: dict[str, int], args: dict, lines: list[Line]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    size = ", ".join(f"{name} {count:,}" for name, count in sizes.items())
    return "\n".join(
        [
            BEGIN,
            "<!-- generated by perf/bench_sequencer.py: edits between these markers are overwritten -->",
            f"## Latest run: {now}",
            "",
            f"`.venv/bin/python -m perf.bench_sequencer --rows {args['rows']} --batch-size {args['batch_size']}"
            f" --trigger-rows {args['trigger_rows']}`",
            "",
            *(f"- **{k}**: `{v}`" for k, v in facts.items()),
            f"- **data**: {sum(sizes.values()):,} flagged rows in 100 tenancies ({size});"
            f" tracking overhead on {args['trigger_rows']:,} rows",
            "",
            format_table(lines, markdown=True),
            "",
            "Ratios are rows/s over the baseline above them (bare UPDATE; plain table), measured in"
            f" the same run. Goal: sequencer >= {SEQUENCER_GOAL:g} × bare UPDATE; no goal is set for"
            " the tracking overhead. The update rows change display_name of rows already stamped,"
            " so on the tracked table _100_pyglue_flag_change fires for each row.",
            END,
        ]
    )


def write_block(begin: str, end: str, block: str, heading: str | None = None) -> None:
    """Replace the block between begin and end in RESULTS.md, or append it (under heading)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + (f"\n\n{heading}" if heading else "") + "\n\n" + block + "\n"
    RESULTS.write_text(new)


def write_results(block: str) -> None:
    write_block(BEGIN, END, block)


# --- main -----------------------------------------------------------------------------


@click.command()
@click.option("--rows", default=1_000_000, show_default=True, help="Flagged rows to seed for the sequencer runs.")
@click.option("--batch-size", default=50_000, show_default=True, help="Rows per sequencer pass and per bare batch.")
@click.option("--trigger-rows", default=200_000, show_default=True, help="Rows inserted and updated per tracking variant.")
def main(rows: int, batch_size: int, trigger_rows: int) -> None:
    """Benchmark the sequencer against a bare UPDATE and the write overhead of tracking."""
    server = embedded.start(BENCH_HOME)
    dsn = fresh_database(server.dsn)
    click.echo(f"seeding {rows:,} rows into {DATABASE} …", err=True)
    click.echo(f"  seeded in {seed(dsn, rows):.1f} s", err=True)
    with db.connect(dsn, autocommit=True, application_name="pyglue bench") as conn:
        tables = [(r["schema"], r["name"]) for r in run(conn, "tracked_tables")]
        sizes = {f"{s}.{n}": flagged(conn, (s, n)) for s, n in tables}
        for table in tables:
            run(conn, "autovacuum_off", table=table)

        click.echo("1/3 sequencer …", err=True)
        settle(conn, tables)
        seq = measure_sequencer(conn, batch_size)
        assert not any(flagged(conn, t) for t in tables), "the sequencer left flagged rows"

        click.echo("2/3 bare UPDATE …", err=True)
        settle(conn, tables)
        bare = measure_bare(conn, tables, batch_size)
        assert seq.rows == bare.rows == sum(sizes.values()), (seq.rows, bare.rows, sizes)

        click.echo("3/3 tracking overhead …", err=True)
        overhead = measure_tracking_overhead(conn, trigger_rows)
        facts = machine_facts(conn)

    lines = report_lines(seq, bare, overhead, batch_size)
    click.echo(f"\n{sum(sizes.values()):,} rows, {facts['nproc']} CPUs, {facts['postgres'].split(' on ')[0]}\n")
    click.echo(format_table(lines))
    write_results(results_block(facts, sizes, dict(rows=rows, batch_size=batch_size, trigger_rows=trigger_rows), lines))
    click.echo(f"\nwrote {RESULTS.relative_to(paths.ROOT)}", err=True)


if __name__ == "__main__":
    main()
