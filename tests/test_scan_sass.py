"""benchmarks/scan_sass.py compiles the N = 1 scan kernels for sm_90 without a GPU; here it checks what the
alignment hints (`_n1_hints`) buy, in the compiled code itself.

At stage 3 (L = 196, not a multiple of 16) Triton cannot prove a row aligned: without the hints every element
of y is stored by its own instruction. With them the store moves 8 bytes or more, and no 2-D tile changes register
layout inside the chunk loop (which would move it through shared memory).
"""
from __future__ import annotations

import math
import os

import pytest
import bench_script
from triton_interp import run_fresh

pytest.importorskip("triton")


CHILD = "_VMBENCH_SASS_CHILD"


def test_stage3_rows_vectorised_and_tiles_kept_in_registers(monkeypatch):
    # Compiling needs a Triton that the interpreter tests have not used: after them, in the same process and
    # with an empty Triton cache, the compiler's front end fails on the kernels. So the check runs in a fresh
    # process, without TRITON_INTERPRET.
    if os.environ.get(CHILD) != "1":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        r = run_fresh(__file__, dict(env, **{CHILD: "1"}))
        if "SKIPPED" in r.stdout:
            pytest.skip(r.stdout.strip().splitlines()[-1])
        return
    from vmbench.kernels import _selective_scan_triton as T

    sass = bench_script.load("scan_sass")
    try:
        sass._tool("ptxas"), sass._tool("nvdisasm")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    dk, L = sass.STAGES[2]
    hinted = sass.scan_kernels(T, dk, L)
    for kind in ("fwd", "bwd"):
        size = hinted[kind]["rows"] * hinted[kind]["chunk"]
        # conversions of the tile (or of a tile-sized view of it); the per-row states the forward saves are small
        tiles = [c for c in hinted[kind]["conversions"] if "x" in c and math.prod(map(int, c.split("x"))) >= size]
        assert not tiles, (kind, hinted[kind]["conversions"])
        assert hinted[kind]["spills"] == 0
    assert hinted["fwd"]["store"] >= 8  # y: two fp32 or more per instruction

    hints = T._n1_hints
    monkeypatch.setattr(T, "_n1_hints", lambda *a: dict(hints(*a), ALIGN=1))  # what Triton infers alone
    assert sass.scan_kernels(T, dk, L)["fwd"]["store"] == 4
