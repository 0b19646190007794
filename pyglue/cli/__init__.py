"""The `pyglue` command: a thin click group; each command group lives in its own module."""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field

import click
import psycopg

from pyglue import dsn as dsns
from pyglue.errors import PyglueError
from pyglue.sync.fetch import FETCH_DSN_ENV


@dataclass
class Context:
    """What every command gets: the DSN the user asked for (resolved lazily) and verbosity."""

    explicit_dsn: str | None
    verbose: bool
    _dsn: str | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = dsns.resolve(self.explicit_dsn)
        return self._dsn


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses nan and inf: every comparison with nan is false, so click's
    own range check lets nan through (a `--lease nan` would reach the database)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


class _Group(click.Group):
    """The top-level group: a database without pyglue's schemas is told to migrate. (Here
    rather than in main(): here the context still knows the DSN in use, and tests that
    invoke `cli` directly get the same message.)"""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction,
                psycopg.errors.UndefinedTable) as exc:
            if not _names_pyglue_object(exc) or not isinstance(ctx.obj, Context) or ctx.obj._dsn is None:
                raise
            raise PyglueError(f"{dsns.describe(ctx.obj._dsn)} is not migrated ({dsns.error_line(exc)}):"
                              " run pyglue db migrate") from exc


# 'schema "pyglue" does not exist', 'relation "app.tenancies" …', 'function pyglue.sync_status(unknown) …'.
# (A custom mapping's fetch of a missing table fails that target inside the engine; it never gets here.)
_PYGLUE_OBJECT = re.compile(r'schema "(?:pyglue|app|billing)"|\b(?:pyglue|app|billing)\.\w')


def _names_pyglue_object(exc: psycopg.Error) -> bool:
    return bool(_PYGLUE_OBJECT.search(exc.diag.message_primary or ""))


@click.group(cls=_Group, context_settings={"auto_envvar_prefix": "PYGLUE", "help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar="PYGLUE_DSN", metavar="DSN",
              help="Postgres connection string. Default: $PYGLUE_DSN, $DATABASE_URL, else the embedded server.")
@click.option("--fetch-dsn", envvar=FETCH_DSN_ENV, metavar="DSN",
              help="Login that mapping queries run as (a DSN, or just 'user=… password=…' over --dsn)."
                   " Default: user pyglue_fetch on the --dsn server.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug output on errors.")
@click.version_option(package_name="pyglue")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, fetch_dsn: str | None, verbose: bool) -> None:
    """pyglue: change capture, tenant sync and billing state in Postgres."""
    if fetch_dsn:
        dsns.parse(fetch_dsn)  # a malformed one is refused here, without echoing it
        os.environ[FETCH_DSN_ENV] = fetch_dsn  # read by the engine and the worker's threads
    ctx.obj = Context(explicit_dsn=dsn, verbose=verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line per error, non-zero exit, traceback only with -v."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=args, prog_name="pyglue", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # one line like every other error, instead of click's usage + hint + blank line + error;
        # redacted, since a value it quotes may be a DSN given in the wrong place
        hint = f" (see '{exc.ctx.command_path} -h')" if exc.ctx else ""
        click.echo(f"error: {dsns.redact(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (PyglueError, psycopg.Error, OSError) as exc:
        _show_traceback(verbose)
        click.echo(f"error: {dsns.error_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: still one line, the traceback with -v
        _show_traceback(verbose)
        click.echo(f"error: internal error ({type(exc).__name__}: {dsns.error_line(exc)}); rerun with -v for details",
                   err=True)
        sys.exit(1)


def _show_traceback(verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exc()


from pyglue.cli import billing as _billing  # noqa: E402  (register command groups)
from pyglue.cli import capture as _capture  # noqa: E402
from pyglue.cli import dashboard as _dashboard  # noqa: E402
from pyglue.cli import db as _db  # noqa: E402
from pyglue.cli import demo as _demo  # noqa: E402
from pyglue.cli import docs as _docs  # noqa: E402
from pyglue.cli import metrics as _metrics  # noqa: E402
from pyglue.cli import seed as _seed  # noqa: E402
from pyglue.cli import stripe as _stripe  # noqa: E402,F401  (stripe-sync, stripe-deliver join the billing group)
from pyglue.cli import sync as _sync  # noqa: E402
from pyglue.cli import webhooks as _webhooks  # noqa: E402

cli.add_command(_billing.billing)
cli.add_command(_dashboard.dashboard_cmd)
cli.add_command(_db.db)
cli.add_command(_demo.demo)
cli.add_command(_docs.docs_cmd)
cli.add_command(_metrics.metrics_cmd)
cli.add_command(_seed.seed_cmd)
cli.add_command(_capture.sequence)
cli.add_command(_capture.fusebox)
cli.add_command(_capture.purge_tombstones)
cli.add_command(_sync.targets_group)
cli.add_command(_sync.sync_cmd)
cli.add_command(_sync.status_cmd)
cli.add_command(_sync.worker_cmd)
cli.add_command(_webhooks.webhooks_group)
