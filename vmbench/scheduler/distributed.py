"""Data-parallel train runs: `vmbench run MODEL DATASET --gpus N` (N >= 2), and `vmbench resume` of such a run.

The parent process (the CLI) does what execute_run does for one process: it validates the spec (every user
mistake is a ValueError before anything is written; N must not exceed the visible GPUs), records the run (with
world_size and total_batch in its params, the GPUs used in its `gpus` column) and makes its checkpoint folder.
Then it launches

    python -m torch.distributed.run --standalone --nproc-per-node N -m vmbench.scheduler.distributed CONTROL

and waits. CONTROL is a private temporary folder: the parent writes job.json there (run id, database, the spec,
the checkpoint to resume from) and, when asked to stop, `stop`; each rank writes its outcome (rank<r>.json) and
rank 0 its results (result.json).

Each worker joins the process group (gloo on the CPU — `--device cpu` is how CI tests this —, nccl with
cuda:LOCAL_RANK on GPUs) and trains as one rank of a vmbench.engine.train.Trainer. Rank 0 alone opens the store:
it writes the per-epoch metrics, the heartbeat, the results and the final status exactly as a single-process run
does; rank 0 alone writes checkpoints and measures throughput and FLOPs after training.

Stopping: the workers run in sessions of their own, so a Ctrl-C in the terminal reaches the parent only. The
parent's first SIGINT/SIGTERM writes the stop file; every rank polls it (and its own signals) after each optimizer
step and an all-reduce makes all ranks stop after the same step: rank 0 saves the checkpoint and records the run
as interrupted, resumable with `vmbench resume RUN_ID` (with the same number of processes). A second signal kills
the launcher and the workers at once; the parent records the run as interrupted (the last checkpoint stays). If
the parent itself is killed outright, the launcher and the workers are stopped too (Linux).

When the workers end and rank 0 has not recorded a final status (a crash, a killed process), the parent records
one: the earliest failure a rank reported, else `failed` with the launcher's exit code. When rank 0 failed after
another rank had (a collective with a dead peer), the other rank's error is recorded: it is the cause.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import RunSpec
from ..recipe import Recipe
from ..store import Store
from .common import (RESUMABLE, Progress, RunFailed, RunInterrupted, RunLog, StopRequest, check_tensorboard, checkpoint_root,
                     create_train_run, fail_status, finish, graceful_stop, interrupted_message, reopen_run,
                     signals_to, train_loop, with_traceback)

JOB, STOP, RESULT = "job.json", "stop", "result.json"
_LINUX = sys.platform.startswith("linux")
# Runs torchrun with the parent-death signal SIGTERM (PR_SET_PDEATHSIG = 1), which survives execv: if the CLI
# process is killed outright, torchrun stops its workers instead of leaving them to run unattended.
_EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); os.execv(sys.executable, [sys.executable] + sys.argv[2:])")


# -- parent -------------------------------------------------------------------------------------------------------
def check_world(spec: RunSpec, device) -> str | None:
    """ValueError (one line) when `spec.world_size` processes cannot run on `device` here; returns the GPUs they
    use ("0,1", as CUDA numbers them in this environment), or None on the CPU."""
    import torch

    n = spec.world_size
    if device.type != "cuda":
        return None
    visible = torch.cuda.device_count()
    if n > visible:
        raise ValueError(f"--gpus {n} needs {n} CUDA devices; {visible} visible here")
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",")] if listed else [str(i) for i in range(visible)]
    return ",".join(ids[:n])


def _worker_db(db: str) -> str:
    """The database as the workers must open it: an absolute file path, or the URL (not an in-memory SQLite one,
    which another process cannot see: ValueError)."""
    from ..store.db import is_url

    if not is_url(db):
        return str(Path(db).expanduser().resolve())
    import sqlalchemy as sa

    url = sa.engine.make_url(db)
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"):
        raise ValueError("--gpus needs a database that every process can open (a file or a server), not an "
                         "in-memory SQLite database")
    return db


def execute_distributed_run(spec: RunSpec, db: str, console=None, show_progress: bool = True,
                            recipe: Recipe | None = None) -> tuple[int, dict]:
    """`execute_run` of a spec with world_size > 1: validate, record the run, launch the ranks through torchrun,
    wait; returns (run_id, results). Raises as execute_run does."""
    from ..engine.train import Trainer

    assert spec.world_size > 1, spec.world_size
    # User mistakes (model, dataset, device, backend, starting weights, GPUs, TensorBoard, database) raise here,
    # before anything is written. The workers read the starting weights again.
    trainer = Trainer(spec)
    init_info = trainer.read_init_weights()
    gpus = check_world(spec, trainer.device)
    worker_db = _worker_db(db)
    checkpoint_root(db, spec.checkpoint_root)
    check_tensorboard(spec.tensorboard)
    store = Store(db)
    run_id, tb = create_train_run(store, spec, db, trainer, init_info, recipe, gpus=gpus)
    del trainer  # and the weights it read
    return run_id, _launch(store, run_id, worker_db, spec, console, show_progress, None, tb)


def execute_distributed_resume(run, spec: RunSpec, path: Path, store: Store, db: str, console=None,
                               show_progress: bool = True) -> tuple[int, dict]:
    """`execute_resume` of a data-parallel run (spec.world_size > 1): the same checks (ValueError, nothing
    written), then the run goes on from checkpoint `path` with as many processes as it was started with."""
    from ..checkpoint import load_checkpoint
    from ..engine.train import Trainer, check_resume_state

    trainer = Trainer(spec)
    state = load_checkpoint(path)
    check_resume_state(state, path, trainer.model_name, spec.epochs, spec.world_size, run_uuid=spec.run_uuid)
    gpus = check_world(spec, trainer.device)
    worker_db = _worker_db(db)
    tb = (run.params or {}).get("tensorboard_dir")
    check_tensorboard(str(Path(tb).parent) if tb else None)
    store.claim_run(run.id, RESUMABLE)  # ValueError when another process took it first
    RunLog(spec.run_folder).write(f"run {run.id} resumed from {path} with {spec.world_size} processes")
    reopen_run(store, run.id, int(state["epochs_done"]), list(state["history"]))
    if gpus is not None:
        store.update_run(run.id, gpus=gpus)
    del state
    return run.id, _launch(store, run.id, worker_db, spec, console, show_progress, str(path),
                           Path(tb) if tb else None)


class _ParentStop:
    """The parent's SIGINT/SIGTERM handler while the ranks run: the first writes the stop file, a second kills
    the launcher (and with it the workers) at once."""

    def __init__(self, control: Path, console, world_size: int):
        self.control, self.console, self.world_size = control, console, world_size
        self.signum: int | None = None
        self.hard = False
        self.proc: subprocess.Popen | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            _write_atomic(self.control / STOP, str(int(signum)))
            if self.console is not None:
                self.console.print(f"[yellow]{signal.Signals(signum).name}: all {self.world_size} processes stop "
                                   "after the same optimizer step and rank 0 saves a checkpoint; send it again to "
                                   "stop at once[/]")
            return
        self.hard = True
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the launcher's own session; workers die with it

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop request"


@contextlib.contextmanager
def _parent_signals(control: Path, console, world_size: int) -> Iterator[_ParentStop]:
    stop = _ParentStop(control, console, world_size)
    with signals_to(stop):
        yield stop


def _launch(store: Store, run_id: int, db: str, spec: RunSpec, console, show_progress: bool,
            resume_from: str | None, tensorboard: Path | None) -> dict:
    """Run the ranks of recorded run `run_id` through torchrun, wait, and return rank 0's results, or raise
    RunFailed / RunInterrupted once the run has its final status."""
    n = spec.world_size
    control = Path(tempfile.mkdtemp(prefix=f"vmbench-run{run_id}-"))
    try:
        job = dict(run_id=run_id, db=db, spec=spec.to_dict(), resume_from=resume_from,
                   tensorboard=str(tensorboard) if tensorboard else None, show_progress=show_progress)
        _write_atomic(control / JOB, json.dumps(job))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", __name__, str(control)]
        if _LINUX:
            cmd = [sys.executable, "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *cmd[1:]]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # the CPU shared by the ranks
        if console is not None:
            backend = "gloo, CPU" if spec.device == "cpu" or _no_cuda() else "nccl"
            console.print(f"run {run_id}: {n} data-parallel processes ({backend}) through torchrun")
        with _parent_signals(control, console, n) as stop:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            stop.proc = proc
            if stop.hard:  # a second signal came before the launcher existed
                stop.kill()
            rc = proc.wait()
        return _outcome(store, run_id, control, rc, stop, spec.checkpoint_dir)
    finally:
        shutil.rmtree(control, ignore_errors=True)
        store.close()


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def _outcome(store: Store, run_id: int, control: Path, rc: int, stop: _ParentStop,
             checkpoint_dir: str | None) -> dict:
    """Rank 0's results for a completed run; otherwise the run's final status (recorded here when no rank did)
    raised as RunFailed / RunInterrupted."""
    run = store.get_run(run_id)
    assert run is not None, run_id
    reports = []
    for f in sorted(control.glob("rank*.json")):
        with contextlib.suppress(OSError, ValueError):
            reports.append(json.loads(f.read_text()))
    if run.status == "completed":
        result = control / RESULT
        if result.exists():
            return json.loads(result.read_text())
        from ..store import results_dict

        return results_dict(run)
    by_rank = {r["rank"]: r for r in reports}
    failures = sorted((r for r in reports if r["status"] in ("failed", "diverged")), key=lambda r: r["time"])
    first = failures[0] if failures else None
    status, error = run.status, run.error or ""
    user_error = bool(by_rank.get(0, {}).get("user_error"))
    if status == "running" or (first is not None and first["rank"] != 0 and status in ("failed", "diverged")):
        if first is not None:
            status, error, user_error = first["status"], f"rank {first['rank']}: {first['error']}", first["user_error"]
        elif stop.signum is not None:
            status, error = "interrupted", f"interrupted by {stop.name}" + (" (stopped at once)" if stop.hard else "")
        else:
            status, error = "failed", (f"the {run.params.get('world_size')} worker processes ended (torchrun exit "
                                       f"code {rc}) without a result; see the messages above")
        finish(store, run_id, status, error=error, folder=spec_folder(run), run_uuid=run.run_uuid)
    missing = [str(r) for r in range(int(run.params.get("world_size") or 0)) if r not in by_rank]
    if missing and status in ("failed", "diverged"):  # e.g. killed: its peers then fail in a collective
        head, nl, rest = error.partition("\n")
        error = f"{head} (rank {', '.join(missing)} ended without a report: see the launcher's messages){nl}{rest}"
        store.update_run(run_id, error=error)
    if status == "interrupted":
        message = by_rank.get(0, {}).get("message") if run.status == "interrupted" else None
        raise RunInterrupted(run_id, message or interrupted_message(run_id, KeyboardInterrupt(error),
                                                                     checkpoint_dir))
    raise RunFailed(run_id, error.splitlines()[0] if error else status, user_error)


def spec_folder(run) -> str | None:
    """The run's own folder (run.log, pending results)."""
    return (run.params or {}).get("run_folder") or run.checkpoint_dir


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- workers ------------------------------------------------------------------------------------------------------
class SharedStop(StopRequest):
    """One rank's stop flag: polled by the trainer after each optimizer step (and between epochs) on every rank at
    the same points, it all-reduces "this rank got a signal, or the parent wrote the stop file", so that all ranks
    stop after the same step. Once true it stays true without communicating."""

    def __init__(self, local: StopRequest, dist, stop_file: Path):
        super().__init__()
        self.local, self.dist, self.stop_file = local, dist, stop_file
        self.decided = False

    def _asked(self) -> int | None:
        if self.local.signum is not None:
            return self.local.signum
        try:
            text = self.stop_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else int(signal.SIGTERM)

    def __call__(self) -> bool:
        if not self.decided:
            asked = self._asked()
            if self.dist.any(asked is not None):
                self.decided = True
                self.signum = asked if asked is not None else self._asked()
        return self.decided

    @property
    def requested(self) -> bool:
        return self.decided


