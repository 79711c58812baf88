"""What every way of executing a run shares (in process, torchrun workers, and the queue / sweep / SLURM
executors): the errors a run ends with, stop signals, progress, the run's folder and log, its heartbeat thread,
recording a train run and writing its final state so that it is never lost.

Entry points: `create_train_run` (record a run, make its folder), `train_loop` (drive a Trainer to a final
status), `finish` (the last write, kept in a pending file when the database does not take it), `Heartbeat`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..recipe import Recipe
from ..store import Store
from ..store.pending import checkpoint_root  # noqa: F401 (scheduler.local re-exports it)
from ..store.tables import utcnow

HEARTBEAT_EVERY_S = float(os.environ.get("VMBENCH_HEARTBEAT_S") or 30.0)
RUN_LOG = "run.log"
RESUMABLE = ("failed", "interrupted")  # the statuses `vmbench resume` continues


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
def graceful_stop(console=None, saves_checkpoint: bool = True) -> Iterator[StopRequest]:
    """SIGINT and SIGTERM handlers for the length of a train run: the first sets the StopRequest yielded (and says
    so on `console`), a second raises KeyboardInterrupt at once. Outside the main thread nothing is installed."""
    stop = StopRequest()

    def handler(signum, frame):
        if stop.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        stop.signum = signum
        if console is not None:
            then = " and saving a checkpoint" if saves_checkpoint else " (this run keeps no checkpoint)"
            console.print(f"{signal.Signals(signum).name}: stopping after the current optimizer step{then}; send it "
                          "again to stop at once", style="yellow", markup=False)

    with signals_to(handler):
        yield stop


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a killed run is recorded as interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    with signals_to(handler, (signal.SIGTERM,)):
        yield


def _is_terminal(console) -> bool:
    return console is not None and bool(getattr(console, "is_terminal", False))


@contextlib.contextmanager
def progress_bar(console, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress hook `hook(task, completed, total)` backed by one rich Progress (only on a terminal: elsewhere
    train_loop prints one plain line per epoch)."""
    if not enabled or not _is_terminal(console):
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


class RunLog:
    """`run.log` in the run's folder: one line per event (start, each epoch, where the run is at each heartbeat,
    the end), flushed and fsynced, so that a killed run's log says where it was."""

    def __init__(self, folder: str | Path | None):
        self.path = Path(folder) / RUN_LOG if folder else None
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        if self.path is None:
            return
        stamp = utcnow().isoformat(timespec="seconds") + "Z"
        with self._lock, contextlib.suppress(OSError):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {line}\n")
                f.flush()
                os.fsync(f.fileno())


class Progress:
    """The trainer's progress hook: forwards to the rich bar in `slot[0]` and remembers where the run is (for the
    heartbeat's log line)."""

    def __init__(self) -> None:
        self.slot: list[Callable[[str, int, int], None]] = [lambda task, completed, total: None]
        self.where: str | None = None

    def __call__(self, task: str, completed: int, total: int) -> None:
        self.where = f"{task} {completed}/{total}"
        self.slot[0](task, completed, total)


