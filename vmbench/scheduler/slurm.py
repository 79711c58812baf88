"""Attempts as SLURM jobs, through submitit: `vmbench worker --executor slurm`. Entry points: `SlurmExecutor`
(what the worker uses) and `QueueJob` (what runs inside the job).

The worker claims an item and submits one job for it (partition, time, GPUs, CPUs, memory, account, QoS, extra
sbatch options); the job records its id and log path on the item. Inside the job, `QueueJob` runs the attempt's
`vmbench run` (or `vmbench resume RUN_ID`) as a child process and renews the item's lease itself, so the claim
lives while the job runs even if the worker is gone. When SLURM warns the job of its time limit or preempts it
(SIGUSR2, `--signal-delay` seconds ahead; `scancel --signal=USR2 JOB` does the same), submitit calls
`QueueJob.checkpoint`: the run is stopped at a step boundary with a checkpoint, the attempt is recorded as
requeued, and submitit requeues the job, which resumes the run when it starts again. The worker reads the job's
state with `scontrol` (no accounting database needed) and records how it ended.
"""
from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .process import cli_argv, die_with_parent

# UNKNOWN: scontrol could not answer (a busy or restarting controller); the job is asked about again later
_LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
         "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "UNKNOWN"}


def parse_time(text: str) -> int:
    """SLURM time ("MM", "HH:MM:SS", "D-HH:MM:SS", "MM:SS") → whole minutes (at least 1)."""
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        days = int(days or 0)
    except ValueError:
        raise ValueError(f"--time {text!r}: expected MM, HH:MM:SS or D-HH:MM:SS") from None
    if len(parts) == 1:
        secs = parts[0] * 60
    elif len(parts) == 2:
        secs = parts[0] * 60 + parts[1]
    elif len(parts) == 3:
        secs = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        raise ValueError(f"--time {text!r}: expected MM, HH:MM:SS or D-HH:MM:SS")
    secs += days * 86400
    if secs <= 0:
        raise ValueError(f"--time {text!r} must be positive")
    return max(1, math.ceil(secs / 60))


def job_state(job_id: str) -> str | None:
    """The job's state from `scontrol show job`: None once SLURM has forgotten it ("Invalid job id"), "UNKNOWN"
    when scontrol fails otherwise (a controller that is busy, restarting or unreachable is no sign the job ended)."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        return "UNKNOWN"
    if out.returncode != 0:
        return None if "Invalid job id" in out.stderr else "UNKNOWN"
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return None


class QueueJob:
    """The callable submitit runs inside the SLURM job: one attempt at queue item `item_id` under `token`."""

    def __init__(self, db: str, item_id: int, token: str, lease_s: float):
        self.db, self.item_id, self.token, self.lease_s = db, item_id, token, lease_s
        self._proc: subprocess.Popen | None = None
        self._lost = False

    def __call__(self) -> dict:
        from ..store.queue import Claim, Queue
        from .queue import attempt_argv, next_action

        with Queue(self.db) as q:
            item = q.get(self.item_id)
            if item is None or item.claim_token != self.token or item.status != "running":
                return {"rc": None, "note": "the claim is gone; nothing run"}
            claim = Claim(item, self.token)
            action, run_id = next_action(self.db, claim)
            if action == "done":
                return {"rc": 0, "action": action, "run_id": run_id}
            if action == "busy":  # the run's earlier process still lives: an infrastructure failure, retried
                return {"rc": 1, "action": action, "run_id": run_id}
            q.started(self.item_id, self.token, action, slurm_job_id=os.environ.get("SLURM_JOB_ID"))
        argv = attempt_argv(self.db, claim, action, run_id)
        print(f"vmbench queue item {self.item_id}, attempt {claim.attempt}: {' '.join(argv)}", flush=True)
        stop = threading.Event()
        beat = threading.Thread(target=self._renew, args=(stop,), daemon=True)
        beat.start()
        try:
            # SLURM signals every process of the step: the run ignores SIGUSR2 (submitit's cue to checkpoint) and
            # is stopped by checkpoint() with SIGTERM instead.
            self._proc = subprocess.Popen(cli_argv(*argv), preexec_fn=die_with_parent(ignore=(signal.SIGUSR2,)))
            rc = self._proc.wait()
        finally:
            stop.set()
        return {"rc": rc, "action": action, "run_id": run_id, "lost": self._lost}

    def _renew(self, stop: threading.Event) -> None:
        from ..store.queue import Queue

        with Queue(self.db) as q:
            while not stop.wait(self.lease_s / 3):
                try:
                    ok = q.renew(self.item_id, self.token, self.lease_s)
                except Exception:  # noqa: BLE001 — the database is away for a moment: try again next time
                    continue
                if not ok and self._proc is not None and self._proc.poll() is None:
                    self._lost = True  # cancelled or taken over: never two attempts at once
                    self._proc.send_signal(signal.SIGTERM)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on SIGUSR2 (time limit near, or preemption): stop the run at a step boundary (it
        saves a checkpoint), record the requeue, and hand submitit the same job to run again."""
        import submitit

        from ..store.queue import Queue

        if self._proc is not None and self._proc.returncode is None:
            # This runs inside a signal handler that interrupted Popen.wait(), which holds the Popen's wait lock:
            # wait for the child with waitpid instead.
            self._proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 600
            while not _reaped(self._proc.pid):
                if time.monotonic() > deadline:
                    os.kill(self._proc.pid, signal.SIGKILL)
                time.sleep(0.2)
        with Queue(self.db) as q:
            q.attempt_event(self.item_id, self.token, "requeued", error="SLURM time limit or preemption: requeued",
                            slurm_job_id=os.environ.get("SLURM_JOB_ID"))
        return submitit.helpers.DelayedSubmission(QueueJob(self.db, self.item_id, self.token, self.lease_s))


