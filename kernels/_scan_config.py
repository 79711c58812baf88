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
    # forward, so it runs short chunks while the forward keeps longer ones and saves a state every n1_bwd_chunk
    # positions for it. Rows per program are tile // chunk (4 forward, 16 backward at the default chunks; the
    # forward doubles them for rows of at most n1_short positions), on one warp each: the twentieth pass's
    # sweeps found one warp faster than 2 or 4 at every stage but the backward's 16-position chunks.
    n1_fwd_chunk=128,
    n1_fwd_tile=512,
    n1_fwd_warps=1,
    n1_short=64,
    n1_bwd_chunk=32,
    n1_bwd_tile=512,
    n1_bwd_warps=1,
    n1_bwd_warps_short=4,  # backward chunks of 16 (stage 4's L = 49): 4 warps
    n1_vec=4,  # contiguous positions a thread loads / stores at once (0: Triton's choice): `_n1_hints`
    n1_fwd_vec=0,  # the forward's n1_vec (0: n1_vec)
    # Chunks halve (the backward's down to 16, the forward's down to 32) while the last chunk would pad L
    # by more than this fraction: stage 3's L = 196 runs 32-position backward chunks (224 slots; 16-position
    # ones, 208 slots, were slower), stage 4's L = 49 16-position ones (32 would pad it by 30 %).
    n1_max_pad=0.15,
    # Rows of at most n1_fwd_whole positions are scanned forward as one chunk (next_pow2(L); 0: never), on
    # n1_fwd_tile // chunk rows: stage 3's L = 196 as one 256-position chunk rather than 7 of 32, no carries.
    n1_fwd_whole=256,
    # Backward chunks of at least this many positions load the chunk before while they compute one (0: never): its
    # loads overlap this chunk's arithmetic. 16-position chunks (stage 4, on 4 warps) were slower with it.
    n1_bwd_prefetch=32,
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
    if backward:
        return bwd
    if L <= _cfg("n1_fwd_whole"):
        return max(bwd, 32, next_pow2(L))
    # forward chunks stop at 32: shorter ones lose more to the per-chunk carry than padding costs
    return fit(max(bwd, min(_cfg("n1_fwd_chunk"), short)), max(bwd, 32))


def _blocks(L: int, N: int, Dk: int, backward: bool) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_N, BLOCK_L, num_warps) for one direction's Dk channels, length L, N states."""
    block_n = next_pow2(N)
    if _use_n1(N):
        chunk = _n1_chunk(L, backward)
        if backward:
            rows = _cfg("n1_bwd_tile") // _cfg("n1_bwd_chunk")
        else:
            rows = _cfg("n1_fwd_tile") // max(chunk, _cfg("n1_fwd_chunk")) * (2 if L <= _cfg("n1_short") else 1)
        block_d = max(1, min(rows, next_pow2(Dk)))
        warps = _cfg("n1_bwd_warps" if chunk > 16 else "n1_bwd_warps_short") if backward else _cfg("n1_fwd_warps")
        return block_d, 1, chunk, warps
    chunk = _cfg("chunk") if N <= 2 else _cfg("chunk_big_n")
    block_l = min(chunk, max(16, next_pow2(L)))  # short L (stage 4: 49): no 4x padding
    tile = _cfg("bwd_tile" if backward else "fwd_tile")
    block_d = max(1, min(tile // (block_n * block_l), next_pow2(Dk)))
    return block_d, block_n, block_l, _cfg("bwd_warps" if backward else "fwd_warps")


def _n1_hints(L: int, sbc: int, block_l: int, backward: bool = True) -> dict:
    """ALIGN / VEC / FAST of the N = 1 kernels.

    ALIGN: the largest power of 2 (<= 16) dividing L and B / C's row stride, declared on the row offsets;
    Triton infers divisibility of integer arguments only by 16, so rows of L = 196 would otherwise be read
    one element per instruction. VEC: the contiguity declared for a chunk's positions, which caps the
    elements a thread loads at once (`n1_vec`, the forward's `n1_fwd_vec`; 0: the whole chunk). With 16-bit
    inputs and fp32 outputs, a cap of 4 gives the loads and the store one register layout, so the tile is not
    moved through shared memory before it is stored. FAST: approximate division (`_div`), except under the
    interpreter."""
    align = 16
    while align > 1 and (L % align or sbc % align):
        align //= 2
    vec = _cfg("n1_vec") if backward else (_cfg("n1_fwd_vec") or _cfg("n1_vec"))
    return dict(ALIGN=align, VEC=vec or block_l, FAST=not triton_interpret())


def _n1_bwd_prefetch(block_l: int) -> bool:
    """Whether the N = 1 backward prefetches the chunk before (chunks of at least `n1_bwd_prefetch` positions)."""
    return 0 < _cfg("n1_bwd_prefetch") <= block_l
