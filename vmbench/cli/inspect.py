"""Commands that look into runs: `show`, `diff`, `plot`, `report --html`, `doctor`. Each is one call into
vmbench.report; only `plot` / `report` import matplotlib (inside), only `doctor` imports torch (inside)."""
from __future__ import annotations

import click

from ._common import _console, _json_out, _reading, _user_error, db_option, json_option, main


@main.command()
@click.argument("run_id", type=int)
@db_option
@json_option
def show(run_id, db, as_json):
    """Show one run: protocol, curves (sparklines), checkpoint, failure reason, parameters, environment,
    per-epoch metrics, results."""
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
@click.argument("run_a", type=int)
@click.argument("run_b", type=int)
@click.option("--all", "everything", is_flag=True, help="List every key, not only those that differ.")
@db_option
@json_option
def diff(run_a, run_b, everything, db, as_json):
    """What differs between two runs: spec, recipe, environment (versions, GPU, git sha), results."""
    from ..report.diff import diff_runs, render_diff
    from ..report.show import run_detail

    with _reading(db) as store:
        details = []
        for rid in (run_a, run_b):
            run = store.get_run(rid)
            if run is None:
                _user_error(f"no run {rid} in {db}")
            details.append(run_detail(run))
    rows = diff_runs(*details, everything=everything)
    if as_json:
        _json_out(rows)
    else:
        render_diff(rows, run_a, run_b, _console())
