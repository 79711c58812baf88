"""What a run ran on: code version (git sha + dirty flag) and software/hardware versions."""
from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _own_checkout() -> bool:
    """Whether vmbench runs from a git checkout of vmbench itself (an editable install or PYTHONPATH): the
    package's parent folder is the top of a work tree whose pyproject.toml names vmbench. An installed copy
    (site-packages, perhaps inside the user's own repository) is not: its sha would be the user's project's."""
    try:
        text = (_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    if not any(line.replace(" ", "") == 'name="vmbench"' for line in text.splitlines()):
        return False
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top).resolve() == _ROOT


@lru_cache(maxsize=None)
def git_state() -> tuple[str | None, bool | None]:
    """(sha, dirty) of the vmbench checkout vmbench runs from, or (None, None) when it is not one (an installed
    package)."""
    if not _own_checkout():
        return None, None
    sha = _git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


def collect_env(device: str) -> dict:
    """Versions of python/torch/triton/timm/CUDA and the GPU (name, driver) or CPU used by a run."""
    import torch

    env = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    for mod in ("triton", "timm"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        env["gpu"] = props.name
        env["gpu_count"] = torch.cuda.device_count()
        env["gpu_mem_gb"] = round(props.total_memory / 2**30, 1)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env