def _die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent (torchrun) dies (Linux; elsewhere nothing)."""
    if not _LINUX:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, int(sig))  # PR_SET_PDEATHSIG


def _join(spec: RunSpec, rank: int, world_size: int, local_rank: int):
    """Join the default process group; this rank's Distributed (gloo on the CPU, nccl on cuda:local_rank)."""
    import torch
    import torch.distributed as dist

    from ..engine.bench import resolve_device
    from ..engine.train import Distributed

    device = resolve_device(spec.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Distributed(rank=rank, world_size=world_size, device=device)


def _work(control: Path, job: dict, rank: int, world_size: int, local_rank: int) -> dict[str, Any]:
    """Train as rank `rank`; the outcome to report (rank 0 has recorded it on the run already)."""
    from ..engine.train import Trainer

    spec = RunSpec(**job["spec"])
    assert spec.world_size == world_size, (spec.world_size, world_size)
    ctx = _join(spec, rank, world_size, local_rank)

    def shared(local: StopRequest) -> SharedStop:
        return SharedStop(local, ctx, control / STOP)

    if rank != 0:
        trainer = Trainer(spec, dist=ctx)
        with graceful_stop() as local:
            trainer.should_stop = shared(local)
            if job["resume_from"]:
                trainer.resume_from(job["resume_from"])
            for _ in trainer.epochs():
                pass
            trainer.finish()
        return dict(status="completed")

    from rich.console import Console

    run_id = job["run_id"]
    store = Store(job["db"], create=False)
    progress = Progress()
    console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    trainer = Trainer(spec, progress=progress, dist=ctx)
    try:
        if job["resume_from"]:
            trainer.resume_from(job["resume_from"])
    except BaseException:
        store.close()  # the parent records the failure from this rank's report
        raise
    tb = Path(job["tensorboard"]) if job["tensorboard"] else None
    try:
        results = train_loop(trainer, store, run_id, console, job["show_progress"], progress, tb,
                             shared_stop=shared)
    except RunInterrupted as exc:
        return dict(status="interrupted", message=str(exc))
    except RunFailed as exc:
        cause = exc.__cause__ or exc
        status, message = fail_status(cause)
        return dict(status=status, message=str(exc), error=with_traceback(message, cause, status),
                    user_error=exc.user_error)
    _write_atomic(control / RESULT, json.dumps(results, default=str))
    return dict(status="completed")


def main(argv: list[str] | None = None) -> int:
    """One rank, started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) with the control folder
    as its argument. Exit code 0 when the run completed or was interrupted on every rank, 1 on a failure (so
    that torchrun stops the other ranks)."""
    argv = sys.argv[1:] if argv is None else argv
    assert len(argv) == 1, "usage: python -m torch.distributed.run … -m vmbench.scheduler.distributed CONTROL_DIR"
    control = Path(argv[0])
    _die_with_parent(signal.SIGKILL)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    report: dict[str, Any] = dict(rank=rank, status="completed", message=None, error=None, user_error=False)
    try:
        job = json.loads((control / JOB).read_text())
        report.update(_work(control, job, rank, world_size, local_rank))
    except BaseException as exc:
        status, message = fail_status(exc)
        report.update(status=status, message=message.splitlines()[0], error=with_traceback(message, exc, status),
                      user_error=isinstance(exc, ValueError))
    report["time"] = time.time()
    _write_atomic(control / f"rank{rank}.json", json.dumps(report))
    ok = report["status"] in ("completed", "interrupted")
    if ok:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
