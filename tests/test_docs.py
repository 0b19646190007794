"""docs/sql-api.md (issue 15): every public function of the pyglue, app and billing schemas has
a COMMENT ON text, and the committed page equals what `pyglue docs` renders from the catalog."""

from __future__ import annotations

from click.testing import CliRunner

from pyglue import docs
from pyglue.cli import cli


def test_every_public_function_has_a_comment(conn):
    assert docs.undocumented(conn) == []


def test_the_committed_page_is_up_to_date(conn):
    rendered = docs.render_page(conn)
    assert rendered == docs.PAGE.read_text(), "docs/sql-api.md is out of date: run pyglue docs"
    listed = {f"{f['schema']}.{f['name']}" for f in docs.functions(conn)}
    assert {"pyglue.sync_status", "app.metrics", "billing.transactions"} <= listed
    assert all(f"`{name}`" in rendered for name in listed)
    assert not any(name.split(".")[1].startswith("_") for name in listed)


def test_a_function_without_a_comment_is_named(conn):
    conn.execute("create function app.nameless_helper(p_x integer) returns integer language sql as 'select p_x'")
    assert docs.undocumented(conn) == ["app.nameless_helper(p_x integer)"]


def test_cli_writes_and_checks(fresh_db, tmp_path):
    page = tmp_path / "sql-api.md"
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "docs", "--output", str(page), "--check"])
    assert out.exit_code != 0 and str(out.exception) == f"{page} is out of date: run pyglue docs"
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "docs", "--output", str(page)])
    assert out.exit_code == 0 and out.output.endswith("functions, written\n"), out.output
    assert page.read_text() == docs.PAGE.read_text()
    out = CliRunner().invoke(cli, ["--dsn", fresh_db, "docs", "--output", str(page), "--check"])
    assert out.exit_code == 0 and out.output == f"{page} is up to date\n"
