"""Run one job in this process: validate, record the run, drive the engine, write metrics and results.

Entry points: execute_run, execute_resume, execute_bench, execute_eval, execute_suite. This is the engine's
caller: it owns the store writes, the TensorBoard event files and the one rich Progress (the pieces shared with
the other executors are in .common). User mistakes raise ValueError before anything is written; once a run row
exists, every way out of it (success, error, Ctrl-C, SIGTERM) ends in a final status that reflects what happened
(kept in a pending file beside the run when the database does not take it: store.pending).

Each train run has its own folder `<checkpoint root>/<run uuid>/` (recorded as the run's checkpoint_dir):
checkpoints (unless the recipe says checkpoints = false), run.log. The root is --checkpoint-dir,
$VMBENCH_CHECKPOINTS, or `runs/` beside a SQLite database file; `execute_resume` continues from the folder.

Stopping a train run: the first SIGINT (Ctrl-C) or SIGTERM asks the trainer to stop after its current optimizer
step; it saves a checkpoint there (when the run keeps them) and the run is recorded as interrupted, resumable
with `vmbench resume RUN_ID`. A second signal interrupts at once (the last epoch's checkpoint stays). Bench and
eval runs stop at the first signal.

Train runs with `spec.world_size` > 1 (`--gpus N`) run in N data-parallel processes launched through torchrun:
see vmbench.scheduler.distributed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import BenchSpec, EvalSpec, RunSpec
from ..recipe import Recipe
from ..store import Store
from .common import (HEARTBEAT_EVERY_S, RESUMABLE, Heartbeat, Progress, RunFailed, RunInterrupted, RunLog, StopRequest,
                     check_tensorboard, checkpoint_root, create_train_run, fail_status, finish, graceful_stop,
                     progress_bar, record_env, reopen_run, sigterm_as_interrupt, signals_to, train_loop,
                     with_traceback)

__all__ = ["execute_run", "execute_resume", "execute_bench", "execute_eval", "execute_suite", "RunFailed",
           "RunInterrupted", "StopRequest", "HEARTBEAT_EVERY_S", "signals_to", "create_train_run", "reopen_run",
           "checkpoint_root", "RESUMABLE"]

# Older names of what moved to .common (kept for callers of this module).
_graceful_stop = graceful_stop


def _open(db: str, root: Path | None, create: bool = True) -> Store:
    """The store for a scheduler write, with any final results kept in pending files under `root` applied."""
    from ..store.pending import apply_pending

    store = Store(db, create=create)
    if root is not None:
        apply_pending(store, root)
    return store


def execute_run(spec: RunSpec, db: str, console=None, show_progress: bool = True,
                recipe: Recipe | None = None) -> tuple[int, dict]:
    """Train + evaluate + benchmark one model on one dataset; returns (run_id, results). A spec with
    world_size > 1 runs data-parallel (vmbench.scheduler.distributed.execute_distributed_run).

    `recipe` (recipe.resolve_recipe) is recorded: its name as the run's recipe, its resolved values as
    params["recipe"] and its file as params["recipe_source"]. The run's folder is
    `<spec.checkpoint_root or the default>/<run uuid>` (common.checkpoint_root).

    Raises ValueError (nothing written) for user mistakes found before the run starts,
    RunFailed for a run that was recorded and failed, KeyboardInterrupt after recording `interrupted`.
    """
    from ..engine.train import Trainer

    if spec.world_size > 1:
        from .distributed import execute_distributed_run

        return execute_distributed_run(spec, db, console=console, show_progress=show_progress, recipe=recipe)
    progress = Progress()
    # User mistakes (model, dataset, device, backend, starting weights, TensorBoard, database, checkpoint root)
    # raise here, before anything is written.
    root = checkpoint_root(db, spec.checkpoint_root)
    trainer = Trainer(spec, progress=progress)
    init_info = trainer.read_init_weights()
    check_tensorboard(spec.tensorboard)
    store = _open(db, root)
    run_id, tb = create_train_run(store, spec, db, trainer, init_info, recipe)
    return run_id, train_loop(trainer, store, run_id, console, show_progress, progress, tb)


def _spec_from_params(params: dict, run, checkpoint_dir: str | None) -> RunSpec:
    """The RunSpec a train run was started with (its params hold spec.to_dict() plus the recipe entries), its
    folder moved under `checkpoint_dir` (resume --checkpoint-dir) when given."""
    names = {f.name for f in dataclasses.fields(RunSpec)}
    kw = {k: v for k, v in params.items() if k in names}
    folder = Path(run.checkpoint_dir)
    if checkpoint_dir:
        folder = Path(checkpoint_dir).expanduser().resolve() / folder.name
    kw.update(weights=None, init=None, pretrained=False, checkpoint_dir=str(folder),  # the checkpoint has them
              run_folder=str(folder), checkpoint_root=str(folder.parent), run_uuid=run.run_uuid)
    return RunSpec(**kw)


def resumable(store: Store, run_id: int, db: str, checkpoint_dir: str | None = None):
    """(run, spec, newest good checkpoint) of a run that can be resumed; ValueError (one line) otherwise."""
    from ..checkpoint import latest_good
    from ..store import effective_status

    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"no run {run_id} in {db}")
    if run.kind != "train":
        raise ValueError(f"run {run_id} is a {run.kind} run; only train runs can be resumed")
    status = effective_status(run)
    if status not in RESUMABLE:
        raise ValueError(f"run {run_id} is {status}; only failed or interrupted runs can be resumed")
    if not run.checkpoint_dir or (run.params or {}).get("checkpoints") is False:
        raise ValueError(f"run {run_id} kept no checkpoints (recipe key checkpoints = false); it cannot be resumed")
    spec = _spec_from_params(dict(run.params or {}), run, checkpoint_dir)
    path = latest_good(spec.checkpoint_dir)
    if path is None:
        raise ValueError(f"run {run_id} has no loadable checkpoint in {spec.checkpoint_dir}")
    return run, spec, path


def execute_resume(run_id: int, db: str, console=None, show_progress: bool = True,
                   checkpoint_dir: str | None = None) -> tuple[int, dict]:
    """Continue a failed or interrupted train run from its newest loadable checkpoint; metrics go to the same
    run, which ends completed (or failed/interrupted again). Returns (run_id, results). `checkpoint_dir`: the
    checkpoint root the run's folder is in now, when it moved (default: the folder recorded on the run).

    The run is claimed atomically (Store.claim_run): of two resumes of one run, the second is refused.
    Raises ValueError (one line, nothing written) when the run does not exist, is not a train run, is not
    failed/interrupted, has no loadable checkpoint of its own, or is claimed by another process; RunFailed /
    KeyboardInterrupt as execute_run. A data-parallel run continues with as many processes as it was started with.
    """
    from ..engine.train import Trainer

    root = Path(checkpoint_dir).expanduser().resolve() if checkpoint_dir else None
    store = Store(db, create=False)
    try:
        from ..store.pending import apply_pending

        run0 = store.get_run(run_id)
        if run0 is not None and run0.checkpoint_dir:  # a final status kept beside the run: written first
            apply_pending(store, root or Path(run0.checkpoint_dir).parent)
        run, spec, path = resumable(store, run_id, db, checkpoint_dir)
        if spec.world_size > 1:
            from .distributed import execute_distributed_resume

            return execute_distributed_resume(run, spec, path, store, db, console=console,
                                              show_progress=show_progress)
        progress = Progress()
        trainer = Trainer(spec, progress=progress)
        tb = (run.params or {}).get("tensorboard_dir")  # the run's own folder, wherever resume is started from
        check_tensorboard(str(Path(tb).parent) if tb else None)
        trainer.resume_from(path)  # CheckpointError is a ValueError: nothing written yet
        store.claim_run(run_id, RESUMABLE)  # ValueError when another process took it first
    except BaseException:
        store.close()
        raise
    RunLog(spec.run_folder).write(f"run {run_id} resumed from {path} (epoch {trainer.epochs_done} done), pid "
                                  f"{__import__('os').getpid()}")
    reopen_run(store, run_id, trainer.epochs_done, trainer.history)
    return run_id, train_loop(trainer, store, run_id, console, show_progress, progress, Path(tb) if tb else None)


def _pending_folder(db: str) -> Path | None:
    """Where a bench or eval run's final state is kept if the database does not take it (None: nowhere)."""
    try:
        return checkpoint_root(db)
    except ValueError:
        return None


