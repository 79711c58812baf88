"""Commands that read the results database as listings: `compare`, `runs`, `metrics`. They never import torch;
each is one call into vmbench.report. (`show`, `diff`, `plot`, `report`, `doctor`: cli/inspect.py.)"""
from __future__ import annotations

import click

from ._common import _console, _json_out, _reading, _user_error, db_option, json_option, main

def _wide_console():
    """The console for wide tables: a terminal's own width; piped, as wide as the table needs."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


STATUS_CHOICE = click.Choice(["running", "completed", "failed", "interrupted", "diverged"])


def _filter(model, dataset, tag, recipe, since, status, kind=(), limit=None):
    from ..report.compare import parse_since
    from ..report.queries import RunFilter

    try:
        when = parse_since(since)
    except ValueError as e:
        _user_error(str(e))
    return RunFilter(models=model, datasets=dataset, tags=tag, recipes=recipe, since=when, statuses=status,
                     kinds=kind, limit=limit)


def filter_options(fn):
    """--model --dataset --tag --recipe --since --status (each repeatable, except --since)."""
    for opt in reversed([
        click.option("--model", multiple=True, help="Only this model (repeatable)."),
        click.option("--dataset", multiple=True, help="Only this dataset (repeatable)."),
        click.option("--tag", multiple=True, help="Only runs with this tag (repeatable: all of them)."),
        click.option("--recipe", multiple=True, help="Only runs of this recipe (repeatable)."),
        click.option("--since", default=None, help="Only runs started since: 2026-01-31, an ISO time, 7d, 12h."),
        click.option("--status", type=STATUS_CHOICE, multiple=True,
                     help="Only runs with this status (repeatable; compare: completed by default)."),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json", "latex"]), default="table",
              show_default=True)
@click.option("--json", "fmt", flag_value="json", help="Print JSON (the same as --format json).")
@click.option("--agg", type=click.Choice(["mean", "best", "latest"]), default="mean", show_default=True,
              help="Several runs of one protocol: mean ± std (n), the best run, or the latest run.")
@click.option("--sort", default=None, help="Sort each section by this column (top1, top5, img_s, train_img_s largest first; others, "
              "e.g. loss or params_m, smallest first).")
@click.option("--columns", default=None, help="Show only these columns, comma-separated (model always).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows per section.")
@click.option("--paper", is_flag=True, help="Add the papers' quoted ImageNet-1K numbers as rows of their own.")
@click.option("--no-bench", is_flag=True, help="Leave out benchmark rows.")
@db_option
def compare(model, dataset, tag, recipe, since, status, fmt, agg, sort, columns, limit, paper, no_bench, db):
    """Leaderboard: one row per model, dataset and protocol (image size, crop, epochs, recipe; device, precision,
    batch, resolution, mode), mean ± std over seeds; benchmark rows apart."""
    from ..report.compare import check_columns, compare_report
    from ..report.tables import emit

    only = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    flt = _filter(model, dataset, tag, recipe, since, status)
    with _reading(db) as store:
        try:
            if only:
                check_columns(only, "--columns")
            rows = compare_report(store.engine, flt, agg=agg, paper=paper, include_bench=not no_bench, sort=sort,
                                  limit=limit)
        except ValueError as e:
            _user_error(str(e))
    if fmt == "table" and not rows:
        click.echo("no completed runs match", err=True)
        return
    text = emit(rows, fmt, _wide_console() if fmt == "table" else None, only)
    if text is not None:
        click.echo(text, nl=not text.endswith("\n"))


@main.command()
@filter_options
@click.option("--kind", type=click.Choice(["train", "eval", "bench"]), multiple=True, help="Only this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@db_option
@json_option
def runs(model, dataset, tag, recipe, since, status, kind, limit, db, as_json):
    """List recorded runs, newest first: seed, tags, epochs, image size, recipe, results (a dead `running` run
    shows as interrupted)."""
    from ..report.listing import list_runs, render_runs

    flt = _filter(model, dataset, tag, recipe, since, status, kind, limit)
    with _reading(db) as store:
        rows = list_runs(store.engine, flt)
    if as_json:
        _json_out(rows)
    else:
        render_runs(rows, _console())


@main.command()
@click.argument("run_ids", type=int, nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--key", "keys", multiple=True, help="Only this metric (repeatable), e.g. val_top1.")
@db_option
def metrics(run_ids, fmt, keys, db):
    """Export the per-epoch metrics of runs: one line per run and epoch (csv), or a list (json)."""
    from ..report.listing import export_metrics

    with _reading(db) as store:
        try:
            text = export_metrics(store.engine, list(run_ids), fmt, keys)
        except ValueError as e:
            _user_error(str(e))
    click.echo(text, nl=not text.endswith("\n"))
