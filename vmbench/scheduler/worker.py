"""A queue worker: claims items while it has free slots, runs each attempt through an executor (local child
processes, or SLURM jobs), renews the claims' leases, and records how each attempt ended. Entry point:
`Worker(db, executor, ...).run()` (the `vmbench worker` command).

- An attempt that ends with exit code 0 marks its item done; exit code 2 (a user error) marks it failed; anything
  else (killed, out of memory, CUDA error, a crash) queues it again after a back-off, until `max_attempts`
  failures. The next attempt resumes the run from its checkpoint when it has one.
- A lease is renewed every lease/3 seconds; when a renewal finds the claim gone (cancelled, or expired and taken
  over) the worker stops that attempt without writing anything about the item — never two attempts at once.
- The first SIGTERM / SIGINT stops every attempt at a step boundary (SIGTERM: each saves a checkpoint) and puts
  its item back on the queue; a second one kills them. A worker killed outright leaves claims that expire.
- Without `forever` the worker ends when nothing is queued or running any more.
"""
from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..store.queue import Claim, Queue
from .process import worker_name
from .local_exec import LocalExecutor
from .queue import attempt_argv, backoff_s, find_run, judge_exit, next_action, read_tail

STOP_GRACE_S = 300.0  # how long a stopped attempt may take to save its checkpoint before it is killed


@dataclass
class Running:
    claim: Claim
    handle: Any  # what the executor returned; None for a noop attempt
    action: str
    slots: list[str]
    run_id: int | None
    started: float = field(default_factory=time.monotonic)
    noop_until: float | None = None
    traced: bool = False  # a noop's end is traced once, even when recording it is retried
    lost_at: float | None = None  # the claim was found gone: stop without writing
    renewed_at: float = field(default_factory=time.monotonic)  # the lease runs until renewed_at + lease


