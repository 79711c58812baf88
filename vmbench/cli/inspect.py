"""Commands that look into runs: `show`, `diff`, `plot`, `report --html`, `doctor`. Each is one call into
vmbench.report; only `plot` / `report` import matplotlib (inside), only `doctor` imports torch (inside)."""
from __future__ import annotations

import click

from ._common import _console, _json_out, _reading, _user_error, db_option, default_data_root, json_option, main
from .report import _filter, filter_options


@main.command()
@click.argument("run_id", type=int)
@db_option
@json_option
def show(run_id, db, as_json):
    """Show one run: protocol, curves (sparklines), checkpoint, failure reason, parameters, environment,
    per-epoch metrics, results."""
    from ..report.show import render_run, run_detail

    with _reading(db, orm=True) as store:
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

    with _reading(db, orm=True) as store:
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


@main.command()
@click.argument("kind", type=click.Choice(["accuracy-throughput", "resolution", "curves", "precision", "all"]))
@filter_options
@click.option("--run", "run_ids", type=int, multiple=True, help="curves: these runs (repeatable; default: the "
              "compare rows' runs).")
@click.option("--agg", type=click.Choice(["mean", "best", "latest"]), default="mean", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the PNG files (<kind>.png).")
@db_option
def plot(kind, model, dataset, tag, recipe, since, status, run_ids, agg, out_dir, db):
    """PNG figures: accuracy vs throughput (marker size = params), resolution scaling, training curves, speed by
    precision and mode; from the same filters as compare."""
    from pathlib import Path

    from ..report.plots import KINDS, plot_files

    flt = _filter(model, dataset, tag, recipe, since, status)
    with _reading(db) as store:
        try:
            written = plot_files(store.engine, flt, list(KINDS) if kind == "all" else [kind], Path(out_dir),
                                 list(run_ids), agg)
        except ValueError as e:
            _user_error(str(e))
        except OSError as e:
            _user_error(f"cannot write the figures to {out_dir}: {e.strerror or e}")
    if not written:
        click.echo("nothing to draw: no run matches with the numbers this figure needs", err=True)
    for path in written:
        click.echo(str(path))


@main.command()
@click.option("--html", "html_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for index.html: one self-contained page (tables, figures, runs).")
@filter_options
@click.option("--agg", type=click.Choice(["mean", "best", "latest"]), default="mean", show_default=True)
@click.option("--title", default="vmbench report", show_default=True)
@db_option
def report(html_dir, model, dataset, tag, recipe, since, status, agg, title, db):
    """Write an HTML report that opens offline: sortable compare tables, the figures, run details."""
    from pathlib import Path

    from ..report.html import write_html

    flt = _filter(model, dataset, tag, recipe, since, status)
    with _reading(db) as store:
        try:
            path = write_html(store.engine, flt, Path(html_dir), agg, title)
        except ValueError as e:
            _user_error(str(e))
        except OSError as e:
            _user_error(f"cannot write the report to {html_dir}: {e.strerror or e}")
    click.echo(str(path))


@main.command()
@db_option
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Where local datasets are looked for.")
@json_option
def doctor(db, data_root, as_json):
    """Check this machine: versions, CUDA and GPU, the Triton kernels against their torch twins on this device,
    the database and its schema, the data roots, free disk for checkpoints. Exit 1 when a check fails."""
    import sys

    from ..report.doctor import render, run_checks

    checks = run_checks(db, data_root)
    if as_json:
        _json_out([c.to_dict() for c in checks])
    else:
        render(checks, _console())
    sys.exit(0 if all(c.ok for c in checks) else 1)