def _create(store: Store, db: str, kind: str, *args, **kw) -> tuple[int, Path | None, str]:
    import uuid

    run_uuid = uuid.uuid4().hex
    root = _pending_folder(db)
    run_id = store.create_run(kind, *args, run_uuid=run_uuid, **kw)
    return run_id, (root / run_uuid if root is not None else None), run_uuid


def execute_bench(spec: BenchSpec, db: str | None, console=None, show_progress: bool = True) -> tuple[int | None, dict]:
    """Benchmark one model (params, FLOPs, img/s, peak memory); stored as a bench run unless db is None."""
    from ..engine import SpecError
    from ..engine.bench import benchmark, resolve_device, resolve_scan_backend
    from ..models import resolve_model_name

    # User mistakes (model, device, backend, database) raise here, before anything is written.
    name = resolve_model_name(spec.model)
    device = resolve_device(spec.device).type
    resolve_scan_backend(spec.scan_backend, resolve_device(spec.device))
    if spec.cuda_graph and device != "cuda":
        raise SpecError(f"--cuda-graph needs a CUDA device; the benchmark would run on {device}")
    store = _open(db, _pending_folder(db)) if db else None
    run_id = folder = run_uuid = None
    if store:
        run_id, folder, run_uuid = _create(store, db, "bench", name, None, spec.to_dict(), tags=spec.tags,
                                           device=device, scan_backend=None, **record_env(device))
    with progress_bar(console, show_progress) as hook:
        try:
            with sigterm_as_interrupt(), (Heartbeat(store, run_id) if store else _nothing()):
                if spec.task == "detection":
                    from ..engine.detection_jobs import detection_benchmark

                    results = detection_benchmark(spec, progress=hook)
                else:
                    results = benchmark(spec, progress=hook)
        except BaseException as exc:
            if store:
                status, message = fail_status(exc)
                finish(store, run_id, status, error=with_traceback(message, exc, status), folder=folder,
                       run_uuid=run_uuid, console=console)
                store.close()
            if isinstance(exc, KeyboardInterrupt) or not store:
                raise
            raise RunFailed(run_id, fail_status(exc)[1], isinstance(exc, ValueError)) from exc
    if store:
        finish(store, run_id, "completed", results, folder=folder, run_uuid=run_uuid, console=console,
               scan_backend=results.get("scan_backend"))
        store.close()
    return run_id, results


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def execute_eval(spec: EvalSpec, db: str | None, console=None, show_progress: bool = True) -> tuple[int | None, dict]:
    """Evaluate a weights file on a dataset's validation split; stored as an eval run unless db is None. The
    run's params hold the spec plus weights_path / weights_sha256 / weights_format / weights_entry, the input
    size and the evaluation transform (eval_transform); its results top1 / top5 / val_loss and the rest.

    Raises ValueError (nothing written) when the model, dataset or file is wrong or the weights do not fit;
    RunFailed / KeyboardInterrupt as execute_bench.
    """
    from ..engine.bench import recorded_scan_backend
    from ..engine.evaluate import WeightsEval

    if spec.task == "detection":
        from ..engine.detection_jobs import DetectionWeightsEval

        job = DetectionWeightsEval(spec)
    else:
        job = WeightsEval(spec)
    info = job.prepare()  # reads and loads the weights: every user mistake surfaces here
    store = _open(db, _pending_folder(db)) if db else None
    run_id = folder = run_uuid = None
    if store:
        params = {**spec.to_dict(), **info}
        run_id, folder, run_uuid = _create(store, db, "eval", job.model_name, spec.dataset, params, tags=spec.tags,
                                           device=job.device.type,
                                           scan_backend=recorded_scan_backend(job.model_name, job.scan_backend),
                                           **record_env(job.device.type))
    with progress_bar(console, show_progress) as hook:
        try:
            with sigterm_as_interrupt(), (Heartbeat(store, run_id) if store else _nothing()):
                results = job.run(progress=hook)
        except BaseException as exc:
            if store:
                status, message = fail_status(exc)
                finish(store, run_id, status, error=with_traceback(message, exc, status), folder=folder,
                       run_uuid=run_uuid, console=console)
                store.close()
            if isinstance(exc, KeyboardInterrupt) or not store:
                raise
            raise RunFailed(run_id, fail_status(exc)[1], isinstance(exc, ValueError)) from exc
    if store:
        finish(store, run_id, "completed", results, folder=folder, run_uuid=run_uuid, console=console)
        store.close()
    return run_id, results


