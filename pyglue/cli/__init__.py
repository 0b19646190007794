"""The `pyglue` command: a thin click group; each command group lives in its own module."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click
import psycopg

from pyglue import dsn as dsns
from pyglue.errors import PyglueError


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


@click.group(context_settings={"auto_envvar_prefix": "PYGLUE", "help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar="PYGLUE_DSN", metavar="DSN",
              help="Postgres connection string. Default: $PYGLUE_DSN, $DATABASE_URL, else the embedded server.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug output on errors.")
@click.version_option(package_name="pyglue")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, verbose: bool) -> None:
    """pyglue: change capture, tenant sync and billing state in Postgres."""
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


from pyglue.cli import capture as _capture  # noqa: E402  (register command groups)
from pyglue.cli import db as _db  # noqa: E402
from pyglue.cli import demo as _demo  # noqa: E402
from pyglue.cli import sync as _sync  # noqa: E402

cli.add_command(_db.db)
cli.add_command(_demo.demo)
cli.add_command(_capture.sequence)
cli.add_command(_capture.fusebox)
cli.add_command(_capture.purge_tombstones)
cli.add_command(_sync.targets_group)
cli.add_command(_sync.sync_cmd)
cli.add_command(_sync.status_cmd)
cli.add_command(_sync.worker_cmd)