@dataclass
class SlurmHandle:
    job_id: str
    log_path: str
    result_path: str
    since: float
    cancel_sent: bool = False


class SlurmExecutor:
    """Submits each attempt as a SLURM job; `free_slots` is the room under `max_jobs`."""

    kinds = ("train",)
    records_gpus = False

    def __init__(self, log_dir: Path, db: str, *, partition: str | None, time_limit: str, gpus_per_run: int | None,
                 cpus_per_run: int | None, mem: str | None, account: str | None, qos: str | None,
                 sbatch_extra: list[str], max_jobs: int, signal_delay_s: int, lease_s: float | None = None,
                 max_requeues: int = 10):
        import shutil

        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError("--executor slurm needs submitit (pip install 'vmbench[slurm]')") from None
        if shutil.which("sbatch") is None:
            raise ValueError("--executor slurm: no sbatch on this machine's PATH")
        extra = {"open-mode": "append"}  # a requeued job's log keeps what its earlier starts wrote (SLURM truncates)
        for kv in sbatch_extra:
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise ValueError(f"--sbatch {kv!r}: expected KEY=VALUE (an sbatch option without its dashes)")
            extra[k.strip().lstrip("-")] = v
        self.minutes = parse_time(time_limit)
        self.folder = log_dir / "slurm"
        self.db, self.max_jobs, self.max_requeues = db, max_jobs, max_requeues
        self.params = dict(partition=partition, cpus_per_task=cpus_per_run, mem=mem, account=account, qos=qos,
                           additional_parameters=extra, signal_delay_s=signal_delay_s)
        self.gpus_per_run = gpus_per_run
        self.lease_s = lease_s
        self.jobs: dict[str, SlurmHandle] = {}
        self.busy: set[str] = set()  # the worker's noop bookkeeping (no noop items here)

    def free_slots(self) -> list[str]:
        return ["slurm"] * 64 if len(self.jobs) < self.max_jobs else []

    def start(self, argv, slots, log_path, claim) -> SlurmHandle:
        import submitit

        ex = submitit.SlurmExecutor(folder=str(self.folder / "%j"), max_num_timeout=self.max_requeues)
        on_cpu = (claim.spec or {}).get("device") == "cpu"
        gpus = self.gpus_per_run if self.gpus_per_run is not None else (0 if on_cpu else claim.gpus)
        params = {k: v for k, v in self.params.items() if v not in (None, {})}
        if gpus:
            params["gpus_per_node"] = gpus
        ex.update_parameters(time=self.minutes, job_name=f"vmbench-q{claim.item_id}", stderr_to_stdout=True,
                             **params)
        job = ex.submit(QueueJob(self.db, claim.item_id, claim.token, self.lease_s or 60.0))
        h = SlurmHandle(str(job.job_id), str(job.paths.stdout), str(job.paths.result_pickle), time.monotonic())
        self.jobs[h.job_id] = h
        return h

    def poll(self, h: SlurmHandle) -> int | None:
        state = job_state(h.job_id)
        if state is not None and state.split()[0] in _LIVE:
            return None
        self.jobs.pop(h.job_id, None)
        result = _read_result(h.result_path)
        if result is not None:
            outcome, value = result
            if outcome == "success" and isinstance(value, dict) and value.get("rc") is not None:
                return int(value["rc"])
        # Ended without a result (node failure, killed, cancelled): an infrastructure failure.
        return 128 + signal.SIGKILL if state in (None, "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "FAILED",
                                                 "TIMEOUT", "PREEMPTED", "BOOT_FAIL", "DEADLINE") else 1

    def stop(self, h: SlurmHandle) -> None:
        """Ask the job's run to stop at a step boundary: SIGTERM to its processes (submitit itself ignores it)."""
        if not h.cancel_sent:
            subprocess.run(["scancel", "--signal=TERM", h.job_id], capture_output=True, timeout=60)
            h.cancel_sent = True

    def kill(self, h: SlurmHandle) -> None:
        subprocess.run(["scancel", h.job_id], capture_output=True, timeout=60)
        self.jobs.pop(h.job_id, None)

    def forget_job(self, job_id: str, timeout: float = 120.0) -> None:
        """Cancel an earlier holder's job and wait until SLURM says it has ended (never two attempts at once)."""
        subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=60)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = job_state(job_id)
            if state is None or state.split()[0] not in _LIVE:
                return
            time.sleep(1.0)
        raise RuntimeError(f"SLURM job {job_id} did not end after scancel")


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _read_result(path: str):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
