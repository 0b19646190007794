"""The harness itself: the template is migrated, clones are isolated, rollback works."""

import psycopg


def test_conn_sees_migrated_schema(conn):
    row = conn.execute("select count(*) as n from app.projects where id = 'internal'").fetchone()
    assert row["n"] == 1


def test_conn_changes_are_rolled_back(conn):
    conn.execute("insert into app.projects (id, display_name) values ('rolled_back', 'x')")
    assert conn.execute("select count(*) as n from app.projects where id = 'rolled_back'").fetchone()["n"] == 1


def test_conn_is_clean_after_rollback(conn):
    assert conn.execute("select count(*) as n from app.projects where id = 'rolled_back'").fetchone()["n"] == 0


def test_fresh_db_commits_stay_in_that_database(fresh_db, shared_db):
    with psycopg.connect(fresh_db) as c:
        c.execute("insert into app.projects (id, display_name) values ('only_here', 'x')")
    with psycopg.connect(shared_db) as c:
        assert c.execute("select count(*) from app.projects where id = 'only_here'").fetchone()[0] == 0
    with psycopg.connect(fresh_db) as c:
        assert c.execute("select count(*) from app.projects where id = 'only_here'").fetchone()[0] == 1


def test_make_database_is_empty(make_database):
    with psycopg.connect(make_database()) as c:
        assert c.execute("select to_regnamespace('app')").fetchone()[0] is None
