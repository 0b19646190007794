"""Passwords never appear in what pyglue.dsn shows: redact, scrub, describe, error_line, parse errors.

Tricky passwords (unencoded '@', '/', ':', '?', '#', '%', spaces, quotes, unicode) in URLs as
written, percent-encoded, and in key/value strings, against each output function. No output
may contain the password, nor any piece of 4 or more characters between its special
characters (libpq reads 'u:Zz@Bad-Pw-123@host' as host 'Bad-Pw-123@host')."""

from __future__ import annotations

import re
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pyglue import db
from pyglue import dsn as dsns
from pyglue.errors import PyglueError

PASSWORDS = [
    "Zz@Bad-Pw-123",
    "sl/ash/Word99",
    "Q9/x@Host-Trick",
    "co:lon:Secret7",
    "qu?ery#Frag88",
    "pe%rc%41Xy9",
    "spa ce Phrase",
    "quo'te\"Dbl77",
    "ünïcödé@Pässwörd",
    "@lead/trail@",
    "back\\slash=Eq&amp",
    "Kq,Zx9@evil.example:99/nodbx",
]


def url(password: str) -> str:
    return f"postgresql://bob:{password}@127.0.0.1:1/appdb?connect_timeout=2"


def encoded_url(password: str) -> str:
    return url(quote(password, safe=""))


def key_value(password: str) -> str:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"host=127.0.0.1 port=1 user=bob password='{escaped}' dbname=appdb connect_timeout=2"


FORMS = {"url": url, "encoded url": encoded_url, "key/value": key_value}
CASES = [(form, pw) for form in FORMS for pw in PASSWORDS]
IDS = [f"{form}: {pw}" for form, pw in CASES]


def pieces(password: str) -> list[str]:
    return [password] + [p for p in re.split(r"[@/:?#%\s'\"\\,&=]+", password) if len(p) >= 4]


def assert_hidden(text: str, password: str) -> None:
    for piece in pieces(password):
        assert piece not in text, f"{piece!r} shows in {text!r}"


def libpq_reading(dsn: str) -> str:
    """What a libpq message could name of this DSN: the values libpq reads, or its own parse error."""
    try:
        return " ".join(f'{k}="{v}"' for k, v in conninfo_to_dict(dsn).items())
    except psycopg.ProgrammingError as exc:
        return str(exc)


@pytest.mark.parametrize("form, password", CASES, ids=IDS)
def test_redact_hides_the_password_alone_and_in_a_line(form, password):
    dsn = FORMS[form](password)
    assert_hidden(dsns.redact(dsn), password)
    line = dsns.redact(f"sync of target 'main' with {dsn} failed: timeout (retry 3)")
    assert_hidden(line, password)
    assert line.startswith("sync of target 'main' with ") and "***" in line


@pytest.mark.parametrize("form, password", CASES, ids=IDS)
def test_scrub_and_error_line_hide_the_password_wherever_libpq_put_it(form, password):
    dsn = FORMS[form](password)
    message = f"connection to server failed: {libpq_reading(dsn)}; password={password}; {dsn}"
    assert_hidden(dsns.scrub(message, dsn), password)
    assert_hidden(dsns.error_line(RuntimeError(message), dsn), password)
    assert_hidden(dsns.error_line(psycopg.OperationalError(message), dsn), password)


@pytest.mark.parametrize("form, password", CASES, ids=IDS)
def test_describe_and_parse_name_the_database_or_refuse_without_the_password(form, password):
    dsn = FORMS[form](password)
    try:
        described = dsns.describe(dsn)
    except PyglueError as exc:
        described = str(exc)
        assert described.startswith("invalid connection string: ")
    else:
        assert described == "database 'appdb' on 127.0.0.1:1"
    assert_hidden(described, password)


@pytest.mark.parametrize("form, password", CASES, ids=IDS)
def test_connecting_fails_in_one_line_without_the_password(form, password):
    with pytest.raises(PyglueError) as error:
        db.connect(FORMS[form](password))
    assert_hidden(str(error.value), password)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dsn", [url("Zz@Bad-Pw-123"), url("sl/ash/Word99"), "postgresql://bob@corp:pw@host/db",
                                 "postgresql://host/my@db"])
def test_a_url_libpq_would_misread_is_refused_saying_how_to_encode_it(dsn):
    with pytest.raises(PyglueError, match="unencoded '@' or '/'.*percent-encode them \\(@ as %40, / as %2F\\)"):
        dsns.parse(dsn)


@pytest.mark.parametrize("dsn, expected", [
    ("postgresql://bob:co:lon?x#y@db.example.com:5433/appdb", "database 'appdb' on db.example.com:5433"),
    ("postgresql://postgres:@/postgres?host=/socket/dir", "database 'postgres' on /socket/dir:5432"),
    ("postgresql:///appdb?host=/socket/dir&port=5433", "database 'appdb' on /socket/dir:5433"),
    ("postgresql://bob:pw@h1,h2:5433/appdb", "database 'appdb' on h1,h2:,5433"),
    ("postgresql://bob@db.example.com/appdb?application_name=me@home", "database 'appdb' on db.example.com:5432"),
])
def test_urls_libpq_reads_right_still_parse_and_describe(dsn, expected):
    assert dsns.describe(dsn) == expected


def test_redact_leaves_urls_without_password_alone():
    for text in ("postgresql:///appdb?host=/socket/dir", "postgresql://bob@host/db", "postgresql://host:5432/db",
                 "see postgresql://[::1]:5432/db for details"):
        assert dsns.redact(text) == text


def test_a_bad_port_is_named_unless_it_may_be_a_piece_of_the_password():
    with pytest.raises(PyglueError, match="port 'notaport' is not a number"):
        dsns.parse("host=x password=secret port=notaport")
    with pytest.raises(PyglueError, match="^invalid connection string: the port is not a number$"):
        dsns.parse("postgresql://bob:pw@host:Secret9/db")


def test_a_key_value_parse_error_names_keys_not_values():
    with pytest.raises(PyglueError) as error:
        dsns.parse("host=x password='Secret=xyz other=1")
    assert str(error.value) == "invalid connection string: cannot parse it (keys: host, password)"


def test_sslpassword_is_redacted_too():
    assert dsns.redact("host=x sslpassword=Kpass99 user=bob") == "host=x sslpassword=*** user=bob"
