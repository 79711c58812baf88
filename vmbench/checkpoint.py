"""Crash-safe training checkpoints.

    save_checkpoint(path, state)      # temp file in the same folder, fsync, os.replace: never half-written
    state = load_checkpoint(path)     # CheckpointError (a ValueError) when the file is missing, unreadable or
                                      # its checksum does not match
    path = latest_good(run_dir)       # newest loadable of last.pt / last.prev.pt, or None

Each file carries a SHA-256 of its contents ("sha256": every tensor's dtype, shape and bytes, every other value's
repr, in a fixed order), checked on load: a truncated or bit-flipped file is refused and latest_good falls back to
the previous one. A write that fails (disk full: CheckpointWriteError, an OSError naming the cause) leaves the
previous file as it was.

The Trainer writes `last.pt` after every epoch (the previous one is kept as `last.prev.pt`) and `best.pt` when
the validation top-1 improves; a graceful stop (first SIGINT/SIGTERM) writes `last.pt` after the optimizer step it
stopped at, with the epoch's progress under "partial_epoch" (None in an end-of-epoch checkpoint) and the shuffle
generator as it was at that epoch's start. `vmbench eval` and `vmbench run --init` read the weights ("model", or
"ema") and the input size ("img_size", "val_resize") back out of a checkpoint (vmbench.weights).

Every value in a checkpoint is a tensor, number, string, None, list, tuple or dict (RNG states included: see
`rng_state`), so files load with `torch.load(weights_only=True)`, which never runs arbitrary pickled code; a file
that needs more than that is refused as not ours.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointWriteError", "save_checkpoint", "checksum", "load_checkpoint", "latest_good", "rng_state", "set_rng_state",
           "LAST", "PREV", "BEST", "FORMAT"]

LAST, PREV, BEST = "last.pt", "last.prev.pt", "best.pt"
FORMAT = "vmbench-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a vmbench checkpoint."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. no space left on device); the previous file is intact."""


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for v in obj:
            _feed(h, v)
    else:
        h.update(repr(obj).encode())


def checksum(state: dict) -> str:
    """SHA-256 of a checkpoint's contents (its "sha256" entry left out)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


class _Recording:
    """A file wrapper that remembers the OSError of a failed write (torch.save reports only its own message)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict, keep_prev: bool = False) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, flushed and fsynced, then
    `os.replace`. A crash at any point leaves the old file intact. With `keep_prev`, the file being replaced
    is first kept as `<stem>.prev.pt` (through a hard link when possible, so `path` never goes missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"format": FORMAT, **state}
    payload["sha256"] = checksum(payload)
    try:
        rec = None
        try:
            with open(tmp, "wb") as f:
                rec = _Recording(f)
                torch.save(payload, rec)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            cause = (rec.error if rec is not None and rec.error is not None else e)
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).splitlines()[0]
            err = CheckpointWriteError(f"cannot write checkpoint {path}: {reason}")
            err.errno = getattr(cause, "errno", None)
            raise err from e
        if keep_prev and path.exists():
            prev = path.with_name(path.stem + ".prev" + path.suffix)
            prev_tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
            try:
                os.link(path, prev_tmp)
            except OSError:
                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
    finally:
        for leftover in path.parent.glob(f".*.{os.getpid()}.tmp"):
            leftover.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint written by save_checkpoint; CheckpointError (one line) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, disallowed type, …
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {msg}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vmbench checkpoint")
    if "sha256" in state and checksum(state) != state["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match its checksum")
    return state


def latest_good(folder) -> Path | None:
    """The newest checkpoint in `folder` that loads: last.pt, else last.prev.pt; None when neither does."""
    folder = Path(folder)
    for name in (LAST, PREV):
        try:
            load_checkpoint(folder / name)
        except CheckpointError:
            continue
        return folder / name
    return None


# -- RNG states as plain values (weights_only-safe) --------------------------------------------------------------
def rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """Python `random`, NumPy, torch CPU (and CUDA when available) RNG states, plus the train loader's shuffle
    generator, as tensors / ints / floats / lists."""
    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader_generator.get_state() if loader_generator is not None else None,
    }
    return out


def set_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    """Restore what rng_state saved."""
    import numpy as np

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"].cpu())
