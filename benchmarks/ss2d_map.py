"""Benchmark: the SS2D core with directional copies (cross-scan, scan, cross-merge: the path models run) against
the map-layout scan (kernels/_ss2d_map_triton.py), at VMamba-T's stage shapes, in one process: the inference
forward, and the training path's forward and backward.

    python benchmarks/ss2d_map.py [--sweep] [--dry-run] [--parts infer,train] [--stages 1,2,3,4] [--prev DIR]
    python benchmarks/ss2d_map.py --sass            # no GPU needed: the map scan compiled for sm_90 (scan_sass.py)

Batch 128, bf16, D = 96 * 2**i, H = W = 56 / 28 / 14 / 7, K = 4, N = 1, R = ceil(D / 16). Both start from the same x
and x_proj output p and end with y (B, H, W, D) in bf16; each is checked against the other first (training: y and
the six gradients). Timing: triton.testing.do_bench (CUDA events, median). --sweep also times the map scan's
inference (BLOCK_D, BLOCK_L, warps) choices, the steps layout's channel blocks and the backward's (with and without
the chunk before prefetched). --prev DIR (exported by benchmarks/prev_kernels.py) adds a table of the map scan
against the previous commit's on the same inputs: the inference forward, the training forward and the backward
of the default variant (`ss2d_map_forward`, `map_train_forward`, `map_backward`). Prints markdown tables;
writes $OUT/ss2d_map.md (--parts train: ss2d_map_train.md) when $OUT is set. --dry-run: CPU interpreter, tiny
shapes, one call each (checks the script; times mean nothing).
--sass: registers, layout conversions and SASS instructions per element of the map scans' loops (forward for each
--sweep tile and steps channel block, backward for each BWD_SWEEP and PREFETCH_SWEEP tile) at stages 1 and 3,
compiled for sm_90 with triton's own ptxas (benchmarks/scan_sass.py prints the same for the scan the models run
now).
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]
SWEEP = [(32, 32, 4), (32, 32, 2), (32, 32, 1), (32, 16, 1), (64, 32, 2), (64, 16, 2), (64, 32, 4), (128, 16, 4),
         (16, 64, 2)]  # (BLOCK_D, BLOCK_L, warps)
BWD_SWEEP = [(32, 16, 2), (32, 16, 4), (16, 16, 1), (16, 32, 2), (64, 16, 4), (32, 32, 4)]
# (BLOCK_D, BLOCK_L, warps, prefetch): the training table's backward tiles with the chunk before prefetched
PREFETCH_SWEEP = [(16, 16, 1, True), (16, 16, 2, True), (32, 16, 2, True), (16, 32, 2, True)]
STEPS_SWEEP = [32, 64, 128, 256]  # the steps layout's channels per program (one warp: 1, 2, 4, 8 per thread)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--sass", action="store_true")
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated VMamba-T stages (1-4) to time")
    ap.add_argument("--prev", metavar="DIR", help="also time the map scan of the kernels exported into DIR by "
                    "benchmarks/prev_kernels.py")
    ap.add_argument("--parts", default="infer,train", help="infer, train or both: the inference forward's table, "
                    "the training path's (forward + backward)")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    if not parts or set(parts) - {"infer", "train"}:
        ap.error("--parts takes infer, train or infer,train")
    if args.sass:
        return _sass()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from _shared import gpu_ms, once_ms, save
    from vmbench.kernels import _ss2d_map_triton as M
    from vmbench.kernels import _ss2d_recompute as R

    dev = "cpu" if args.dry_run else "cuda"
    bench = once_ms if args.dry_run else gpu_ms
    picked = [STAGES[int(i) - 1] for i in args.stages.split(",")]
    batch, stages = (1, [(16, 5), (32, 3)]) if args.dry_run else (128, picked)
    card = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name()
    if "infer" in parts:
        lines = [f"SS2D inference forward, {card}, torch {torch.__version__}, batch {batch}, bf16 (ms, median); map "
                 "variants DELTA-YS: delta from a GEMM or formed in the scan, the four maps in fp32 or bf16", "",
                 "| stage (D, H·W) | composition | " + " | ".join(f"map {v}" for v in M.VARIANTS)
                 + " | composition / best map | largest rel. difference |", "|---" * (4 + len(M.VARIANTS)) + "|"]
    else:
        lines = [f"SS2D core, {card}, torch {torch.__version__}, batch {batch}, bf16"]
    prev = None
    if args.prev:  # the kernels package benchmarks/prev_kernels.py exported, its commit in .REV
        from prev_kernels import load

        prev = load(args.prev)
    sweep_lines, train_lines, prev_lines = [], [], []
    for d, hw in stages:
        x, p, wdt, A, Ds, bias, r, n = _inputs(batch, d, hw, dev)
        if prev is not None:
            prev_lines.append(_against_prev(M, prev, bench, (x, p, wdt, A, Ds, bias), r, n, f"({d}, {hw * hw})"))
            print(prev_lines[-1], flush=True)
        comp = lambda: R._forward(x, p, wdt, A, Ds, bias, r, n, states=False)[0]  # noqa: E731
        fmap = lambda: M.ss2d_map_forward(x, p, wdt, A, Ds, bias, r, n)  # noqa: E731
        if "train" in parts:
            train_lines += _training(M, R, bench, args.sweep, (x, p, wdt, A, Ds, bias), r, n, f"({d}, {hw * hw})")
        if "infer" not in parts:
            continue
        with torch.no_grad():
            ref = comp()
            t_comp, times, diff, old = bench(comp), [], 0.0, dict(M.MAP_CONFIG)
            for v in M.VARIANTS:
                M.MAP_CONFIG.update(M.variant_config(v))
                diff = max(diff, _rel(fmap(), ref))
                times.append(bench(fmap))
            M.MAP_CONFIG.update(old)  # the defaults again for the next stage's rows
            lines.append(f"| ({d}, {hw * hw}) | {t_comp:.3f} | " + " | ".join(f"{t:.3f}" for t in times)
                         + f" | **{t_comp / min(times):.2f}×** | {diff:.1e} |")
            print(lines[-1], flush=True)
            if args.sweep:
                old = dict(M.MAP_CONFIG)
                tiles = [(v, t) for v in ("gemm-fp32", "dot-input") for t in SWEEP]
                for v, (bd, bl, w) in tiles + [("gemm-input-steps", (bd, 16, 1)) for bd in STEPS_SWEEP]:
                    M.MAP_CONFIG.update(M.variant_config(v), block_d=bd, block_l=bl, warps=w, steps_block_d=bd)
                    sweep_lines.append(f"| ({d}, {hw * hw}) | {v} | {bd} × {bl}, {w} | {bench(fmap):.3f} |")
                    print(sweep_lines[-1], flush=True)
                M.MAP_CONFIG.update(old)
    if sweep_lines:
        lines += ["", "| stage | map variant | tile (BLOCK_D × BLOCK_L, warps) | ms |", "|---|---|---|---|",
                  *sweep_lines]
    if train_lines:
        lines += ["", "Training path: forward with gradients + backward (ms, median); the map rows use the backward "
                  "tile MAP_CONFIG holds unless named", "",
                  "| stage (D, H·W) | composition | map variant | backward tile | ms | composition / map "
                  "| largest rel. difference (y, 6 grads) |", "|---" * 7 + "|", *train_lines]
    if prev_lines:
        lines += ["", f"The map scan ({M.variant_name()}) against the kernels of commit {prev.REV}, same inputs, same "
                  "process (ms, median; × = prev / ours)", "",
                  "| stage (D, H·W) | inference fwd | prev | × | training fwd | prev | × | backward | prev | × "
                  "| largest rel. difference (y, 6 grads) |", "|---" * 11 + "|", *prev_lines]
    save("ss2d_map" if "infer" in parts else "ss2d_map_train", "\n".join(lines))
    print("\n".join(lines))
    return 0


def _inputs(batch: int, d: int, hw: int, dev: str):
    """(x, p, wdt, A, Ds, bias, r, n): one stage's bf16 input and x_proj output, parameters in kernel form."""
    import torch

    from vmbench.kernels.ss2d import _kernel_params

    g = torch.Generator().manual_seed(0)
    r, n, k = math.ceil(d / 16), 1, 4
    x = torch.randn(batch, hw, hw, d, generator=g).to(dev, torch.bfloat16)
    xp = (torch.randn(k, r + 2 * n, d, generator=g) / math.sqrt(d)).to(dev)
    dtw = (torch.randn(k, d, r, generator=g) / math.sqrt(r)).to(dev)
    dtb = (torch.rand(k, d, generator=g) * 2 - 3).to(dev)
    al = torch.log(torch.rand(k * d, n, generator=g) * 3 + 0.5).to(dev)
    ds = torch.randn(k * d, generator=g).to(dev)
    xw, wdt, A, Ds, bias = _kernel_params(x, xp, dtw, dtb, al, ds, k, r, n)
    p = torch.mm(x.reshape(-1, d), xw).view(batch, hw, hw, -1)
    return x, p, wdt, A, Ds, bias, r, n


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def _against_prev(M, prev, bench, ins, r: int, n: int, stage: str) -> str:
    """One row of the --prev table: our map scan and the previous commit's, the default variant of each, on the
    same inputs; each launches directly inside its own package's direct_launch (as eager calls do)."""
    import importlib

    import torch

    from vmbench.kernels import _backend

    P = importlib.import_module(prev.__name__ + "._ss2d_map_triton")
    gy = torch.randn_like(ins[0])
    variant = M.variant_name()
    assert P.variant_name() == variant, (P.variant_name(), variant)
    row, outs = [], []
    for mod, backend in ((M, _backend), (P, prev._backend)):
        with backend.direct_launch(), torch.no_grad():
            y, hs = mod.map_train_forward(*ins, r, n, variant)
            outs.append((y, *mod.map_backward(gy, *ins, hs, r, n, variant)))
            row.append((bench(lambda: mod.ss2d_map_forward(*ins, r, n)),
                        bench(lambda: mod.map_train_forward(*ins, r, n, variant)),
                        bench(lambda: mod.map_backward(gy, *ins, hs, r, n, variant))))
    diff = max(_rel(a, b) for a, b in zip(*outs))
    cells = [f"{ours:.3f} | {old:.3f} | **{old / ours:.2f}×**" for ours, old in zip(*row)]
    return f"| {stage} | " + " | ".join(cells) + f" | {diff:.1e} |"


