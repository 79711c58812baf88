"""benchmarks/host_path.py runs on the CPU and counts the Triton launches of each eager wrapper call.

The counts are the contract of the eager paths: one LayerNorm kernel per forward and one more for its backward;
the SS2D module, on the route a batch of 128 at 224² takes (the map layout), launches the map-layout scan, the sum
of its four maps and its out_norm LayerNorm (3), and for a backward three more (out_norm's backward, the map
backward, the sum of its four du maps). A wrapper that starts launching more per call shows up here before it
shows up in a GPU profile. The whole-model rows hold a user's plain `torch.no_grad()` call to the aten ops of
vmbench's bench path.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("triton")


def test_host_path_runs_and_counts_launches():
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself, before importing triton
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_path.py"), "--repeats", "40"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows, ops = {}, {}
    for line in out.stdout.splitlines():
        m = re.match(r"\| (.+?) \| ([\d.]+) \| (\d+) \| (\d+) \| (\d*) \|$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), int(m.group(4)))
            if m.group(5):
                ops[m.group(1)] = int(m.group(5))
    assert len(rows) == 8, out.stdout
    assert all(us > 0 for us, _ in rows.values())
    launches = {name: n for name, (_, n) in rows.items()}
    assert launches["torch.add (one dispatched op)"] == 0
    assert launches["LayerNorm forward (inference_mode)"] == 1
    assert launches["LayerNorm forward + backward"] == 2
    assert launches["SS2D module forward (inference_mode)"] == 3
    assert launches["SS2D module forward + backward"] == 6
    # a user's plain no_grad call issues exactly what vmbench's bench path does: same launches, same aten ops
    plain, bench = "VMamba-T forward, plain call (no_grad)", "VMamba-T forward, bench path (inference_mode, frozen)"
    # 14 blocks of 3 (SS2D) + 2 norms; stem 2, downsample 3, head 1; fc1 + GELU in the 4 blocks of stages 1-2
    # (kernels/linear_gelu.py's MAX_K; the conv + SiLU kernel runs in compiled graphs only)
    assert launches[plain] == launches[bench] == 14 * 5 + 6 + 4
    assert ops[plain] == ops[bench] > 0
