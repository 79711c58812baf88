"""Run one job in this process: validate, record the run, drive the engine, write metrics and results.

This is the engine's caller: it owns the store writes, the TensorBoard event files and the one rich Progress.
User mistakes raise ValueError before anything is written; once a run row
exists, every way out of it (success, error, Ctrl-C, SIGTERM) ends in a
final status that reflects what happened.

Train runs keep checkpoints in `<database folder>/runs/<run id>/` (recorded as the run's checkpoint_dir;
none for a database that is not a file), which `execute_resume` continues from.

Stopping a train run: the first SIGINT (Ctrl-C) or SIGTERM asks the trainer to stop after its current optimizer
step; it saves a checkpoint there (when the run keeps them) and the run is recorded as interrupted, resumable
with `vmbench resume RUN_ID`. A second signal interrupts at once (the last epoch's checkpoint stays). Bench and
eval runs stop at the first signal.

Train runs with `spec.world_size` > 1 (`--gpus N`) run in N data-parallel processes launched through torchrun:
see vmbench.scheduler.distributed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import BenchSpec, EvalSpec, Recipe, RunSpec
from ..store import Store
from ..store.schema import utcnow

HEARTBEAT_EVERY_S = 30.0


class RunFailed(Exception):
    """A recorded run ended as failed; `user_error` tells whether the cause was a user mistake."""

    def __init__(self, run_id: int, message: str, user_error: bool):
        super().__init__(message)
        self.run_id = run_id
        self.user_error = user_error


class RunInterrupted(KeyboardInterrupt):
    """A recorded run was stopped and recorded as interrupted; the message says how to go on with it."""

    def __init__(self, run_id: int, message: str):
        super().__init__(message)
        self.run_id = run_id


class StopRequest:
    """Callable flag: False until the first SIGINT/SIGTERM, then True (the trainer polls it)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for, without polling anything (safe on any way out of a run)."""
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop request"


@contextlib.contextmanager
def signals_to(handler, signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """`signals` (default SIGINT and SIGTERM) call `handler(signum, frame)` inside the block; the previous handlers
    come back after it. Outside the main thread (where Python cannot install handlers) nothing is installed."""
    try:
        old = {sig: signal.signal(sig, handler) for sig in signals}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def _graceful_stop(console=None) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM handlers for the length of a train run: the first sets the StopRequest yielded (and says
    so on `console`), a second raises KeyboardInterrupt at once. Outside the main thread nothing is installed."""
    stop = StopRequest()

    def handler(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        stop.signum = signum
        if console is not None:
            console.print(f"[yellow]{signal.Signals(signum).name}: stopping after the current optimizer step and "
                          "saving a checkpoint; send it again to stop at once[/]")

    with signals_to(handler):
        yield stop


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a killed run is recorded as interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    with signals_to(handler, (signal.SIGTERM,)):
        yield


@contextlib.contextmanager
def _progress(console, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress hook `hook(task, completed, total)` backed by one rich Progress."""
    if not enabled:
        yield lambda task, completed, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    tasks: dict[str, int] = {}
    with Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as prog:
        def hook(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = prog.add_task(task, total=total)
            prog.update(tasks[task], completed=completed, total=total)

        yield hook


def _record_env(device: str) -> dict[str, Any]:
    from ..envinfo import collect_env, git_state

    sha, dirty = git_state()
    return {"env": collect_env(device), "git_sha": sha, "git_dirty": dirty}


def _fail_status(exc: BaseException) -> tuple[str, str]:
    """(final status, one-line message) for a run that ended with `exc`."""
    from ..engine.train import DivergedError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"interrupted ({exc or 'Ctrl-C'})"
    if isinstance(exc, DivergedError):
        return "diverged", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


def _with_traceback(message: str, exc: BaseException, status: str) -> str:
    """The stored error: internal failures keep the end of their traceback for debugging."""
    if status != "failed" or isinstance(exc, ValueError):
        return message
    return message + "\n" + "".join(traceback.format_exception(exc)[-4:])


def checkpoint_root(db: str) -> Path | None:
    """`<database folder>/runs` for a file database (path or sqlite URL); None for an in-memory or server one."""
    from ..store.db import is_url

    if is_url(db):
        import sqlalchemy as sa

        url = sa.engine.make_url(db)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        path = Path(url.database)
    else:
        path = Path(db).expanduser()
    return path.resolve().parent / "runs"


def _check_tensorboard(folder: str | None) -> None:
    """ValueError (one line) when TensorBoard event files cannot be written to `folder` (None: not asked for)."""
    if folder is None:
        return
    import importlib

    try:
        importlib.import_module("torch.utils.tensorboard")  # needs the tensorboard package
    except ImportError as e:
        raise ValueError(f"--tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
    try:
        Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the TensorBoard folder {folder}: {e.strerror or e}") from None


def tensorboard_dir(folder: str, run_id: int, model: str) -> Path:
    """A run's own TensorBoard folder under `folder` (one per run, so TensorBoard compares runs side by side)."""
    return Path(folder).expanduser().resolve() / f"{run_id}-{model}"


def _interrupted_message(run_id: int, exc: KeyboardInterrupt, checkpoint_dir: str | None) -> str:
    """What the user is told about an interrupted train run: where it stopped and whether it can be resumed."""
    from ..checkpoint import latest_good
    from ..engine.train import TrainingStopped

    saved = checkpoint_dir is not None and latest_good(checkpoint_dir) is not None
    where = str(exc) if isinstance(exc, TrainingStopped) else "interrupted"
    if saved:
        return f"run {run_id} {where}; continue it with `vmbench resume {run_id}`"
    return f"run {run_id} {where}; it has no checkpoint to resume from"


def _train(trainer, store: Store, run_id: int, console, show_progress: bool, hook: list,
           tensorboard: Path | None = None, shared_stop: Callable[[StopRequest], StopRequest] | None = None) -> dict:
    """Drive the trainer's remaining epochs and finish(); metrics go to `run_id` (and to TensorBoard event files
    in `tensorboard`). The first SIGINT/SIGTERM stops the trainer gracefully (see the module docstring). Every
    way out ends with a final status on the run (RunFailed / RunInterrupted raised). `shared_stop`: in rank 0 of
    a data-parallel run, turns this process's StopRequest into the one every rank agrees on."""
    writer = None
    stop = StopRequest()
    try:
        with _graceful_stop(console) as local, _progress(console, show_progress) as bar:
            stop = shared_stop(local) if shared_stop is not None else local
            trainer.should_stop = stop
            hook[0] = bar
            if tensorboard is not None:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(tensorboard))
            for m in trainer.epochs():
                store.log_metrics(run_id, m, epoch=m.get("epoch"))
                if writer is not None:
                    _tensorboard_epoch(writer, m)
            results = trainer.finish()
    except BaseException as exc:
        status, message = _fail_status(exc)
        if isinstance(exc, KeyboardInterrupt) and stop.requested:
            message = f"interrupted by {stop.name}: {exc}"
        store.finish_run(run_id, status, error=_with_traceback(message, exc, status))
        store.close()
        if isinstance(exc, KeyboardInterrupt):
            raise RunInterrupted(run_id, _interrupted_message(run_id, exc, trainer.spec.checkpoint_dir)) from exc
        raise RunFailed(run_id, message.splitlines()[0], isinstance(exc, ValueError)) from exc
    finally:
        if writer is not None:
            writer.close()
    store.finish_run(run_id, "completed", results)
    store.close()
    return results


def _tensorboard_epoch(writer, metrics: dict) -> None:
    """One epoch's numeric metrics as TensorBoard scalars at step = epoch."""
    epoch = metrics.get("epoch")
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, epoch)
    writer.flush()


