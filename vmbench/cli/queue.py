"""Commands that plan and execute many runs: `sweep`, `queue add|ls|cancel|retry|prune`, `worker`.
`queue ls` only reads the database and never imports torch."""
from __future__ import annotations

from pathlib import Path

import click

from ._common import _console, _json_out, _user_error, db_option, json_option, main
from .options import build_spec, run_options


def _abs_db(db: str) -> str:
    """The database as another process (a worker's child, a SLURM job) must name it: an absolute path or the URL."""
    from ..store.db import is_url

    return db if is_url(db) else str(Path(db).expanduser().resolve())


def _check_models(models) -> None:
    from ..models import resolve_model_name

    for m in models:
        resolve_model_name(m)  # ValueError: unknown model


def _plan(ctx, models, datasets, seeds, opts):
    from ..scheduler.sweep import grid_axes, options_argv, parse_list, plan_sweep

    datasets = parse_list("--datasets", datasets)
    seeds = parse_list("--seeds", seeds, int) if seeds else [opts["seed"]]
    axes = grid_axes(opts["sets"])
    base = options_argv(ctx.command.params, opts, skip={"seed", "sets"})

    def build(model, dataset, seed, sets):
        return build_spec(model, dataset, **{**opts, "seed": seed, "sets": tuple(sets)})[0]

    plan = plan_sweep(models, datasets, seeds, axes, base, build)
    _check_models(models)
    return plan


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--datasets", required=True, metavar="A,B", help="Comma-separated datasets.")
@click.option("--seeds", default=None, metavar="0,1,2", help="Comma-separated seeds (default: --seed).")
@run_options
@click.option("--dry-run", is_flag=True, help="Only show the plan; queue nothing.")
@db_option
@json_option
@click.pass_context
def sweep(ctx, models, datasets, seeds, dry_run, db, as_json, **opts):
    """Plan MODELS × --datasets × --seeds × the --set grid and queue every run not queued yet.

    Every option of `vmbench run` applies to each run; `--set KEY=V1,V2` (repeatable) makes one grid axis per
    option (values are TOML literals, split on commas outside brackets and quotes). A run whose resolved spec is
    already on the queue is not added again, so re-running a sweep adds only what is missing. Run the queue with
    `vmbench worker`.
    """
    from ..scheduler.queue import enqueue

    try:
        plan = _plan(ctx, models, datasets, seeds, opts)
        added = [(None, None)] * len(plan) if dry_run else enqueue(_abs_db(db), [p.item for p in plan])
    except ValueError as e:
        _user_error(str(e))
    rows = [{"id": i, "added": a, "model": p.model, "dataset": p.dataset, "seed": p.seed, "sets": p.sets,
             "gpus": p.item["gpus"], "spec_hash": p.item["spec_hash"][:12], "args": p.item["args"]}
            for p, (i, a) in zip(plan, added)]
    if as_json:
        _json_out({"planned": len(rows), "added": sum(1 for r in rows if r["added"]), "dry_run": dry_run,
                   "runs": rows})
        return
    _render_plan(rows, dry_run)


def _render_plan(rows, dry_run) -> None:
    from rich.table import Table
    from rich.text import Text

    n_new = sum(1 for r in rows if r["added"])
    title = (f"{len(rows)} runs planned (dry run: nothing queued)" if dry_run else
             f"{len(rows)} runs planned: {n_new} queued now, {len(rows) - n_new} already on the queue")
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("item", "model", "dataset", "seed", "overrides", "gpus", "spec"):
        t.add_column(col)
    for r in rows:
        item = "" if r["id"] is None else f"{r['id']}{'' if r['added'] else ' (known)'}"
        t.add_row(item, Text(r["model"]), Text(r["dataset"]), str(r["seed"]), Text(" ".join(r["sets"])),
                  str(r["gpus"]), r["spec_hash"])
    _console().print(t)


@main.group("queue")
def queue_group() -> None:
    """The run queue: add runs, list them, cancel, retry, prune."""


@queue_group.command("add")
@click.argument("model")
@click.argument("dataset")
@run_options
@db_option
@json_option
@click.pass_context
def queue_add(ctx, model, dataset, db, as_json, **opts):
    """Queue one run of MODEL on DATASET (every option of `vmbench run`); a run already queued is not added again."""
    from ..scheduler.queue import enqueue, train_item
    from ..scheduler.sweep import options_argv

    try:
        spec, _ = build_spec(model, dataset, **opts)
        _check_models([model])
        item = train_item(model, dataset, options_argv(ctx.command.params, opts), spec)
        (item_id, added), = enqueue(_abs_db(db), [item])
    except ValueError as e:
        _user_error(str(e))
    if as_json:
        _json_out({"id": item_id, "added": added})
    else:
        click.echo(f"queue item {item_id}: {'queued' if added else 'already on the queue'}")