class Heartbeat:
    """A daemon thread that beats the run's heartbeat every HEARTBEAT_EVERY_S seconds from the run's start to its
    end (setup, compiling and FLOP tracing included) and notes where the run is in its log. A failed beat is
    noted in the log and retried at the next one; it never stops the run."""

    def __init__(self, store: Store, run_id: int, log: RunLog | None = None, progress: Progress | None = None,
                 every: float | None = None):
        self.store, self.run_id, self.log, self.progress = store, run_id, log, progress
        self.every = HEARTBEAT_EVERY_S if every is None else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"vmbench-heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.store.heartbeat(self.run_id)
            except Exception as e:  # the database may be busy or away: the next beat tries again
                if self.log is not None:
                    self.log.write(f"heartbeat not written: {type(e).__name__}: {str(e).splitlines()[0]}")
            if self.log is not None and self.progress is not None and self.progress.where:
                self.log.write(f"at {self.progress.where}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def record_env(device: str) -> dict[str, Any]:
    from ..envinfo import collect_env, git_state

    sha, dirty = git_state()
    return {"env": collect_env(device), "git_sha": sha, "git_dirty": dirty}


def fail_status(exc: BaseException) -> tuple[str, str]:
    """(final status, one-line message) for a run that ended with `exc`."""
    from ..engine.train import DivergedError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"interrupted ({exc or 'Ctrl-C'})"
    if isinstance(exc, DivergedError):
        return "diverged", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


def with_traceback(message: str, exc: BaseException, status: str) -> str:
    """The stored error: internal failures keep the end of their traceback for debugging."""
    if status != "failed" or isinstance(exc, ValueError):
        return message
    return message + "\n" + "".join(traceback.format_exception(exc)[-4:])


def check_tensorboard(folder: str | None) -> None:
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


def interrupted_message(run_id: int, exc: KeyboardInterrupt, checkpoint_dir: str | None) -> str:
    """What the user is told about an interrupted train run: where it stopped and whether it can be resumed."""
    from ..checkpoint import latest_good
    from ..engine.train import TrainingStopped

    saved = checkpoint_dir is not None and latest_good(checkpoint_dir) is not None
    where = str(exc) if isinstance(exc, TrainingStopped) else "interrupted"
    if saved:
        return f"run {run_id} {where}; continue it with `vmbench resume {run_id}`"
    return f"run {run_id} {where}; it has no checkpoint to resume from"


def finish(store: Store, run_id: int, status: str, results: dict | None = None, error: str | None = None, *,
           folder: str | Path | None = None, run_uuid: str | None = None, console=None, **fields: Any) -> Path | None:
    """The run's last write (results + final status, one transaction). When the database does not take it, the
    same is written atomically to `<folder>/pending.json` (store.pending) and applied when the database next
    answers; returns that file's path (None when the database took it). Without a folder the error is raised."""
    try:
        store.finish_run(run_id, status, results, error, **fields)
        return None
    except Exception as e:
        if folder is None or run_uuid is None:
            raise
        from ..store.pending import write_pending

        path = write_pending(folder, run_uuid, run_id, status, results, error, fields)
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        RunLog(folder).write(f"final status {status} not written to the database ({why}); kept in {path}")
        if console is not None:
            console.print(f"warning: the database did not take run {run_id}'s final {status} status ({why}); it is "
                          f"kept in {path} and written there the next time vmbench opens the database",
                          style="yellow", markup=False)
        return path


def epoch_line(run_id: int, m: dict, epochs: int) -> str:
    """One plain line for a finished epoch (logs and non-terminal output)."""
    parts = [f"run {run_id} epoch {m.get('epoch')}/{epochs}"]
    for key in ("train_loss", "train_acc", "val_top1", "val_loss", "lr", "epoch_time_s"):
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{key} {v:.4g}")
    return " ".join(parts)


def train_loop(trainer, store: Store, run_id: int, console, show_progress: bool, progress: Progress,
               tensorboard: Path | None = None, shared_stop: Callable[[StopRequest], StopRequest] | None = None) -> dict:
    """Drive the trainer's remaining epochs and finish(); metrics go to `run_id` (and to TensorBoard event files
    in `tensorboard`), a plain line per epoch to the run's log (and to `console` when it is not a terminal). The
    first SIGINT/SIGTERM stops the trainer gracefully; every way out ends with a final status on the run
    (RunFailed / RunInterrupted raised). `shared_stop`: in rank 0 of a data-parallel run, turns this process's
    StopRequest into the one every rank agrees on."""
    spec = trainer.spec
    folder, run_uuid = spec.run_folder, spec.run_uuid
    log = RunLog(folder)
    keeps = bool(spec.checkpoint_dir)
    plain = console is not None and not _is_terminal(console)
    writer = None
    stop = StopRequest()
    with Heartbeat(store, run_id, log, progress):
        try:
            with graceful_stop(console, keeps) as local, progress_bar(console, show_progress) as bar:
                stop = shared_stop(local) if shared_stop is not None else local
                trainer.should_stop = stop
                progress.slot[0] = bar
                if tensorboard is not None:
                    from torch.utils.tensorboard import SummaryWriter

                    writer = SummaryWriter(str(tensorboard))
                for m in trainer.epochs():
                    store.log_metrics(run_id, m, epoch=m.get("epoch"))
                    line = epoch_line(run_id, m, trainer.spec.epochs)
                    log.write(line)
                    if plain:
                        console.file.write(line + "\n")
                        console.file.flush()
                    if writer is not None:
                        _tensorboard_epoch(writer, m)
                log.write("training done; measuring")
                results = trainer.finish()
        except BaseException as exc:
            status, message = fail_status(exc)
            if isinstance(exc, KeyboardInterrupt) and stop.requested:
                message = f"interrupted by {stop.name}: {exc}"
            log.write(f"ended {status}: {message.splitlines()[0]}")
            finish(store, run_id, status, error=with_traceback(message, exc, status), folder=folder,
                   run_uuid=run_uuid, console=console)
            store.close()
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterrupted(run_id, interrupted_message(run_id, exc, spec.checkpoint_dir)) from exc
            raise RunFailed(run_id, message.splitlines()[0], isinstance(exc, ValueError)) from exc
        finally:
            if writer is not None:
                writer.close()
    log.write("completed")
    finish(store, run_id, "completed", results, folder=folder, run_uuid=run_uuid, console=console)
    store.close()
    return results


def _tensorboard_epoch(writer, metrics: dict) -> None:
    """One epoch's numeric metrics as TensorBoard scalars at step = epoch."""
    epoch = metrics.get("epoch")
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, epoch)
    writer.flush()