def _training(M, R, bench, sweep: bool, ins, r: int, n: int, stage: str) -> list[str]:
    """Rows of the training table for one stage: the composition's forward + backward, then each map variant's
    (with --sweep, each BWD_SWEEP backward tile too)."""
    import torch

    leaves = [t.detach().requires_grad_(True) for t in ins]
    gy = torch.randn_like(ins[0])

    def step():
        y = R.ss2d_scan_recompute(*leaves, r, n)
        return (y, *torch.autograd.grad(y, leaves, gy))

    old = dict(M.MAP_CONFIG)
    M.USE_MAP = False
    ref = step()
    t_comp = bench(step)
    rows = []
    M.USE_MAP = True
    try:
        for v in ("dot-input", "gemm-fp32", "gemm-input"):  # each at every stage (variant_config)
            tiles = [None] + (PREFETCH_SWEEP + [(*t, False) for t in BWD_SWEEP] if sweep and v != "gemm-input" else [])
            for tile in tiles:
                M.MAP_CONFIG.update(old, **M.variant_config(v), train_max_l=1 << 30, min_programs=0)  # every stage
                if tile:
                    M.MAP_CONFIG.update(bwd_block_d=tile[0], bwd_block_l=tile[1], bwd_warps=tile[2],
                                        bwd_prefetch_l=0 if tile[3] else 1 << 30)
                diff = max(_rel(a, b) for a, b in zip(step(), ref))
                t = bench(step)
                name = ("{} × {}, {}".format(*tile) + (", prefetch" if tile[3] else "")) if tile else "default"
                rows.append(f"| {stage} | {t_comp:.3f} | {v} | {name} | {t:.3f} | **{t_comp / t:.2f}×** "
                            f"| {diff:.1e} |")
                print(rows[-1], flush=True)
    finally:
        M.USE_MAP = False
        M.MAP_CONFIG.update(old)
    return rows