def execute_suite(db: str | None, *, device: str = "auto", scan_backend: str = "auto", batch: int = 128,
                  warmup: int = 3, repeats: int = 5, tags: list[str] | None = None, console=None,
                  show_progress: bool = True, sections=None, **options) -> tuple[list[dict], str]:
    """The paper suite (vmbench.engine.suite); each measured row is stored as a completed bench run.
    `sections` (default: all) and `options` (res, precision, channels_last) go to run_suite."""
    from ..engine.bench import resolve_device
    from ..engine.suite import PAPER_MODELS, SECTIONS, run_suite, to_markdown

    store = Store(db) if db else None
    dev = resolve_device(device).type
    info = record_env(dev) if store else {}

    def log(row: dict) -> None:
        if not store or row.get("error"):
            return
        params = {k: row.get(k) for k in ("section", "precision", "res", "batch", "compiled", "kind",
                                          "channels_last")}
        rid = store.create_run("bench", row["model"], None, params, tags=[*(tags or []), "suite:paper"],
                               device=dev, scan_backend=row.get("scan_backend"), **info)
        store.finish_run(rid, "completed", {k: row.get(k) for k in ("img_s", "latency_ms", "peak_mem_mb", "res",
                                                                   "precision", "first_call_s", "load_avg_1m",
                                                                   "load_warning")})

    with progress_bar(console, show_progress) as hook:
        rows = run_suite(PAPER_MODELS, sections or SECTIONS, device=device, scan_backend=scan_backend, batch=batch,
                         warmup=warmup, repeats=repeats, progress=hook, log=log, **options)
    card = (info.get("env") or {}).get("gpu") or dev
    return rows, to_markdown(rows, card)
