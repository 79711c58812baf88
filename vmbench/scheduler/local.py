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

from ..config import BenchSpec, Recipe, RunSpec
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


def execute_run(spec: RunSpec, db: str, console=None, show_progress: bool = True,
                recipe: Recipe | None = None) -> tuple[int, dict]:
    """Train + evaluate + benchmark one model on one dataset; returns (run_id, results).

    `recipe` (config.resolve_recipe) is recorded: its name as the run's recipe, its resolved values as
    params["recipe"] and its file as params["recipe_source"].

    Raises ValueError (nothing written) for user mistakes found before the run starts,
    RunFailed for a run that was recorded and failed, KeyboardInterrupt after recording `interrupted`.
    """
    from ..engine.train import Trainer

    hook: list[Callable[[str, int, int], None]] = [lambda task, completed, total: None]
    last_beat = [time.monotonic()]
    run_id_box: list[int] = []
    store_box: list[Store] = []

    def progress(task: str, completed: int, total: int) -> None:
        hook[0](task, completed, total)
        now = time.monotonic()
        if run_id_box and now - last_beat[0] > HEARTBEAT_EVERY_S:
            store_box[0].heartbeat(run_id_box[0])
            last_beat[0] = now

    # User mistakes (model, dataset, device, backend, database) raise here, before anything is written.
    trainer = Trainer(spec, progress=progress)
    store = Store(db)
    store_box.append(store)
    device = str(trainer.device)
    info = _record_env(device)
    params = spec.to_dict()
    if recipe is not None:
        params.update(recipe=dict(recipe.values), recipe_source=recipe.source)
    run_id = store.create_run(
        "train", trainer.model_name, spec.dataset, params, recipe=recipe.name if recipe else None, seed=spec.seed,
        tags=spec.tags, device=device, scan_backend=trainer.scan_backend, **info)
    run_id_box.append(run_id)
    try:
        with _sigterm_as_interrupt(), _progress(console, show_progress) as bar:
            hook[0] = bar
            for m in trainer.epochs():
                store.log_metrics(run_id, m, epoch=m.get("epoch"))
            results = trainer.finish()
    except BaseException as exc:
        status, message = _fail_status(exc)
        store.finish_run(run_id, status, error=_with_traceback(message, exc, status))
        store.close()
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RunFailed(run_id, message.splitlines()[0], isinstance(exc, ValueError)) from exc
    store.finish_run(run_id, "completed", results)
    store.close()
    return run_id, results


def execute_bench(spec: BenchSpec, db: str | None, console=None, show_progress: bool = True) -> tuple[int | None, dict]:
    """Benchmark one model (params, FLOPs, img/s, peak memory); stored as a bench run unless db is None."""
    from ..engine.bench import benchmark, resolve_device, resolve_scan_backend
    from ..models import resolve_model_name

    # User mistakes (model, device, backend, database) raise here, before anything is written.
    name = resolve_model_name(spec.model)
    device = resolve_device(spec.device).type
    resolve_scan_backend(spec.scan_backend, resolve_device(spec.device))
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


def execute_suite(db: str | None, *, device: str = "auto", scan_backend: str = "auto", batch: int = 128,
                  warmup: int = 3, repeats: int = 5, tags: list[str] | None = None, console=None,
                  show_progress: bool = True) -> tuple[list[dict], str]:
    """The paper suite (vmbench.engine.suite); each measured row is stored as a completed bench run."""
    from ..engine.bench import resolve_device
    from ..engine.suite import PAPER_MODELS, SECTIONS, run_suite, to_markdown

    store = Store(db) if db else None
    dev = resolve_device(device).type
    info = _record_env(dev) if store else {}

    def log(row: dict) -> None:
        if not store or row.get("error"):
            return
        params = {k: row.get(k) for k in ("section", "precision", "res", "batch", "compiled", "kind")}
        rid = store.create_run("bench", row["model"], None, params, tags=[*(tags or []), "suite:paper"],
                               device=dev, scan_backend=row.get("scan_backend"), **info)
        store.finish_run(rid, "completed", {k: row.get(k) for k in ("img_s", "latency_ms", "peak_mem_mb", "res",
                                                                   "precision", "first_call_s")})

    with _progress(console, show_progress) as hook:
        rows = run_suite(PAPER_MODELS, SECTIONS, device=device, scan_backend=scan_backend, batch=batch,
                         warmup=warmup, repeats=repeats, progress=hook, log=log)
    card = (info.get("env") or {}).get("gpu") or dev
    return rows, to_markdown(rows, card)