@queue_group.command("ls")
@click.option("--status", type=click.Choice(["queued", "running", "done", "failed", "cancelled"]), default=None)
@db_option
@json_option
def queue_ls(status, db, as_json):
    """List queue items: queued / running (where, since, attempt) / done / failed with the reason."""
    from ..store.queue import Queue, item_summary

    import sqlalchemy as sa

    try:
        with Queue(db, create=False) as q:
            rows = [item_summary(i) for i in q.items(status)]
    except ValueError as e:
        _user_error(str(e))
    except sa.exc.DatabaseError:  # a database from before the queue existed: nothing queued
        rows = []
    if as_json:
        _json_out(rows)
        return
    if not rows:
        click.echo("the queue is empty", err=True)
        return
    _render_queue(rows)


def _render_queue(rows) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(header_style="bold")
    for col in ("item", "status", "model", "dataset", "attempt", "where", "since", "run", "slurm job", "reason / log"):
        t.add_column(col)
    style = {"done": "green", "failed": "red", "running": "yellow", "lost": "magenta", "cancelled": "dim"}
    for r in rows:
        where = " ".join(x for x in (r["worker"] or "", f"gpus {r['gpu_ids']}" if r["gpu_ids"] else "") if x)
        note = r["error"] if r["status"] in ("failed", "queued") and r["error"] else (r["log_path"] or "")
        if r["status"] == "queued" and r["attempts"]:
            note = f"retry after {r['not_before']}: {note}"
        t.add_row(str(r["id"]), Text(r["status"], style=style.get(r["status"], "")), Text(r["model"] or r["kind"]),
                  Text(r["dataset"] or ""), str(r["attempts"]),
                  Text(where if r["status"] in ("running", "lost") else ""),
                  (r["since"] or "") if r["status"] in ("running", "lost") else "", str(r["run_id"] or ""),
                  Text(r["slurm_job_id"] or ""), Text(note.splitlines()[0] if note else ""))
    _console().print(t)


def _queue_op(db, fn):
    import sqlalchemy as sa

    from ..store.queue import Queue

    try:
        with Queue(db, create=False) as q:
            return fn(q)
    except ValueError as e:
        _user_error(str(e))
    except sa.exc.DatabaseError:
        _user_error(f"{db} holds no queue (queue runs with `vmbench sweep` or `vmbench queue add`)")


@queue_group.command("cancel")
@click.argument("item_id", type=int)
@db_option
def queue_cancel(item_id, db):
    """Cancel a queued or running item (a running attempt is stopped by its worker at the next lease renewal)."""
    was = _queue_op(db, lambda q: q.cancel(item_id))
    click.echo(f"queue item {item_id} cancelled (was {was})")


@queue_group.command("retry")
@click.argument("item_id", type=int)
@db_option
def queue_retry(item_id, db):
    """Queue a failed or cancelled item again (its failure count starts over)."""
    _queue_op(db, lambda q: q.retry(item_id))
    click.echo(f"queue item {item_id} queued again")


@queue_group.command("prune")
@click.option("--done", is_flag=True, help="Delete done items.")
@click.option("--failed", is_flag=True, help="Delete failed items.")
@click.option("--cancelled", is_flag=True, help="Delete cancelled items.")
@db_option
def queue_prune(done, failed, cancelled, db):
    """Delete finished items (the runs they produced stay)."""
    statuses = tuple(s for s, on in (("done", done), ("failed", failed), ("cancelled", cancelled)) if on)
    if not statuses:
        _user_error("say what to prune: --done, --failed and/or --cancelled")
    n = _queue_op(db, lambda q: q.prune(statuses))
    click.echo(f"deleted {n} queue items")


def _default_log_dir(db: str) -> Path:
    from ..store.db import is_url

    return Path("vmbench-queue-logs").resolve() if is_url(db) else Path(db).expanduser().resolve().parent / "queue-logs"


@main.command()
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: child processes on this machine; slurm: one SLURM job per attempt (submitit).")
@click.option("--gpus", default=None, metavar="all|0,1|N",
              help="Local GPUs to use: all, these ids, or the first N (default all).")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="cpu: run on CPU slots (--slots), children see no GPU.")
@click.option("--slots", type=int, default=None, help="With --device cpu: runs at once (default 1).")
@click.option("--min-free-mb", type=int, default=2048, show_default=True,
              help="A GPU takes a run only with this much free memory.")
