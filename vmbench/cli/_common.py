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
def _run_errors(what: str, as_json: bool = False):
    """How `run` and `bench` end when something goes wrong: a recorded run that failed (exit 1, or 2 when a
    user mistake surfaced mid-run), Ctrl-C (130, recorded as interrupted), or a user mistake found before
    anything was written (one line, exit 2). With `as_json`, a recorded run that ended so is also printed as
    {"id", "status", "error"} on stdout, so that a script learns its id."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..scheduler.common import RunFailed, RunInterrupted

    try:
        yield
    except RunFailed as e:
        if as_json:
            _json_out({"id": e.run_id, "status": _failed_status(e), "error": str(e)})
        click.echo(f"error: {what} {e.run_id} failed: {e}", err=True)
        sys.exit(EXIT_USER_ERROR if e.user_error else 1)
    except KeyboardInterrupt as e:
        if as_json and isinstance(e, RunInterrupted):
            _json_out({"id": e.run_id, "status": "interrupted", "error": str(e)})
        detail = f": {e}" if isinstance(e, RunInterrupted) else ""
        click.echo(f"interrupted; the {what} is recorded as interrupted{detail}", err=True)
        sys.exit(130)
    except ValueError as e:
        _user_error(str(e))
    except SQLAlchemyError as e:  # the database failed under a run with nowhere to keep its result
        click.echo(f"error: the database failed: {str(getattr(e, 'orig', None) or e).splitlines()[0]}", err=True)
        sys.exit(1)


def _failed_status(e) -> str:
    from ..engine.train import DivergedError

    return "diverged" if isinstance(e.__cause__, DivergedError) else "failed"


def _apply_pending(db: str) -> None:
    """Final results a run kept beside its checkpoints because the database did not take them (store.pending):
    written now, when there are any and the database is writable; otherwise left for later."""
    import os

    from ..store.pending import apply_pending, checkpoint_root, pending_files

    try:
        root = checkpoint_root(db)
    except ValueError:
        return
    if not pending_files(root):
        return
    from ..store import Store

    with contextlib.suppress(Exception):
        if "://" in db or os.access(db, os.W_OK):
            with Store(db, create=False) as store:
                apply_pending(store, root)


@contextlib.contextmanager
def _reading(db: str, orm: bool = False):
    """The store opened read-only (never created, SQLite opened with mode=ro: works on a read-only file or
    filesystem); a missing or unusable database is a user error. Listings get a Core-only `Reader` (no ORM
    import); `orm=True` gives the full `Store` (run objects)."""
    if orm:
        from ..store.api import Store as opener
    else:
        from ..store.db import Reader as opener

    _apply_pending(db)
    try:
        store = opener(db, create=False, readonly=True)
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

