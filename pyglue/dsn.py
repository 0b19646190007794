"""Connection strings: which one to use, how to show one safely, how yoyo spells it."""

from __future__ import annotations

import os
import re
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pyglue.errors import PyglueError

ENV_VARS = ("PYGLUE_DSN", "DATABASE_URL")

# user:password@ in a URL, or password=... in a key/value string.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def resolve(explicit: str | None = None) -> str:
    """The DSN to use: the explicit one, else $PYGLUE_DSN, else $DATABASE_URL, else the embedded server."""
    if explicit:
        return explicit
    for name in ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    from pyglue import embedded

    return embedded.start().dsn


def parse(dsn: str) -> dict[str, str]:
    """The DSN's parameters; a malformed DSN raises PyglueError without echoing it."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text around the fault, which may be the password
        raise PyglueError(f"invalid connection string: cannot parse it ({_shape(dsn)})") from None
    port = str(params.get("port") or "")
    if port and not all(p.strip().isdigit() for p in port.split(",")):
        raise PyglueError(f"invalid connection string: port {port!r} is not a number")
    return params


def describe(dsn: str) -> str:
    """A short, password-free name for a database: 'db on host:port' (never the full DSN)."""
    params = parse(dsn)
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or params.get("user") or os.environ.get("PGDATABASE") or "?"
    return f"database {dbname!r} on {host}:{port}"


def redact(text: str) -> str:
    """Text with every password that looks like part of a DSN replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + ("***" if m["secret"] else ""), text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + "***", text)


def scrub(message: str, *dsns: str) -> str:
    """An error message with the passwords of the given DSNs (and any DSN-shaped secret) removed.
    A password is replaced where it stands as a whole token, not inside other words."""
    for dsn in dsns:
        for secret in _passwords_in(dsn):
            message = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", message)
    return redact(message)


def error_line(exc: BaseException, *dsns: str) -> str:
    """An exception as one line for users and logs: Postgres's primary message when there is
    one, white space folded, passwords of the given DSNs (and DSN-shaped ones) removed."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        text = str(exc)
    return scrub(" ".join(text.split()), *dsns)


def _shape(dsn: str) -> str:
    """What kind of connection string it is, without any of its values."""
    if "://" in dsn:
        return "a URL: " + dsn.split("://", 1)[0] + "://…"
    keys = re.findall(r"(\w+)\s*=", dsn)
    return "keys: " + ", ".join(keys) if keys else "not key=value pairs"


def _passwords_in(dsn: str) -> list[str]:
    found = [m["secret"].strip("'") for m in _URL_PASSWORD.finditer(dsn)]
    found += [m["secret"].strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        found.append(password)
    return [secret for secret in found if secret]


def to_yoyo_url(dsn: str) -> str:
    """The yoyo spelling of a libpq DSN: postgresql+psycopg://user:pw@host:port/db?opts."""
    params = dict(parse(dsn))
    user = params.pop("user", "") or ""
    password = params.pop("password", "") or ""
    host = params.pop("host", "") or ""
    port = params.pop("port", "") or ""
    dbname = params.pop("dbname", "") or ""
    netloc = ""
    if user:
        netloc = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    if host.startswith("/") or "," in host:
        params["host"] = host
        host = ""
    netloc += host + (f":{port}" if port and host else "")
    if port and not host:
        params["port"] = port
    query = ("?" + urlencode(params)) if params else ""
    return f"postgresql+psycopg://{netloc}/{quote(dbname, safe='')}{query}"


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return psycopg.conninfo.make_conninfo(dsn, dbname=dbname)
