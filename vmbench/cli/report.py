"""Commands that read the results database: `show`, `runs`, `compare`. They never import torch."""
from __future__ import annotations

import click

from ._common import _console, _json_out, _reading, _user_error, db_option, json_option, main


@main.command()
@click.argument("run_id", type=int)
@db_option
@json_option
def show(run_id, db, as_json):
    """Show one run: parameters, environment, per-epoch metrics, results."""
    from ..report.show import render_run, run_detail

    with _reading(db) as store:
        run = store.get_run(run_id)
        if run is None:
            _user_error(f"no run {run_id} in {db}")
        detail = run_detail(run)
    if as_json:
        _json_out(detail)
    else:
        render_run(detail, _console())


@main.command()
@click.option("--status", type=click.Choice(["running", "completed", "failed", "interrupted", "diverged"]))
@click.option("--model", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@db_option
@json_option
def runs(status, model, limit, db, as_json):
    """List recorded runs, newest first (a dead `running` run shows as interrupted)."""
    from ..report.show import render_runs
    from ..store import run_summary

    with _reading(db) as store:
        rows = [run_summary(r) for r in store.list_runs(status=status, model=model, limit=limit)]
    if as_json:
        _json_out(rows)
    else:
        render_runs(rows, _console())


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
@click.option("--json", "fmt", flag_value="json", help="Print JSON (the same as --format json).")
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--no-bench", is_flag=True, help="Leave out benchmark-only runs.")
@db_option
def compare(fmt, dataset, no_bench, db):
    """Leaderboard: best completed run per model and dataset, side by side."""
    from ..report import leaderboard as lb

    with _reading(db) as store:
        rows = lb.leaderboard(store.list_runs(), dataset=dataset, include_bench=not no_bench)
    if fmt == "json":
        click.echo(lb.to_json(rows))
    elif fmt == "csv":
        click.echo(lb.to_csv(rows), nl=False)
    elif fmt == "markdown":
        click.echo(lb.to_markdown(rows), nl=False)
    elif not rows:
        click.echo("no completed runs yet", err=True)
    else:
        lb.render_table(rows, _console())


