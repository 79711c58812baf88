"""Run one job in this process: validate, record the run, drive the engine, write metrics and results.

This is the engine's caller: it owns the store writes and the one rich Progress.
User mistakes raise ValueError before anything is written; once a run row
exists, every way out of it (success, error, Ctrl-C, SIGTERM) ends in a
final status that reflects what happened.
"""
from __future__ import annotations

import contextlib
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from ..config import BenchSpec, RunSpec
from ..store import Store

HEARTBEAT_EVERY_S = 30.0


class RunFailed(Exception):
    """A recorded run ended as failed; `user_error` tells whether the cause was a user mistake."""

    def __init__(self, run_id: int, message: str, user_error: bool):
        super().__init__(message)
        self.run_id = run_id
        self.user_error = user_error


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a killed run is recorded as interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"interrupted ({exc or 'Ctrl-C'})"
    if getattr(exc, "diverged", False):
        return "diverged", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


def execute_run(spec: RunSpec, db: str, console=None, show_progress: bool = True) -> tuple[int, dict]:
    """Train + evaluate + benchmark one model on one dataset; returns (run_id, results).

    Raises ValueError (nothing written) for user mistakes found before the run starts,
    RunFailed for a run that was recorded and failed, KeyboardInterrupt after recording `interrupted`.
    """
    from ..engine.train import Trainer

    store = Store(db)  # an unwritable DB is a user mistake: fail before any work
    with _progress(console, show_progress) as hook:
        last_beat = [time.monotonic()]
        run_id_box: list[int] = []

        def progress(task: str, completed: int, total: int) -> None:
            hook(task, completed, total)
            now = time.monotonic()
            if run_id_box and now - last_beat[0] > HEARTBEAT_EVERY_S:
                store.heartbeat(run_id_box[0])
                last_beat[0] = now

        trainer = Trainer(spec, progress=progress)  # validates model, dataset, device, backend
        info = _record_env(trainer.device)
        run_id = store.create_run(
            "train", spec.model, spec.dataset, spec.to_dict(), recipe="smoke", seed=spec.seed, tags=spec.tags,
            device=trainer.device, scan_backend=trainer.scan_backend, **info)
        run_id_box.append(run_id)
        try:
            with _sigterm_as_interrupt():
                for m in trainer.epochs():
                    store.log_metrics(run_id, m, epoch=m.get("epoch"))
                results = trainer.finish()
        except BaseException as exc:
            status, message = _fail_status(exc)
            store.finish_run(run_id, status, error=message)
            if isinstance(exc, KeyboardInterrupt):
                raise
            if status == "failed" and not isinstance(exc, ValueError):
                message += "\n" + "".join(traceback.format_exception(exc)[-3:])
            raise RunFailed(run_id, message.splitlines()[0], isinstance(exc, ValueError)) from exc
        store.finish_run(run_id, "completed", results)
    store.close()
    return run_id, results


def execute_bench(spec: BenchSpec, db: str | None, console=None, show_progress: bool = True) -> tuple[int | None, dict]:
    """Benchmark one model (params, FLOPs, img/s, peak memory); stored as a bench run unless db is None."""
    from ..engine.bench import benchmark, validate_bench

    store = Store(db) if db else None
    device = validate_bench(spec)  # user mistakes raise here, before anything is written
    run_id = None
    if store:
        info = _record_env(device)
        run_id = store.create_run("bench", spec.model, None, spec.to_dict(), tags=spec.tags, device=device,
                                  scan_backend=None, **info)
    with _progress(console, show_progress) as hook:
        try:
            with _sigterm_as_interrupt():
                results = benchmark(spec, progress=hook)
        except BaseException as exc:
            if store:
                status, message = _fail_status(exc)
                store.finish_run(run_id, status, error=message)
            if isinstance(exc, KeyboardInterrupt) or not store:
                raise
            raise RunFailed(run_id, _fail_status(exc)[1], isinstance(exc, ValueError)) from exc
    if store:
        store.finish_run(run_id, "completed", results, scan_backend=results.get("scan_backend"))
        store.close()
    return run_id, results
