"""Export the kernels package of another commit, to time it beside the working tree's in the same run.

    python3 benchmarks/prev_kernels.py REV [DEST]      # default DEST: .prev (git-ignored)

Writes DEST/kernels_prev/, a copy of `kernels/` at REV (the package is self-contained: relative imports
only) whose registered ops live in the `vmbprev` namespace instead of `vmbench`, so both versions import
into one process. `benchmarks/kernels.py --prev DEST` and `benchmarks/ss2d.py --prev DEST` then time the
previous kernels on the same inputs, on the same card, in the same process. Run it where the git history
is (the GPU machine gets DEST as a carried folder).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(rev: str, dest: str) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout

    sha = git("rev-parse", "--short", rev).strip()
    pkg = os.path.join(dest, "kernels_prev")
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(pkg)
    for path in git("ls-tree", "--name-only", rev, "kernels/").split():
        if not path.endswith(".py"):
            continue
        src = git("show", f"{rev}:{path}")
        src = src.replace("vmbench::", "vmbprev::").replace("torch.ops.vmbench.", "torch.ops.vmbprev.")
        with open(os.path.join(pkg, os.path.basename(path)), "w") as f:
            f.write(src)
    with open(os.path.join(pkg, "REV"), "w") as f:
        f.write(sha + "\n")
    return sha


def load(dest: str):
    """Import DEST/kernels_prev (see the module docstring); returns the package, its commit in `.REV`."""
    import importlib

    sys.path.insert(0, os.path.abspath(dest))
    mod = importlib.import_module("kernels_prev")
    with open(os.path.join(os.path.abspath(dest), "kernels_prev", "REV")) as f:
        mod.REV = f.read().strip()
    return mod


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(ROOT, ".prev")
    print(f"kernels/ at {export(sys.argv[1], out)} -> {os.path.join(out, 'kernels_prev')}")
