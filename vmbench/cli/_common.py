"""Shared pieces of the command line: the `main` group, the console, error exits, and options used by several
commands. Command modules register themselves on `main`; nothing here imports torch."""
from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.text import Text

from ..config import DEVICES, PRECISIONS, SCAN_BACKENDS, default_data_root, default_db_path  # noqa: F401

EXIT_USER_ERROR = 2

def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (pipes, tests): wide enough that leaderboard columns are never cut.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def _text(value) -> "Text":
    """`value` (from data: a name, path, description, error) as rich Text, never parsed as markup."""
    from rich.text import Text

    return Text("" if value is None else str(value))


def _user_error(message: str) -> None:
    """One line on stderr, exit code 2."""
    click.echo(f"error: {str(message).splitlines()[0] if str(message) else 'invalid input'}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _json_out(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@contextlib.contextmanager
def _run_errors(what: str):
    """How `run` and `bench` end when something goes wrong: a recorded run that failed (exit 1, or 2 when a
    user mistake surfaced mid-run), Ctrl-C (130, recorded as interrupted), or a user mistake found before
    anything was written (one line, exit 2)."""
    from ..scheduler.local import RunFailed, RunInterrupted

    try:
        yield
    except RunFailed as e:
        click.echo(f"error: {what} {e.run_id} failed: {e}", err=True)
        sys.exit(EXIT_USER_ERROR if e.user_error else 1)
    except KeyboardInterrupt as e:
        detail = f": {e}" if isinstance(e, RunInterrupted) else ""
        click.echo(f"interrupted; the {what} is recorded as interrupted{detail}", err=True)
        sys.exit(130)
    except ValueError as e:
        _user_error(str(e))


@contextlib.contextmanager
def _reading(db: str):
    """The store opened read-only (never created); a missing or unusable database is a user error."""
    from ..store import Store

    try:
        store = Store(db, create=False)
    except ValueError as e:
        _user_error(str(e))
    try:
        yield store
    finally:
        store.close()


db_option = click.option("--db", default=default_db_path, show_default="$VMBENCH_DB or ./experiments.db",
                         help="Results database: a file path or a SQLAlchemy URL.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


class _OneLineUsageError(click.UsageError):
    """A bad command line (unknown option, bad choice, missing argument) told in one line, like every other
    user mistake: `error: …`, exit code 2."""

    def __init__(self, error: click.UsageError):
        super().__init__(error.format_message(), error.ctx)

    def show(self, file=None) -> None:
        hint = f" (see `{self.ctx.command_path} --help`)" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", err=True)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            if isinstance(e, _OneLineUsageError) or type(e).__name__ == "NoArgsIsHelpError":  # that one is help
                raise
            raise _OneLineUsageError(e) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vmbench")
def main() -> None:
    """Train, evaluate and benchmark vision backbones (VMamba, Swin, ConvNeXt, Res2Net, …); results in SQL."""