def _sass() -> int:
    import triton

    import scan_sass
    from vmbench.kernels import _ss2d_map_triton as M
    from vmbench.kernels import _ss2d_steps_triton as S
    from vmbench.kernels.ss2d import _rows8

    print(f"map-layout scans for sm_90, triton {triton.__version__}, bf16 in; gemm-fp32: delta read, fp32 maps out; "
          "dot-input: delta formed by tl.dot, bf16 maps out; the backward writes bf16 du / ddelta maps\n")
    print("| stage (D, H·W) | kernel | variant | tile (BLOCK_D × BLOCK_L), warps | regs | spills "
          "| conversions in loop | loop SASS | SASS per element |\n|---|---|---|---|---|---|---|---|---|")
    scan_sass._F32.add("dbc_ptr")
    for d, hw in (STAGES[0], STAGES[2]):
        r = math.ceil(d / 16)
        c = _rows8(r, 1)
        L = hw * hw
        for v in ("gemm-fp32", "dot-input"):
            dot = v.startswith("dot")
            scan_sass._F32.discard("y_ptr")
            if not dot:
                scan_sass._F32.add("y_ptr")
            for kernel, tiles in (("forward", [(*t, False) for t in SWEEP]),
                                  ("backward", [(*t, False) for t in BWD_SWEEP] + PREFETCH_SWEEP)):
                for bd, bl, w, pf in tiles:
                    if dot and min(bd, bl) < 16:
                        continue
                    ints = dict(H=hw, W=hw, Dk=d, KC=4 * c, C=c, R=r, BL=128 * L, n_chunks=-(-L // bl))
                    consts = dict(BLOCK_D=bd, BLOCK_L=bl, FAST=True, DELTA_DOT=dot, CP=M.dot_rows(c), DOT_F32=False)
                    if kernel == "forward":
                        ints["n_saved"] = -(-L // 16)
                        consts.update(SAVE_STATES=False, SAVE_EVERY=16)
                    else:
                        consts["PREFETCH"] = pf
                    fn = M._scan_fwd_map_kernel if kernel == "forward" else M._scan_bwd_map_kernel
                    st = scan_sass.stats(scan_sass._compile(fn, ints, consts, w, "bf16"))
                    _sass_row(st, d, L, kernel, v + (", prefetch" if pf else ""), bd, bl, w)
        scan_sass._F32.discard("y_ptr")
        for bd in STEPS_SWEEP:  # the steps layout's forward, gemm-input
            ints = dict(H=hw, W=hw, Dk=d, KC=4 * c, C=c, R=r, BL=128 * L, n_chunks=-(-L // 16))
            consts = dict(BLOCK_D=bd, BLOCK_L=16, FAST=True, SAVE_STATES=False)
            st = scan_sass.stats(scan_sass._compile(S._scan_fwd_steps_kernel, ints, consts, 1, "bf16"))
            _sass_row(st, d, L, "forward", "gemm-input-steps", bd, 16, 1)
    return 0


def _sass_row(st: dict, d: int, L: int, kernel: str, variant: str, bd: int, bl: int, w: int) -> None:
    print(f"| ({d}, {L}) | {kernel} | {variant} | {bd} × {bl}, {w} | {st['regs']} | {st['spills']} | "
          f"{', '.join(st['conversions']) or 'none'} | {st['loop_sass']} | "
          f"{st['loop_sass'] / (bd * bl / (32 * w)):.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
