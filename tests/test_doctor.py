"""`vmbench doctor` in a fresh process: a line per check, the kernels' self-test says what ran, a failing check
is ✗ with its fix and makes the exit code non-zero."""
import json
import os
import subprocess
import sys

from report_db import make_db


def _doctor(*args, env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    env.pop("VMBENCH_DATA", None)
    return subprocess.run([sys.executable, "-m", "vmbench.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_doctor_checks_and_failures(tmp_path):
    db = make_db(tmp_path)
    p = _doctor("--db", db, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    checks = {c["check"]: c for c in json.loads(p.stdout)}
    assert set(checks) >= {"python", "torch", "triton", "timm", "cuda", "kernels", "database", "data", "disk"}
    assert all(c["ok"] for c in checks.values())
    kern = checks["kernels"]["detail"]
    assert "selective_scan" in kern and "cross_scan" in kern and "layer_norm" in kern
    assert "interpreter" in kern or "compiled for the GPU" in kern  # it says which ran
    assert "16 runs" in checks["database"]["detail"] and "schema current" in checks["database"]["detail"]

    # A data root that does not exist and a database that is a folder: ✗ lines with a fix, exit 1.
    p = _doctor("--db", str(tmp_path), "--data-root", str(tmp_path / "nope"))
    assert p.returncode == 1
    bad = [line for line in p.stdout.splitlines() if line.startswith("✗")]
    assert len(bad) == 2 and all("fix:" in line for line in bad)
    assert any(line.startswith("✗ data:") for line in bad) and any(line.startswith("✗ database:") for line in bad)
    assert sum(line[:1] in "✓✗" for line in p.stdout.splitlines()) == 9
