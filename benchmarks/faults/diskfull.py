"""Disk full while a checkpoint is written: the run's folder on a small tmpfs (as root; elsewhere an ENOSPC
injected at the checkpoint write, in process).

    python benchmarks/faults/diskfull.py [--json]        # as root: mounts a tmpfs under a temporary folder

A tiny CPU run (`--checkpoint-dir` on the tmpfs, the database elsewhere) keeps last.pt + best.pt after its first
epoch; the tmpfs is sized (2.5 checkpoints) so that the second epoch's checkpoint cannot be written. Checked:
the run ends `failed` with an error naming the checkpoint and "No space left on device", the previous last.pt
loads (checksum verified) with 1 epoch done, no temporary file is left; then the tmpfs is grown and `vmbench
resume` finishes the run.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ARGS = ["test_resnet", "shapes", "--epochs", "3", "--max-train-batches", "2", "--max-val-batches", "1",
        "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--set", "checkpoints=true"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmbench.cli", *args], capture_output=True, text=True, env=_env(),
                          timeout=900)


def checkpoint_size(folder: Path) -> int:
    """Bytes of one checkpoint of the run (a reference run with a checkpoint root on the normal disk)."""
    r = _cli("run", *ARGS, "--epochs", "1", "--db", str(folder / "ref.db"), "--checkpoint-dir", str(folder / "ref"))
    assert r.returncode == 0, r.stderr
    return next((folder / "ref").glob("*/last.pt")).stat().st_size


def _mount(point: Path, size: int) -> bool:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
    return r.returncode == 0


def _check(db: Path, stderr: str, rc: int) -> dict:
    from vmbench import checkpoint as ck
    from vmbench.store import Store

    with Store(str(db), create=False) as store:
        run = store.get_run(1)
    folder = Path(run.checkpoint_dir)
    state = ck.load_checkpoint(folder / ck.LAST)  # raises when torn or corrupt
    return dict(rc=rc, status=run.status, error=(run.error or "").splitlines()[0],
                says_no_space="No space left on device" in (run.error or "") and "No space" in stderr,
                previous_intact=True, previous_epochs_done=int(state["epochs_done"]),
                temp_files_left=sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")))


def with_tmpfs(folder: Path) -> dict | None:
    size = checkpoint_size(folder)
    point = folder / "small"
    point.mkdir()
    if not _mount(point, int(2.5 * size) + 65536):
        return None
    try:
        db = folder / "x.db"
        r = _cli("run", *ARGS, "--db", str(db), "--checkpoint-dir", str(point))
        out = dict(method=f"tmpfs of {int(2.5 * size) + 65536} bytes, checkpoint {size} bytes", **_check(db, r.stderr,
                                                                                                      r.returncode))
        subprocess.run(["mount", "-o", f"remount,size={8 * size}", str(point)], check=True)
        r2 = _cli("resume", "1", "--db", str(db), "--json")
        out.update(resume_rc=r2.returncode, resumed=json.loads(r2.stdout).get("epochs_done") if r2.stdout else None)
        return out
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


def injected(folder: Path) -> dict:
    """The same in process, with torch.save's writes failing with ENOSPC from the second checkpoint on."""
    import vmbench.checkpoint as ckmod
    from vmbench.recipe import build_run_spec
    from vmbench.scheduler.local import RunFailed, execute_run

    calls = {"n": 0}
    real_save = ckmod.torch.save

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote last.pt and best.pt
            f.write(b"x" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    ckmod.torch.save = failing_save
    db = folder / "x.db"
    spec, recipe = build_run_spec("test_resnet", "shapes", "smoke", {"checkpoints": True},
                                  dict(epochs=3, batch_size=8, img_size=32), device="cpu", max_train_batches=2,
                                  max_val_batches=1)
    message, rc = "", 0
    try:
        execute_run(spec, str(db), show_progress=False, recipe=recipe)
    except RunFailed as e:
        message, rc = str(e), 1
    finally:
        ckmod.torch.save = real_save
    return dict(method="ENOSPC injected at torch.save's write", **_check(db, message, rc))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inject", action="store_true", help="inject ENOSPC even where a tmpfs can be mounted")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vmbench-diskfull-"))
    out = None if a.inject else with_tmpfs(folder)
    if out is None:
        out = injected(folder)
    print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    ok = out["status"] == "failed" and out["says_no_space"] and out["previous_epochs_done"] == 1 \
        and not out["temp_files_left"] and out.get("resume_rc", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
