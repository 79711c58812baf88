"""The one timing loop (vmbench.engine.bench.timed_runs) and benchmarks/peers.py, which times through it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vmbench.engine import bench
from vmbench.engine.bench import timed_runs

import bench_script

ROOT = Path(__file__).resolve().parents[1]
TINY = "test_resnet"  # timm's tiny test network


def test_timed_runs_counts_calls_and_ticks():
    calls, ticks = [], []
    first, ms = timed_runs(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3, iters=4,
                           progress=lambda *t: ticks.append(t), task="t")
    assert len(calls) == 1 + 2 + 3 * 4 and len(ms) == 3 and first >= 0 and all(m >= 0 for m in ms)
    assert ticks[-1] == ("t", 6, 6) and len(ticks) == 6  # first call + 2 warm-up + 3 runs


def test_timed_runs_warms_up_for_the_given_seconds():
    calls = []

    def step():
        calls.append(time.perf_counter())
        time.sleep(0.01)

    timed_runs(step, torch.device("cpu"), warmup=1, repeats=1, iters=1, warmup_s=0.2)
    warm = calls[1:-1]  # after the first call, before the timed one
    assert len(warm) >= 2 and warm[-1] - warm[0] >= 0.15


def test_peers_times_through_the_shared_loop(monkeypatch):
    """peers.py's time_mode calls vmbench's loop with its warm-up settings, for inference and training modes."""
    import timm

    peers = bench_script.load("peers")
    seen = []
    real = bench.timed_runs

    def spy(step, device, **kw):
        seen.append(kw)
        return real(step, device, **kw)

    monkeypatch.setattr(bench, "timed_runs", spy)
    model = timm.create_model(TINY, num_classes=1000)
    for mode in ("plain", "bench", "train"):
        r = peers.time_mode(model, mode, batch=2, res=32, device=torch.device("cpu"), dtype=None, warmup=1,
                            repeats=2, iters=1, warmup_s=0.0)
        assert r["img_s"] == pytest.approx(2e3 / r["ms"]) and len(r["ms_runs"]) == 2 and r["peak_gb"] is None
    assert seen == [dict(warmup=1, repeats=2, iters=1, warmup_s=0.0)] * 3
    assert all(p.grad is None for p in model.parameters())


def test_peers_dry_run_prints_its_table():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--dry-run", "--models",
                        f"vmamba_t,{TINY}", "--peer", TINY, "--modes", "plain,bench,train"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert f"| mode | vmamba_t | {TINY} | vmamba_t / {TINY} |" in lines
    rows = [ln for ln in lines if ln.startswith(("| plain ", "| bench ", "| train "))]
    assert len(rows) == 3 and all(ln.count("×**") == 1 for ln in rows)
    assert any(ln.startswith("vmamba_t: plain call / bench path = **") for ln in lines)


def test_peers_table_divides_compiled_rows_by_the_compiled_peer():
    """With --compile on,off a table holds eager rows and rows MODEL/compiled: each ratio divides by the peer's row
    of the same kind, and the peer's own rows get no ratio column."""
    peers = bench_script.load("peers")
    rows = [dict(model=m, mode="train", img_s=v, peak_gb=1.0)
            for m, v in (("vm/compiled", 300.0), ("vm", 200.0), ("sw/compiled", 400.0), ("sw", 100.0))]
    md = peers.to_markdown(rows, ["vm/compiled", "vm", "sw/compiled", "sw"], ["train"], "sw", "head")
    lines = md.splitlines()
    assert "| mode | vm/compiled | vm | sw/compiled | sw | vm/compiled / sw/compiled | vm / sw |" in lines
    assert "| train | 300 (1.0 GB) | 200 (1.0 GB) | 400 (1.0 GB) | 100 (1.0 GB) | **0.75×** | **2.00×** |" in lines


def test_peers_free_scan_skips_only_the_scan_launches():
    """--scan free (the bound of a scan that costs nothing) drops the map scan's forward and backward launches and
    nothing else; --scan real puts the launcher back."""
    bench_script.load("peers")  # puts benchmarks/ on sys.path
    from _shared import scan_switch

    from vmbench.kernels import _ss2d_map_triton as _map

    real, use = _map._kernel, scan_switch()
    try:
        use("free")
        for kernel in (_map._scan_fwd_map_kernel, _map._scan_bwd_map_kernel):
            assert _map._kernel(kernel)[(1,)]("any", "arguments", BLOCK_D=16) is None
        assert type(_map._kernel(_map._sum4_kernel)) is type(real(_map._sum4_kernel))
        use("real")
        assert _map._kernel is real
    finally:
        _map._kernel = real