def _progress_with_heartbeat(run_id_box: list, store_box: list):
    """(progress hook for the trainer, the slot the rich bar is put in); beats the run's heartbeat."""
    hook: list[Callable[[str, int, int], None]] = [lambda task, completed, total: None]
    last_beat = [time.monotonic()]

    def progress(task: str, completed: int, total: int) -> None:
        hook[0](task, completed, total)
        now = time.monotonic()
        if run_id_box and now - last_beat[0] > HEARTBEAT_EVERY_S:
            store_box[0].heartbeat(run_id_box[0])
            last_beat[0] = now

    return progress, hook


def execute_run(spec: RunSpec, db: str, console=None, show_progress: bool = True,
                recipe: Recipe | None = None) -> tuple[int, dict]:
    """Train + evaluate + benchmark one model on one dataset; returns (run_id, results). A spec with
    world_size > 1 runs data-parallel (vmbench.scheduler.distributed.execute_distributed_run).

    `recipe` (config.resolve_recipe) is recorded: its name as the run's recipe, its resolved values as
    params["recipe"] and its file as params["recipe_source"].

    Raises ValueError (nothing written) for user mistakes found before the run starts,
    RunFailed for a run that was recorded and failed, KeyboardInterrupt after recording `interrupted`.
    """
    from ..engine.train import Trainer

    if spec.world_size > 1:
        from .distributed import execute_distributed_run

        return execute_distributed_run(spec, db, console=console, show_progress=show_progress, recipe=recipe)
    run_id_box: list[int] = []
    store_box: list[Store] = []
    progress, hook = _progress_with_heartbeat(run_id_box, store_box)

    # User mistakes (model, dataset, device, backend, starting weights, TensorBoard, database) raise here, before
    # anything is written.
    trainer = Trainer(spec, progress=progress)
    init_info = trainer.read_init_weights()
    _check_tensorboard(spec.tensorboard)
    store = Store(db)
    store_box.append(store)
    run_id, tb = create_train_run(store, spec, db, trainer, init_info, recipe)
    run_id_box.append(run_id)
    return run_id, _train(trainer, store, run_id, console, show_progress, hook, tb)