def dataset_key(info, typed: str) -> str:
    """What a run records as its dataset: a folder given as a path is recorded resolved (so that `digits`,
    `../digits` and `/abs/digits/` are one dataset, and a resume from another folder finds it); a registry name
    (shapes, imagenet, …) as it is."""
    path = getattr(info, "path", None)
    if getattr(info, "kind", None) != "imagefolder" or not path:
        return typed
    given = Path(typed).expanduser()
    if not given.exists() or given.resolve() != Path(path).resolve():
        return typed  # a named dataset found under the data root
    return str(given.resolve())


def create_train_run(store: Store, spec: RunSpec, db: str, trainer, init_info: dict | None,
                     recipe: Recipe | None, gpus: str | None = None) -> tuple[int, Path | None]:
    """Record a new train run of `spec` (validated by `trainer`, which has not built anything) and make its
    folder `<checkpoint root>/<run uuid>` (checkpoints when the run keeps them, run.log, pending results):
    spec.run_uuid and spec.run_folder are set, and spec.checkpoint_dir when it keeps checkpoints. Returns (run_id,
    its TensorBoard folder or None). A folder that cannot be made ends the run as failed (RunFailed)."""
    import uuid

    from ..engine.bench import recorded_scan_backend

    root = checkpoint_root(db, spec.checkpoint_root)  # ValueError before anything is written
    device = str(trainer.device)
    info = record_env(device)
    run_uuid = uuid.uuid4().hex
    folder = root / run_uuid
    spec.checkpoint_root, spec.run_uuid, spec.run_folder = str(root), run_uuid, str(folder)
    spec.checkpoint_dir = str(folder) if spec.checkpoints else None
    typed = spec.dataset
    spec.dataset = dataset_key(trainer.dataset, spec.dataset)
    params = {**spec.to_dict(), "total_batch": spec.total_batch, "dataset_arg": typed, **(init_info or {})}
    if recipe is not None:
        params.update(recipe=dict(recipe.values), recipe_source=recipe.source)
    run_id = store.create_run(
        "train", trainer.model_name, spec.dataset, params, recipe=recipe.name if recipe else None, seed=spec.seed,
        tags=spec.tags, device=device, scan_backend=recorded_scan_backend(trainer.model_name, trainer.scan_backend),
        gpus=gpus, run_uuid=run_uuid,
        checkpoint_dir=str(folder), **info)
    tb = None
    if spec.tensorboard:
        tb = tensorboard_dir(spec.tensorboard, run_id, trainer.model_name)
        store.update_run(run_id, params={**params, "tensorboard_dir": str(tb)})
    try:
        folder.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        message = f"cannot create the run's folder {folder}: {exc.strerror or exc}"
        store.finish_run(run_id, "failed", error=message)
        store.close()
        raise RunFailed(run_id, message, False) from exc
    RunLog(folder).write(f"run {run_id} ({run_uuid}) started: {trainer.model_name} on {spec.dataset}, database "
                         f"{db}, pid {os.getpid()} on {socket.gethostname()}")
    return run_id, tb


def reopen_run(store: Store, run_id: int, epochs_done: int, history: list[dict]) -> None:
    """Make a claimed (resumed) run's metrics match the checkpoint's history: the store may hold metrics of
    epochs after the checkpoint (lost work) or lack the checkpoint's last epoch (killed between saving and
    logging)."""
    import sqlalchemy as sa

    from ..store.schema import Metric

    def tx(s) -> set:
        s.execute(sa.delete(Metric).where(Metric.run_id == run_id, Metric.epoch > epochs_done))
        return set(s.scalars(sa.select(Metric.epoch).where(Metric.run_id == run_id).distinct()))

    logged = store.write(tx)
    for m in history:
        if m.get("epoch") not in logged:
            store.log_metrics(run_id, m, epoch=m.get("epoch"))