@click.option("--max-attempts", type=int, default=3, show_default=True,
              help="Infrastructure failures (killed, OOM, CUDA error, lost node) before an item is failed.")
@click.option("--backoff", type=float, default=30.0, show_default=True,
              help="Seconds before the first retry; doubles with each failure.")
@click.option("--lease", type=float, default=60.0, show_default=True,
              help="Seconds a claim lives without renewal (renewed every lease/3); a dead worker's claims are "
                   "taken over after this.")
@click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between looks at the queue.")
@click.option("--forever", is_flag=True, help="Keep waiting for work when the queue is empty.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Attempt logs (default: queue-logs/ beside a database file, else ./vmbench-queue-logs).")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--time", "time_limit", default="24:00:00", show_default=True, help="SLURM time limit per job.")
@click.option("--gpus-per-run", type=int, default=None,
              help="SLURM GPUs per job (default: the run's own --gpus; 0 for CPU-only jobs).")
@click.option("--cpus-per-run", type=int, default=None, help="SLURM CPUs per job.")
@click.option("--mem", default=None, help="SLURM memory per job, e.g. 32G.")
@click.option("--account", default=None, help="SLURM account.")
@click.option("--qos", default=None, help="SLURM QoS.")
@click.option("--sbatch", "sbatch_extra", multiple=True, metavar="KEY=VALUE",
              help="Extra sbatch option (repeatable), e.g. --sbatch constraint=h100.")
@click.option("--max-jobs", type=int, default=8, show_default=True, help="SLURM jobs this worker keeps at once.")
@click.option("--signal-delay", type=int, default=120, show_default=True,
              help="SLURM: seconds before the time limit when the job is told to checkpoint and requeue.")
@click.option("--stats-file", type=click.Path(dir_okay=False), default=None, hidden=True,
              help="Write every claim's latency (ms) here as JSON at the end (benchmarks/queue_stress.py).")
@db_option
@json_option
def worker(executor, gpus, device, slots, min_free_mb, max_attempts, backoff, lease, poll, forever, log_dir,
           partition, time_limit, gpus_per_run, cpus_per_run, mem, account, qos, sbatch_extra, max_jobs, signal_delay,
           stats_file, db, as_json):
    """Run queued items until the queue is empty (or --forever): one run per free GPU (or CPU slot), or one
    SLURM job per run with --executor slurm.

    Infrastructure failures are retried with a back-off, resuming from the run's last checkpoint; user errors
    (exit code 2) are not. SIGTERM stops the running attempts at a step boundary with a checkpoint and puts them
    back on the queue; a second SIGTERM kills them.
    """
    from ..scheduler.worker import Worker, local_worker

    for name, v in (("--max-attempts", max_attempts), ("--lease", lease), ("--poll", poll), ("--max-jobs", max_jobs)):
        if v <= 0:
            _user_error(f"{name} must be > 0, got {v}")
    if slots is not None and (slots < 1 or device != "cpu"):
        _user_error("--slots N needs --device cpu and N >= 1")
    db = _abs_db(db)
    logs = Path(log_dir).resolve() if log_dir else _default_log_dir(db)
    con = _console(stderr=True)
    say = lambda msg: con.print(msg, markup=False, highlight=False)  # noqa: E731
    common = dict(lease_s=lease, max_attempts=max_attempts, backoff=backoff, forever=forever, poll_s=poll,
                  events=say)
    try:
        if executor == "slurm":
            from ..scheduler.slurm import SlurmExecutor

            ex = SlurmExecutor(logs, db, partition=partition, time_limit=time_limit, gpus_per_run=gpus_per_run,
                               cpus_per_run=cpus_per_run, mem=mem, account=account, qos=qos,
                               sbatch_extra=list(sbatch_extra), max_jobs=max_jobs, signal_delay_s=signal_delay,
                               lease_s=lease)
            w = Worker(db, ex, log_dir=logs, **common)
        else:
            w = local_worker(db, device=device, gpus=gpus, slots=slots, min_free_mb=min_free_mb, log_dir=logs,
                             **common)
    except ValueError as e:
        _user_error(str(e))
    summary = w.run()
    if stats_file:
        import json

        Path(stats_file).write_text(json.dumps({"claim_ms": w.claim_ms, **summary}))
    if as_json:
        _json_out(summary)
    else:
        say(f"worker {summary['worker']} ended: " +
            ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())) if summary["outcomes"]
            else f"worker {summary['worker']} ended: nothing to do")