def create_train_run(store: Store, spec: RunSpec, db: str, trainer, init_info: dict | None,
                     recipe: Recipe | None, gpus: str | None = None) -> tuple[int, Path | None]:
    """Record a new train run of `spec` (validated by `trainer`, which has not built anything) and make its
    checkpoint folder (spec.checkpoint_dir is set to it); returns (run_id, its TensorBoard folder or None).
    A checkpoint folder that cannot be made ends the run as failed (RunFailed)."""
    from ..engine.bench import recorded_scan_backend

    device = str(trainer.device)
    info = _record_env(device)
    params = {**spec.to_dict(), "total_batch": spec.total_batch, **(init_info or {})}
    if recipe is not None:
        params.update(recipe=dict(recipe.values), recipe_source=recipe.source)
    run_id = store.create_run(
        "train", trainer.model_name, spec.dataset, params, recipe=recipe.name if recipe else None, seed=spec.seed,
        tags=spec.tags, device=device, scan_backend=recorded_scan_backend(trainer.model_name, trainer.scan_backend),
        gpus=gpus, **info)
    tb = None
    if spec.tensorboard:
        tb = tensorboard_dir(spec.tensorboard, run_id, trainer.model_name)
        store.update_run(run_id, params={**params, "tensorboard_dir": str(tb)})
    root = checkpoint_root(db) if spec.checkpoints else None
    if root is not None:
        ckpt_dir = root / str(run_id)
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            store.finish_run(run_id, "failed", error=f"cannot create checkpoint folder {ckpt_dir}: {exc}")
            store.close()
            raise RunFailed(run_id, f"cannot create checkpoint folder {ckpt_dir}: {exc}", False) from exc
        spec.checkpoint_dir = str(ckpt_dir)
        store.update_run(run_id, checkpoint_dir=str(ckpt_dir))
    return run_id, tb


RESUMABLE = ("failed", "interrupted")


def _spec_from_params(params: dict, checkpoint_dir: str) -> RunSpec:
    """The RunSpec a train run was started with (its params hold spec.to_dict() plus the recipe entries)."""
    names = {f.name for f in dataclasses.fields(RunSpec)}
    kw = {k: v for k, v in params.items() if k in names}
    kw.update(weights=None, init=None, pretrained=False, checkpoint_dir=checkpoint_dir)  # the checkpoint has them
    return RunSpec(**kw)


def execute_resume(run_id: int, db: str, console=None, show_progress: bool = True) -> tuple[int, dict]:
    """Continue a failed or interrupted train run from its newest loadable checkpoint; metrics go to the same
    run, which ends completed (or failed/interrupted again). Returns (run_id, results).

    Raises ValueError (one line, nothing written) when the run does not exist, is not a train run, is not
    failed/interrupted, or has no loadable checkpoint; RunFailed / KeyboardInterrupt as execute_run. A
    data-parallel run continues with as many processes as it was started with.
    """
    from ..checkpoint import latest_good
    from ..engine.train import Trainer
    from ..store import effective_status

    store = Store(db, create=False)
    try:
        run = store.get_run(run_id)
        if run is None:
            raise ValueError(f"no run {run_id} in {db}")
        if run.kind != "train":
            raise ValueError(f"run {run_id} is a {run.kind} run; only train runs can be resumed")
        status = effective_status(run)
        if status not in RESUMABLE:
            raise ValueError(f"run {run_id} is {status}; only failed or interrupted runs can be resumed")
        if not run.checkpoint_dir:
            raise ValueError(f"run {run_id} kept no checkpoints (recipe key checkpoints = false, or a database "
                             "without a folder); it cannot be resumed")
        path = latest_good(run.checkpoint_dir)
        if path is None:
            raise ValueError(f"run {run_id} has no loadable checkpoint in {run.checkpoint_dir}")
        spec = _spec_from_params(dict(run.params or {}), run.checkpoint_dir)
        if spec.world_size > 1:
            from .distributed import execute_distributed_resume

            return execute_distributed_resume(run, spec, path, store, db, console=console,
                                              show_progress=show_progress)
        run_id_box: list[int] = []
        store_box: list[Store] = [store]
        progress, hook = _progress_with_heartbeat(run_id_box, store_box)
        trainer = Trainer(spec, progress=progress)
        tb = (run.params or {}).get("tensorboard_dir")  # the run's own folder, wherever resume is started from
        _check_tensorboard(str(Path(tb).parent) if tb else None)
        trainer.resume_from(path)  # CheckpointError is a ValueError: nothing written yet
    except BaseException:
        store.close()
        raise
    run_id_box.append(run_id)
    reopen_run(store, run_id, trainer.epochs_done, trainer.history)
    return run_id, _train(trainer, store, run_id, console, show_progress, hook, Path(tb) if tb else None)


