"""The scheduler's side of the run queue: what an item is (a spec hash over the resolved RunSpec), what an attempt
at it executes (`vmbench run …`, or `vmbench resume RUN_ID` when an earlier attempt left a checkpoint), and how an
attempt's end is judged (done; a user error, not retried; an infrastructure failure, retried after a back-off).
Entry points: `enqueue_runs`, `next_action`, `judge_exit`. The claims themselves are vmbench.store.queue."""
from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

from ..store.queue import Claim, Queue

EXIT_USER_ERROR = 2
TAG_PREFIX = "queue:"  # a run started by a queue item's attempt carries the tag queue:<item id>:<attempt>
CHECKPOINT_FILES = ("last.pt", "last.prev.pt")  # vmbench.checkpoint.LAST / PREV (not imported: it needs torch)
# Words in a failed attempt's log that name an infrastructure cause (the attempt is retried whatever it says).
_CAUSES = (("out of memory", "out of memory"), ("CUDA error", "CUDA error"), ("NCCL", "NCCL error"),
           ("ECC", "GPU ECC error"))


def spec_hash(kind: str, spec: dict[str, Any]) -> str:
    """The identity of a planned run: sha256 over its kind and resolved spec (key order does not matter)."""
    blob = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def spec_identity(spec) -> dict[str, Any]:
    """The fields of a RunSpec that differ from RunSpec's defaults: what a planned run is. A field added to RunSpec
    later (with a default) leaves the identity, and so the hash, of every run planned before it unchanged."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(spec):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = getattr(spec, f.name)
        if default is dataclasses.MISSING or value != default:
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def train_item(model: str, dataset: str, args: list[str], spec) -> dict[str, Any]:
    """A queue item for `vmbench run MODEL DATASET *args`, whose resolved RunSpec is `spec`."""
    d = spec.to_dict()
    return {"kind": "train", "spec_hash": spec_hash("train", spec_identity(spec)), "model": model, "dataset": dataset,
            "args": [model, dataset, *args], "spec": d, "gpus": int(d.get("world_size") or 1)}


def noop_item(key: str, seconds: float = 0.0, trace: str | None = None) -> dict[str, Any]:
    """A queue item that runs nothing (benchmarks of the queue itself): it holds its claim for `seconds` and, with
    `trace`, appends `start`/`end` lines to that file."""
    spec = {"key": key, "seconds": seconds, "trace": trace}
    return {"kind": "noop", "spec_hash": spec_hash("noop", spec), "model": None, "dataset": None,
            "args": [], "spec": spec, "gpus": 1}


def enqueue(db: str, items: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    """Add items to the queue of `db` (created if needed); (id, added) per item — known specs are not added."""
    with Queue(db) as q:
        return q.add(items)


def run_tag(item_id: int, attempt: int) -> str:
    return f"{TAG_PREFIX}{item_id}:{attempt}"


def find_run(db: str, item_id: int, attempt: int | None = None) -> int | None:
    """The run that attempt `attempt` at queue item `item_id` created (any attempt: the newest), found by its
    tag."""
    import sqlalchemy as sa

    from ..store import Store
    from ..store.schema import Run

    prefix = f"{TAG_PREFIX}{item_id}:"
    with Store(db, create=False) as store, store.session() as s:
        for run_id, tags in s.execute(sa.select(Run.id, Run.tags).order_by(Run.id.desc()).limit(1000)):
            for t in tags or []:
                if t == run_tag(item_id, attempt) if attempt is not None else str(t).startswith(prefix):
                    return run_id
    return None


def next_action(db: str, claim: Claim) -> tuple[str, int | None]:
    """What this attempt executes: ("run", None) — a fresh run; ("resume", run_id) — the run an earlier attempt
    left, from its checkpoint; ("done", run_id) — that run already completed (its worker died before saying so);
    ("noop", None)."""
    if claim.kind == "noop":
        return "noop", None
    run_id = claim.run_id or (find_run(db, claim.item_id) if claim.attempt > 1 else None)
    if run_id is None:
        return "run", None
    from ..store import Store

    with Store(db, create=False) as store:
        run = store.get_run(run_id)
        if run is None:
            return "run", None
        if run.status == "completed":
            return "done", run_id
        from ..store import effective_status

        if effective_status(run) == "running":
            # Its process still lives (a worker that died leaves a run that stops at its next step boundary):
            # never a second process on the same run; try again after a back-off.
            return "busy", run_id
        folder = Path(run.checkpoint_dir) if run.checkpoint_dir else None
        if folder is None or not any((folder / n).is_file() for n in CHECKPOINT_FILES):
            if run.status == "running":
                store.update_run(run_id, status="interrupted", error="its queue attempt ended; run again from the start")
            return "run", None
        if run.status == "running":
            # The claim that ran it expired and its processes die with their worker: record what happened, so
            # that `vmbench resume` accepts the run (a run on a lost node keeps `running` otherwise).
            store.update_run(run_id, status="interrupted", error="its queue claim expired; resumed by another attempt")
    return "resume", run_id


def attempt_argv(db: str, claim: Claim, action: str, run_id: int | None) -> list[str]:
    """Arguments of the `vmbench` child process for this attempt (after `python -m vmbench.cli`)."""
    if action == "resume":
        return ["resume", str(run_id), "--db", db]
    assert action == "run", action
    return ["run", *claim.args, "--db", db, "--tag", run_tag(claim.item_id, claim.attempt)]


def judge_exit(rc: int, stopping: bool, log_tail: str = "") -> tuple[str, str | None]:
    """(outcome, error) of an attempt whose process exited with `rc` (negative: killed by that signal):
    done; failed (exit code 2, a user error: not retried); stopped (the worker asked it to stop and it did); retry
    (anything else: killed, out of memory, CUDA error, a crash — retried after a back-off)."""
    if rc == 0:
        return "done", None
    last = _last_error_line(log_tail)
    if rc == EXIT_USER_ERROR:
        return "failed", last or "user error (exit code 2)"
    if stopping and rc in (130, -signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT):
        return "stopped", "stopped by its worker"
    if rc < 0:
        why = f"killed by {signal.Signals(-rc).name}"
    else:
        why = f"exit code {rc}"
    cause = next((name for word, name in _CAUSES if word in log_tail), None)
    return "retry", "; ".join(x for x in (why, cause, last) if x)


def _last_error_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return None


def backoff_s(failures: int, base_s: float, cap_s: float = 3600.0) -> float:
    """Delay before the next attempt after `failures` infrastructure failures: base × 2^(failures − 1), capped."""
    return min(cap_s, base_s * 2 ** max(0, failures - 1))


def read_tail(path: str | None, limit: int = 8192) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
