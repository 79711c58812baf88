"""Commands that free space: `rm` (delete runs, or only their checkpoints) and `gc` (checkpoints of finished
runs, best.pt kept). Both show what would go first (`--dry-run` stops there) and ask before deleting unless
`--yes`; the work is vmbench.scheduler.cleanup's."""
from __future__ import annotations

import sys

import click

from ._common import _console, _json_out, _reading, _text, _user_error, db_option, json_option, main


def _interactive() -> bool:
    """Whether a person can answer the confirmation (stdin is a terminal)."""
    return sys.stdin.isatty()


def _show_plan(plan, verb: str) -> None:
    from rich.table import Table

    from ..scheduler.cleanup import human_bytes

    t = Table(header_style="bold", title=_text(f"{verb}: {len(plan.items)} run(s), "
                                               f"{sum(len(i.files) for i in plan.items)} file(s), "
                                               f"{human_bytes(plan.bytes)}"), title_justify="left")
    for col in ("run", "model", "status", "goes", "files", "size", "checkpoint folder"):
        t.add_column(col)
    for i in plan.items:
        t.add_row(*map(_text, (i.run_id, i.model, i.status, "run + files" if i.delete_run else "checkpoints",
                               len(i.files), human_bytes(i.bytes), i.checkpoint_dir or "—")))
    _console(stderr=True).print(t)


def _carry_out(db: str, plan, verb: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    from ..scheduler.cleanup import apply, human_bytes
    from ..store import Store

    if as_json and (dry_run or not plan.items):
        _json_out({"dry_run": dry_run, **plan.to_dict()})
        return
    if plan.items and not (dry_run or yes or _interactive()):
        _user_error("nothing deleted: confirm with --yes (or look first with --dry-run)")
    if not as_json:
        _show_plan(plan, "would delete" if dry_run else verb)
    if dry_run or not plan.items:
        if not plan.items:
            click.echo("nothing to delete", err=True)
        return
    if not yes:
        if not click.confirm(f"delete {human_bytes(plan.bytes)} as listed above?", default=False, err=True):
            click.echo("nothing deleted", err=True)
            sys.exit(1)
    try:
        store = Store(db)
    except ValueError as e:
        _user_error(str(e))
    try:
        done = apply(store, plan)
    finally:
        store.close()
    for line in done["skipped"] + done["errors"]:
        click.echo(f"warning: {line}", err=True)
    if as_json:
        _json_out({"dry_run": False, "planned": plan.to_dict(), **done})
    else:
        runs = f", {done['runs']} run(s)" if plan.items[0].delete_run else ""
        click.echo(f"deleted {done['files']} file(s), {human_bytes(done['bytes'])}{runs}")
    if done["errors"]:
        sys.exit(1)


@main.command("rm")
@click.argument("run_ids", metavar="RUN_ID...", type=int, nargs=-1, required=True)
@click.option("--checkpoints-only", is_flag=True,
              help="Delete only the runs' checkpoint files (best.pt included); the runs and their results stay.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and how many bytes; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@json_option
def rm(run_ids, checkpoints_only, dry_run, yes, db, as_json):
    """Delete runs: their rows (metrics, results) and their checkpoint folder. A running run is refused."""
    from ..scheduler.cleanup import plan_rm

    with _reading(db, orm=True) as store:
        try:
            plan = plan_rm(store, list(run_ids), checkpoints_only=checkpoints_only)
        except ValueError as e:
            _user_error(str(e))
    _carry_out(db, plan, "deleting", dry_run, yes, as_json)


@main.command("gc")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["completed", "failed", "diverged", "interrupted"]),
              help="Runs whose checkpoints go (repeatable). [default: completed, failed, diverged; interrupted "
                   "runs, meant to be resumed, only when named]")
@click.option("--older-than", default=None, metavar="AGE",
              help="Only runs that ended more than AGE ago: a number and m, h, d or w (e.g. 30d).")
@click.option("--keep-best/--no-keep-best", default=True, show_default=True,
              help="Keep each run's best.pt (the weights `vmbench eval` and --init use).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and how many bytes; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@db_option
@json_option
def gc(statuses, older_than, keep_best, dry_run, yes, db, as_json):
    """Delete checkpoint files of finished runs (best.pt kept); runs, results and logs stay. Never touches a
    running run."""
    from ..scheduler.cleanup import GC_STATUSES, parse_age, plan_gc

    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as e:
        _user_error(str(e))
    with _reading(db, orm=True) as store:
        plan = plan_gc(store, statuses=statuses or GC_STATUSES, older_than=age, keep_best=keep_best)
    _carry_out(db, plan, "deleting", dry_run, yes, as_json)