def reopen_run(store: Store, run_id: int, epochs_done: int, history: list[dict]) -> None:
    """Mark a resumed run running again in this process, its metrics made to match the checkpoint's history:
    the store may hold metrics of epochs after the checkpoint (lost work) or lack the checkpoint's last epoch
    (killed between saving and logging)."""
    import sqlalchemy as sa

    from ..store.schema import Metric

    store.update_run(run_id, status="running", pid=os.getpid(), host=socket.gethostname(),
                     heartbeat_at=utcnow(), ended_at=None, error=None)
    with store.session() as s, s.begin():
        s.execute(sa.delete(Metric).where(Metric.run_id == run_id, Metric.epoch > epochs_done))
        logged = set(s.scalars(sa.select(Metric.epoch).where(Metric.run_id == run_id).distinct()))
    for m in history:
        if m.get("epoch") not in logged:
            store.log_metrics(run_id, m, epoch=m.get("epoch"))


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
    store = Store(db) if db else None
    run_id = None
    if store:
        info = _record_env(device)
        run_id = store.create_run("bench", name, None, spec.to_dict(), tags=spec.tags, device=device,
                                  scan_backend=None, **info)
    with _progress(console, show_progress) as hook:
        try:
            with _sigterm_as_interrupt():
                results = benchmark(spec, progress=hook)
        except BaseException as exc:
            if store:
                status, message = _fail_status(exc)
                store.finish_run(run_id, status, error=_with_traceback(message, exc, status))
            if isinstance(exc, KeyboardInterrupt) or not store:
                raise
            raise RunFailed(run_id, _fail_status(exc)[1], isinstance(exc, ValueError)) from exc
    if store:
        store.finish_run(run_id, "completed", results, scan_backend=results.get("scan_backend"))
        store.close()
    return run_id, results


def execute_eval(spec: EvalSpec, db: str | None, console=None, show_progress: bool = True) -> tuple[int | None, dict]:
    """Evaluate a weights file on a dataset's validation split; stored as an eval run unless db is None. The
    run's params hold the spec plus weights_path / weights_sha256 / weights_format / weights_entry, the input
    size and the evaluation transform (eval_transform); its results top1 / top5 / val_loss and the rest.

    Raises ValueError (nothing written) when the model, dataset or file is wrong or the weights do not fit;
    RunFailed / KeyboardInterrupt as execute_bench.
    """
    from ..engine.bench import recorded_scan_backend
    from ..engine.evaluate import WeightsEval

    job = WeightsEval(spec)
    info = job.prepare()  # reads and loads the weights: every user mistake surfaces here
    store = Store(db) if db else None
    run_id = None
    if store:
        params = {**spec.to_dict(), **info}
        run_id = store.create_run("eval", job.model_name, spec.dataset, params, tags=spec.tags,
                                  device=job.device.type, scan_backend=recorded_scan_backend(job.model_name, job.scan_backend),
                                  **_record_env(job.device.type))
    with _progress(console, show_progress) as hook:
        try:
            with _sigterm_as_interrupt():
                results = job.run(progress=hook)
        except BaseException as exc:
            if store:
                status, message = _fail_status(exc)
                store.finish_run(run_id, status, error=_with_traceback(message, exc, status))
                store.close()
            if isinstance(exc, KeyboardInterrupt) or not store:
                raise
            raise RunFailed(run_id, _fail_status(exc)[1], isinstance(exc, ValueError)) from exc
    if store:
        store.finish_run(run_id, "completed", results)
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
    info = _record_env(dev) if store else {}

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

    with _progress(console, show_progress) as hook:
        rows = run_suite(PAPER_MODELS, sections or SECTIONS, device=device, scan_backend=scan_backend, batch=batch,
                         warmup=warmup, repeats=repeats, progress=hook, log=log, **options)
    card = (info.get("env") or {}).get("gpu") or dev
    return rows, to_markdown(rows, card)
