"""Where a worker's attempts run on its own machine: one child process per attempt, pinned to its GPUs with
CUDA_VISIBLE_DEVICES (or to CPU slots), logging to a file. Entry point: `LocalExecutor`.

A child is `python -m vmbench.cli run …` (a run asking for N GPUs launches torchrun itself) in a session of its
own, so a Ctrl-C in the worker's terminal reaches the worker only; it gets SIGTERM when the worker dies, even by
SIGKILL, and then stops at a step boundary with a checkpoint like any `vmbench run`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .process import cli_argv, die_with_parent


def parse_gpus(text: str) -> list[str] | int:
    """`--gpus`: "all" → every GPU (-1), "0,1" → those ids, "N" → the first N."""
    text = text.strip()
    if text == "all":
        return -1
    if "," in text:
        ids = [x.strip() for x in text.split(",") if x.strip()]
        if not all(x.isdigit() for x in ids):
            raise ValueError(f"--gpus {text!r}: expected all, a count or GPU ids like 0,1")
        return ids
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--gpus {text!r}: expected all, a count >= 1 or GPU ids like 0,1")
    return int(text)


def gpu_memory() -> dict[str, tuple[int, int]]:
    """{GPU index: (free MiB, total MiB)} from nvidia-smi; {} when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    out = subprocess.run([exe, "--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60)
    return parse_gpu_memory(out.stdout) if out.returncode == 0 else {}


def parse_gpu_memory(text: str) -> dict[str, tuple[int, int]]:
    rows = {}
    for line in text.strip().splitlines():
        idx, free, total = (x.strip() for x in line.split(","))
        rows[idx] = (int(float(free)), int(float(total)))
    return rows


@dataclass
class Attempt:
    """One running child process and what it holds."""

    proc: subprocess.Popen
    slots: list[str]
    log_path: str
    started: float = field(default_factory=time.monotonic)
    term_sent: float | None = None


class LocalExecutor:
    """Slots on this machine: GPU ids (children see only theirs) or CPU slots (children see no GPU)."""

    kinds = ("train", "noop")
    records_gpus = True

    def __init__(self, slots: list[str], cpu: bool, log_dir: Path, min_free_mb: int = 0):
        self.slots, self.cpu, self.log_dir, self.min_free_mb = list(slots), cpu, log_dir, min_free_mb
        self.busy: set[str] = set()

    @classmethod
    def for_gpus(cls, gpus: str, log_dir: Path, min_free_mb: int) -> "LocalExecutor":
        want = parse_gpus(gpus)
        found = sorted(gpu_memory(), key=int)
        if not found:
            raise ValueError("no GPU found (nvidia-smi missing or failing); on the CPU use --device cpu --slots N")
        if want == -1:
            ids = found
        elif isinstance(want, int):
            if want > len(found):
                raise ValueError(f"--gpus {want}: only {len(found)} GPUs here")
            ids = found[:want]
        else:
            missing = [x for x in want if x not in found]
            if missing:
                raise ValueError(f"--gpus: no GPU {', '.join(missing)} here (found {', '.join(found)})")
            ids = want
        return cls(ids, cpu=False, log_dir=log_dir, min_free_mb=min_free_mb)

    def free_slots(self) -> list[str]:
        """Slots no attempt of this worker holds; GPUs also need `min_free_mb` of free memory (another process
        may be using one)."""
        idle = [s for s in self.slots if s not in self.busy]
        if self.cpu or not idle or self.min_free_mb <= 0:
            return idle
        mem = gpu_memory()
        return [s for s in idle if s in mem and mem[s][0] >= self.min_free_mb]

    def start(self, argv: list[str], slots: list[str], log_path: Path, claim=None) -> Attempt:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if self.cpu else ",".join(slots)
        env["PYTHONUNBUFFERED"] = "1"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cli_argv(*argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=die_with_parent())
        self.busy.update(slots)
        return Attempt(proc, list(slots), str(log_path))

    def poll(self, att: Attempt) -> int | None:
        rc = att.proc.poll()
        if rc is not None:
            self.busy.difference_update(att.slots)
        return rc

    def stop(self, att: Attempt) -> None:
        """Ask the attempt to stop at its next step boundary (SIGTERM: it saves a checkpoint)."""
        if att.proc.poll() is None and att.term_sent is None:
            _signal_group(att.proc, signal.SIGTERM)
            att.term_sent = time.monotonic()

    def kill(self, att: Attempt) -> None:
        if att.proc.poll() is None:
            _signal_group(att.proc, signal.SIGKILL)
        att.proc.wait()
        self.busy.difference_update(att.slots)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the child's process group (a torchrun launcher and its ranks too)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
