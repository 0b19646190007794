"""Connection strings: which one to use, how to show one safely, how yoyo spells it.

A password never leaves this module in anything meant to be shown: redact(), scrub(),
describe(), error_line() and parse()'s errors. Passwords may hold any character, and in a
URL they are often written unencoded, so the rules are generous rather than exact:

- In a URL (scheme://user:password@host/...), the password is everything from the first ':'
  after the user name up to the LAST '@' on that line. So 'postgresql://u:Zz@Bad-Pw@host/db'
  hides 'Zz@Bad-Pw', and a password holding '/', ':', '?', '#', quotes or spaces is hidden
  whole. The price: an '@' later on the same line (an e-mail address in an error message)
  hides the text up to it too.
- In a key/value string, password= (and sslpassword=) up to the closing quote of a quoted
  value (or the end of the text when the quote is never closed), else up to white space.
- scrub() and error_line() also know the DSNs involved: their passwords as libpq reads them,
  as written, percent-decoded, and each piece of 4 or more characters between the characters
  that URLs split at (libpq reads 'u:Zz@Bad-Pw@host' as host 'Bad-Pw@host', and a message
  naming that host must not show 'Bad-Pw').
- parse() refuses a URL that libpq would read differently from the above (an unencoded '@' or
  '/' in the user name, password or database name), saying how to percent-encode it.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pyglue.errors import PyglueError

ENV_VARS = ("PYGLUE_DSN", "DATABASE_URL")

# scheme://user: then the password up to the last '@' of the line
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/\s]*:)(?P<secret>[^\n]*)(?=@)", re.I)
# password=... in a key/value string: a quoted value (to its closing quote, else to the end), or a word
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|\S+)", re.I)
# one key = value pair of a libpq key/value string, read in order from the start
_KV_PAIR = re.compile(r"\s*(?P<key>\w+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|[^\s']*)")
# what URLs and key/value strings split at: a password's pieces between them may appear alone
_SPLIT = re.compile(r"[@/:?#%&=,;\s'\"\\\[\]]+")
_MIN_PIECE = 4


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
    """The DSN's parameters; a malformed DSN raises PyglueError without echoing any of it."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text around the fault, which may be the password
        raise PyglueError(f"invalid connection string: cannot parse it ({_shape(dsn)})") from None
    if _is_url(dsn) and _misread_url(dsn):
        raise PyglueError("invalid connection string: the URL has an unencoded '@' or '/' in its user name,"
                          " password or database name, so its host would be read wrongly; percent-encode"
                          " them (@ as %40, / as %2F)")
    port = str(params.get("port") or "")
    if port and not all(p.strip().isdigit() for p in port.split(",") if p.strip()):
        if _is_url(dsn) and "@" in dsn:
            # in a URL with credentials the 'port' may be a piece of the password
            raise PyglueError("invalid connection string: the port is not a number")
        raise PyglueError(f"invalid connection string: port {port!r} is not a number")
    return params


def describe(dsn: str) -> str:
    """A short, password-free name for a database: 'db on host:port' (never the full DSN)."""
    params = parse(dsn)
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or params.get("user") or os.environ.get("PGDATABASE") or "?"
    return scrub(f"database {dbname!r} on {host}:{port}", dsn)


def redact(text: str) -> str:
    """Text with every password that looks like part of a DSN replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + ("***" if m["secret"] else ""), text)
    return _KV_PASSWORD.sub(lambda m: m["head"] + "***", text)


def scrub(message: str, *dsns: str) -> str:
    """An error message with the passwords of the given DSNs (and any DSN-shaped secret) removed.
    A password or a piece of one is replaced where it stands as a whole token, not inside other
    words (a password 'p' leaves 'port' alone)."""
    secrets = sorted({s for dsn in dsns for s in _passwords_in(dsn)}, key=len, reverse=True)
    for secret in secrets:
        before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
        after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
        message = re.sub(before + re.escape(secret) + after, "***", message)
    return redact(message)


def error_line(exc: BaseException, *dsns: str) -> str:
    """An exception as one line for users and logs: Postgres's primary message when there is
    one, white space folded, passwords of the given DSNs (and DSN-shaped ones) removed."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        text = str(exc)
    return scrub(" ".join(text.split()), *dsns)


def _is_url(dsn: str) -> bool:
    return bool(re.match(r"\s*[a-z][a-z0-9+.-]*://", dsn, re.I))


def _misread_url(dsn: str) -> bool:
    """Whether libpq reads this URL's user, password or host otherwise than the last-'@' rule:
    libpq ends the credentials at the FIRST '@' (or finds none at a '/' before it), so an '@'
    still left before the query string is one it takes for part of the host or database name."""
    rest = dsn.split("://", 1)[1]
    credentials = re.match(r"[^@/]*@", rest)
    tail = rest[credentials.end():] if credentials else rest
    return "@" in tail.split("?", 1)[0]


def _shape(dsn: str) -> str:
    """What kind of connection string it is, without any of its values."""
    if _is_url(dsn):
        return "a URL: " + dsn.strip().split("://", 1)[0] + "://…"
    keys = [key for key, _ in _kv_pairs(dsn)]
    return "keys: " + ", ".join(keys) if keys else "not key=value pairs"


def _kv_pairs(dsn: str) -> list[tuple[str, str]]:
    """The key/value pairs of a libpq key/value string as far as it reads as one (values unquoted)."""
    pairs, at = [], 0
    while m := _KV_PAIR.match(dsn, at):
        if m.end() == at:
            break
        value = m["value"]
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        pairs.append((m["key"], value))
        at = m.end()
    return pairs


def _passwords_in(dsn: str) -> list[str]:
    """Every spelling of the DSN's password that a message could hold, and its pieces."""
    found = []
    for m in _URL_PASSWORD.finditer(dsn):
        found += [m["secret"], unquote(m["secret"])]
    for m in _KV_PASSWORD.finditer(dsn):
        secret = m["secret"]
        found += [secret, secret.strip("'"), re.sub(r"\\(.)", r"\1", secret.strip("'"))]
    found += [value for key, value in _kv_pairs(dsn) if key.lower() in ("password", "sslpassword")]
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        params = {}
    found += [params.get("password") or "", params.get("sslpassword") or ""]
    pieces = [piece for secret in found for piece in _SPLIT.split(secret) if len(piece) >= _MIN_PIECE]
    return [secret for secret in dict.fromkeys(found + pieces) if secret]


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