class Worker:
    def __init__(self, db: str, executor, *, lease_s: float = 60.0, max_attempts: int = 3, backoff: float = 30.0,
                 forever: bool = False, poll_s: float = 1.0, log_dir: Path, name: str | None = None,
                 events: Callable[[str], None] | None = None):
        self.db, self.ex = db, executor
        self.lease_s, self.max_attempts, self.backoff, self.forever = lease_s, max_attempts, backoff, forever
        self.poll_s, self.log_dir = min(poll_s, lease_s / 6), log_dir
        self.name = name or worker_name()
        self.say = events or (lambda msg: None)
        self.running: dict[int, Running] = {}
        self.stopping = 0  # signals received
        self.stop_since: float | None = None
        self.claim_ms: list[float] = []
        self.outcomes: dict[str, int] = {}
        self._last_renew = 0.0

    # ---- main loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.queue = Queue(self.db)
        try:
            while True:
                try:
                    if self._tick():
                        break
                except sa.exc.OperationalError as e:  # the database is busy or gone for a moment: try again
                    self.say(f"database error, retrying: {str(e.orig).splitlines()[0]}")
                    time.sleep(self.poll_s)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.queue.close()
        return self.summary()

    def _on_signal(self, signum, frame) -> None:
        self.stopping += 1
        if self.stop_since is None:
            self.stop_since = time.monotonic()
            self.say(f"{signal.Signals(signum).name}: stopping the running attempts at a step boundary")
        else:
            self.say(f"{signal.Signals(signum).name} again: killing the running attempts")

    def _tick(self) -> bool:
        """One round; True when the worker is done."""
        self._reap()
        self._renew()
        if self.stopping:
            for r in self.running.values():
                if r.handle is not None:
                    self.ex.stop(r.handle)
                    if self.stopping > 1 or time.monotonic() - self.stop_since > STOP_GRACE_S:
                        self.ex.kill(r.handle)
                else:
                    r.noop_until = 0.0
            if not self.running:
                return True
            time.sleep(self.poll_s)
            return False
        started = self._fill()
        if not started:
            if not self.running and not self.forever and self._queue_drained():
                return True
            time.sleep(self.poll_s)
        return False

    def _queue_drained(self) -> bool:
        counts = self.queue.counts()
        return counts.get("queued", 0) == 0 and counts.get("running", 0) == 0

    # ---- claiming and starting ----------------------------------------------------------------------------
    def _fill(self) -> bool:
        started = False
        while not self.stopping:
            free = self.ex.free_slots()
            if not free:
                break
            t0 = time.perf_counter()
            t_claim = time.monotonic()  # the lease runs from (at the latest) here
            claim = self.queue.claim(self.name, lease_s=self.lease_s, max_gpus=len(free),
                                     max_failures=self.max_attempts, kinds=self.ex.kinds,
                                     slots=free if getattr(self.ex, "records_gpus", True) else None)
            self.claim_ms.append((time.perf_counter() - t0) * 1e3)
            if claim is None:
                break
            self._start(claim, free[:claim.gpus])
            if claim.item_id in self.running:
                self.running[claim.item_id].renewed_at = t_claim
            started = True
        return started

    def _start(self, claim: Claim, slots: list[str]) -> None:
        try:
            if claim.slurm_job_id and hasattr(self.ex, "forget_job"):
                self.ex.forget_job(claim.slurm_job_id)  # an earlier holder's job must be gone first
            action, run_id = next_action(self.db, claim)
        except Exception as e:  # noqa: BLE001 (an attempt that cannot start is an infrastructure failure)
            self._end(Running(claim, None, "run", slots, None), "retry", None, f"cannot start: {e}")
            return
        if action == "done":
            self.queue.finish(claim.item_id, claim.token, "done", run_id=run_id)
            self.say(f"item {claim.item_id}: run {run_id} had completed; marked done")
            return
        if action == "busy":
            self._end(Running(claim, None, action, slots, run_id), "busy", None,
                      f"run {run_id} still has a live process; trying again later")
            return
        if action == "noop":
            r = Running(claim, None, action, slots, None)
            r.noop_until = time.monotonic() + float(claim_spec(claim).get("seconds") or 0.0)
            self.ex.busy.update(slots)
            _trace(claim, "start")
            self.running[claim.item_id] = r
            return
        argv = attempt_argv(self.db, claim, action, run_id)
        log_path = self.log_dir / f"item{claim.item_id}-attempt{claim.attempt}.log"
        self.queue.started(claim.item_id, claim.token, action, log_path=str(log_path))
        try:
            handle = self.ex.start(argv, slots, log_path, claim=claim)
        except Exception as e:  # noqa: BLE001 (a submission that fails: retried after a back-off)
            self._end(Running(claim, None, action, [], run_id), "retry", None,
                      f"cannot start: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            return
        job_id = getattr(handle, "job_id", None)
        if job_id:
            self.queue.started(claim.item_id, claim.token, action, slurm_job_id=str(job_id),
                               log_path=getattr(handle, "log_path", str(log_path)))
        self.running[claim.item_id] = Running(claim, handle, action, slots, run_id)
        where = f"SLURM job {job_id}" if job_id else f"slots {','.join(slots)}"
        self.say(f"item {claim.item_id} attempt {claim.attempt}: {action}"
                 f"{' run ' + str(run_id) if run_id else ''} on {where}")

    # ---- watching -----------------------------------------------------------------------------------------
    def _reap(self) -> None:
        now = time.monotonic()
        for item_id, r in list(self.running.items()):
            if r.lost_at is None and now - r.renewed_at >= self.lease_s:
                # Not renewed for a whole lease (a stalled worker): another worker may hold the item now.
                r.lost_at = now
                self.say(f"item {item_id}: lease not renewed in time; stopping its attempt")
                if r.handle is not None:
                    self.ex.stop(r.handle)
            if r.handle is None:  # noop
                if now < r.noop_until and r.lost_at is None:
                    continue
                self.ex.busy.difference_update(r.slots)
                if r.lost_at is None:
                    if not r.traced:
                        _trace(r.claim, "end")
                        r.traced = True
                    self._end(r, "done", 0, None)  # a database error here: the next round tries again
                del self.running[item_id]
                continue
            rc = self.ex.poll(r.handle)
            if rc is None:
                if r.lost_at is not None and now - r.lost_at > STOP_GRACE_S:
                    self.ex.kill(r.handle)
                elif r.run_id is None and r.action == "run" and now - r.started > 2.0:
                    r.run_id = find_run(self.db, item_id, r.claim.attempt)
                    if r.run_id is not None:
                        self.queue.link_run(item_id, r.claim.token, r.run_id)
                continue
            del self.running[item_id]
            if r.lost_at is not None:
                continue
            if r.run_id is None and r.action == "run":
                r.run_id = find_run(self.db, item_id, r.claim.attempt)
            tail = read_tail(getattr(r.handle, "log_path", None))
            outcome, error = judge_exit(rc, bool(self.stopping), tail)
            self._end(r, outcome, rc, error)

    def _end(self, r: Running, outcome: str, rc: int | None, error: str | None) -> None:
        delay = backoff_s(r.claim.failures + 1, self.backoff) * random.uniform(0.8, 1.2)
        status = self.queue.finish(r.claim.item_id, r.claim.token, outcome, exit_code=rc, error=error,
                                   backoff_s=delay, max_failures=self.max_attempts, run_id=r.run_id)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if status is None:
            self.say(f"item {r.claim.item_id}: the claim was gone when attempt {r.claim.attempt} ended ({outcome})")
            return
        detail = f" in {delay:.0f} s" if status == "queued" and outcome in ("retry", "busy") else ""
        self.say(f"item {r.claim.item_id} attempt {r.claim.attempt}: {outcome}"
                 f"{': ' + error.splitlines()[0] if error else ''} → {status}{detail}")

    def _renew(self) -> None:
        now = time.monotonic()
        if now - self._last_renew < self.lease_s / 3:
            return
        self._last_renew = now
        for item_id, r in self.running.items():
            if r.lost_at is not None:
                continue
            if self.queue.renew(item_id, r.claim.token, self.lease_s):
                r.renewed_at = now
            else:
                r.lost_at = now
                self.say(f"item {item_id}: claim lost (cancelled or taken over); stopping its attempt")
                if r.handle is not None:
                    self.ex.stop(r.handle)
                else:
                    r.noop_until = 0.0

    def summary(self) -> dict[str, Any]:
        ms = sorted(self.claim_ms)
        pct = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))] if ms else None  # noqa: E731
        return {"worker": self.name, "outcomes": self.outcomes, "claims": len(ms), "claim_ms_p50": pct(0.5),
                "claim_ms_p99": pct(0.99), "claim_ms_max": ms[-1] if ms else None}


def claim_spec(claim: Claim) -> dict[str, Any]:
    return getattr(claim, "spec", None) or {}


def _trace(claim: Claim, what: str) -> None:
    """A noop item's trace line (benchmarks count executions and check they never overlap)."""
    path = claim_spec(claim).get("trace")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"item": claim.item_id, "token": claim.token, "what": what, "t": time.time()}) + "\n")
            f.flush()


def local_worker(db: str, *, device: str, gpus: str | None, slots: int | None, min_free_mb: int, log_dir: Path,
                 **kw) -> Worker:
    """A worker over this machine's GPUs (`gpus`: all | 0,1 | N) or, with device cpu, `slots` CPU slots."""
    if device == "cpu":
        ex = LocalExecutor([f"cpu{i}" for i in range(slots or 1)], cpu=True, log_dir=log_dir)
    else:
        ex = LocalExecutor.for_gpus(gpus or "all", log_dir, min_free_mb)
    return Worker(db, ex, log_dir=log_dir, **kw)
