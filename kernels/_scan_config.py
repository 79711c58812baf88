"""Chunk, tile and warp choices of the selective-scan kernels (kernels/_selective_scan_triton.py): one choice per
shape, from `_DEFAULTS` (the H100 / H200 sweeps in benchmarks/RESULTS.md) or a `scan_config(...)` override (tests,
sweeps). The forward and backward must agree on BLOCK_L: the backward reads the states saved at the forward's chunk
boundaries.
"""
from __future__ import annotations

import contextlib

from ._backend import next_pow2, triton_interpret

_DEFAULTS = dict(
    chunk=256,        # positions per chunk for N <= 2: long rows keep loads coalesced, few carries
    chunk_big_n=64,   # N >= 4: the [D, N, L] tile grows with N, so shorter chunks keep it in registers
    fwd_tile=4096,    # elements of the [D, N, L] fwd tile: ~32 fp32 per thread per live tensor at 4 warps
    bwd_tile=2048,    # bwd holds ~3x as many live tiles (states, reverse scan, grads): half the tile
    fwd_warps=4,      # 4 warps (128 threads) per program: many programs per SM to hide HBM latency
    bwd_warps=4,      # same reason; with the half-size bwd tile that is 16 fp32 per thread per live tensor
    n1=1,             # N = 1 runs the 2-D kernels (1) or the general 3-D ones (0: the previous version)
    # N = 1 kernels (H100/H200 sweeps, RESULTS.md): the backward holds ~3x the live tiles of the
    # forward, so it runs short chunks on small tiles (more programs per SM, no spills) while the
    # forward keeps longer chunks and saves a state every n1_bwd_chunk positions for it. Each keeps its rows
    # (tile // chunk: 8 forward, 16 backward) whatever the chunk fitted to L, and the forward doubles them for
    # rows of at most n1_short positions (a program's few chunks then cover twice the channels). The sixth
    # pass's H100 sweeps (RESULTS.md) chose them: fewer rows per forward program, more per backward one (half
    # the dB / dC partials).
    n1_fwd_chunk=128,
    n1_fwd_tile=1024,
    n1_short=64,
    n1_bwd_chunk=32,
    n1_bwd_tile=512,
    n1_bwd_warps=2,
    n1_bwd_warps_short=4,  # backward chunks of 16 (fitted to stage 3's L = 196 and stage 4's 49): 4 warps
    n1_vec=4,  # contiguous positions a thread loads / stores at once (0: Triton's choice): `_n1_hints`
    # Chunks halve (the backward's down to 16, the forward's down to 32) while the last chunk would pad L
    # by more than this fraction: stage 3's L = 196 runs 32-position forward chunks (224 slots) rather
    # than 64 (256), and 16-position backward chunks (208 rather than 224).
    n1_max_pad=0.125,
)
_OVERRIDE: dict[str, int] = {}


@contextlib.contextmanager
def scan_config(**kw):
    """Override chunk / tile / warp choices (keys of `_DEFAULTS`) inside a block; for tests and sweeps."""
    bad = set(kw) - set(_DEFAULTS)
    if bad:
        raise ValueError(f"unknown scan config keys {sorted(bad)}; choose from {sorted(_DEFAULTS)}")
    old = dict(_OVERRIDE)
    _OVERRIDE.update(kw)
    try:
        yield
    finally:
        _OVERRIDE.clear()
        _OVERRIDE.update(old)


def _cfg(name: str) -> int:
    return _OVERRIDE.get(name, _DEFAULTS[name])


def _use_n1(n: int) -> bool:
    return n == 1 and bool(_cfg("n1"))


def _n1_chunk(L: int, backward: bool) -> int:
    """BLOCK_L of the N = 1 kernels; the forward's is a multiple of the backward's (both powers of 2)."""
    short = max(16, next_pow2(L))  # short L (stage 4: 49): no 4x padding

    def fit(chunk: int, floor: int) -> int:
        while chunk > floor and (-L) % chunk > _cfg("n1_max_pad") * L:
            chunk //= 2
        return chunk

    bwd = fit(min(_cfg("n1_bwd_chunk"), short), 16)
    # forward chunks stop at 32: shorter ones lose more to the per-chunk carry than padding costs
    return bwd if backward else fit(max(bwd, min(_cfg("n1_fwd_chunk"), short)), max(bwd, 32))


def _blocks(L: int, N: int, Dk: int, backward: bool) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_L, num_warps) for one direction's Dk channels, length L, N states."""
    block_n = next_pow2(N)
    if _use_n1(N):
        chunk = _n1_chunk(L, backward)
        if backward:
            rows = _cfg("n1_bwd_tile") // _cfg("n1_bwd_chunk")
        else:
            rows = _cfg("n1_fwd_tile") // _cfg("n1_fwd_chunk") * (2 if L <= _cfg("n1_short") else 1)
        block_d = max(1, min(rows, next_pow2(Dk)))
        warps = _cfg("n1_bwd_warps" if chunk > 16 else "n1_bwd_warps_short") if backward else _cfg("fwd_warps")
        return block_d, 1, chunk, warps
    chunk = _cfg("chunk") if N <= 2 else _cfg("chunk_big_n")
    block_l = min(chunk, max(16, next_pow2(L)))  # short L (stage 4: 49): no 4x padding
    tile = _cfg("bwd_tile" if backward else "fwd_tile")
    block_d = max(1, min(tile // (block_n * block_l), next_pow2(Dk)))
    return block_d, block_n, block_l, _cfg("bwd_warps" if backward else "fwd_warps")


def _n1_hints(L: int, sbc: int, block_l: int) -> dict:
    """ALIGN / VEC / FAST of the N = 1 kernels.

    ALIGN: the largest power of 2 (<= 16) dividing L and B / C's row stride, declared on the row offsets;
    Triton infers divisibility of integer arguments only by 16, so rows of L = 196 would otherwise be read
    one element per instruction. VEC: the contiguity declared for a chunk's positions, which caps the
    elements a thread loads at once (`n1_vec`; 0: the whole chunk). With 16-bit inputs and fp32 outputs, a
    cap of 4 gives the loads and the store one register layout, so the tile is not moved through shared
    memory before it is stored. FAST: approximate division (`_div`), except under the interpreter."""
    align = 16
    while align > 1 and (L % align or sbc % align):
        align //= 2
    return dict(ALIGN=align, VEC=_cfg("n1_vec") or block_l, FAST=not triton_interpret())
