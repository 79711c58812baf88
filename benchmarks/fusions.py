"""Benchmark: VMamba-T's fused kernels against the unfused ops they replace (CUDA only): the MLP's fc1 + GELU
(kernels/linear_gelu.py), the whole MLP (kernels/mlp.py) and SS2D's depthwise conv + SiLU (kernels/dwconv_silu.py).

    python benchmarks/fusions.py [--sweep] [--dry-run] [--parts fc1,mlp,conv]

Shapes: batch 128 channels-last stage maps, M = 128*56*56 / 28*28 / 14*14 / 7*7 rows of C = 96 / 192 / 384 / 768,
hidden N = 4C; bf16 operands as autocast gives them. Rows, timed in the same run by the same timer:
    fc1+gelu     inference: F.gelu(F.linear(x, w1, b1)) (cuBLAS GEMM with its bias epilogue, then a GELU pass)
                 against linear_gelu_launch (one kernel)
    mlp train    the whole MLP, forward + backward (grads of x, w1, b1, w2, b2): vmbench's MLP before this kernel
                 (fc1, then `gelu_linear`: GELU recomputed in the backward) against fc1 + GELU fused, then fc2
    whole mlp    inference, stages 1-2 (C <= the kernel's 256): cuBLAS fc1, GELU pass, cuBLAS fc2 against fc1 + GELU
                 fused then cuBLAS fc2 against mlp_launch (one kernel, the hidden activation never written)
    conv+silu    inference, M positions of D = C channels: F.silu(F.conv2d(x, w, groups=D, padding=1)) on the
                 channels-last (B, D, H, W) view (cuDNN, then a SiLU pass) against dwconv_silu_launch
Timing: triton.testing.do_bench (CUDA events, median). Every case is checked first: the fused output and gradients
against fp64, error <= 2 x the unfused path's + 2^-8 (bf16's rounding: fc2's bias gradient is summed in bf16 by
autocast's Linear, in fp32 by `gelu_linear`). --sweep times other tiles of the kernels (inference, every
stage; the whole MLP's and the conv's tiles each checked against fp64 the same way first). --parts picks the
tables. Prints markdown tables; writes $OUT/fusions.md and .json when $OUT is set. --dry-run: the CPU (Triton
interpreter), tiny shapes, times meaningless.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import gpu_ms, once_ms, save  # noqa: E402

import torch
import torch.nn.functional as F

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]
BATCH = 128
DW_SWEEP = [(32, 32, 4), (16, 64, 4), (64, 32, 4), (32, 64, 4), (16, 32, 2), (64, 64, 8), (8, 128, 4), (16, 128, 4),
            (32, 128, 8), (8, 64, 2)]
SWEEP = [(128, 128, 32, 8, 3), (128, 128, 32, 4, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (128, 256, 32, 8, 3),
         (256, 128, 32, 8, 3), (128, 128, 64, 8, 3), (64, 64, 32, 4, 4)]
MLP_SWEEP = [(64, 32, 4, 2), (64, 32, 4, 3), (64, 16, 4, 2), (64, 64, 4, 2), (128, 32, 4, 2), (128, 32, 8, 2),
             (128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 2, 2), (32, 32, 2, 2), (128, 16, 4, 3), (256, 32, 8, 2)]
BF16_EPS = 2.0 ** -8  # fc2's bias gradient: autocast's Linear sums it in bf16, `gelu_linear` in fp32
_bench = gpu_ms


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _mlp_unfused(x, w1, b1, w2, b2):
    from vmbench.models.vmamba_layers import gelu_linear

    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return gelu_linear(F.linear(x, w1, b1), w2, b2)


def _mlp_fused(x, w1, b1, w2, b2):
    from vmbench.kernels.linear_gelu import linear_gelu

    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return F.linear(linear_gelu(x, w1, b1, backend="triton"), w2, b2)


def check(x, params) -> float:
    """Fused MLP vs fp64 against the unfused one's error (output and every gradient); returns the worst ratio."""
    leaves = [t.detach().requires_grad_(True) for t in (x, *params)]
    g = torch.randn(*x.shape, device=x.device).to(torch.bfloat16)
    outs = []
    for fn in (_mlp_fused, _mlp_unfused):
        y = fn(*leaves)
        outs.append([y, *torch.autograd.grad(y, leaves, g)])
    up = [t.detach().double().requires_grad_(True) for t in leaves]
    y64 = F.linear(F.gelu(F.linear(up[0], up[1], up[2])), up[3], up[4])
    want = [y64, *torch.autograd.grad(y64, up, g.double())]
    worst = 0.0
    for a, b, w in zip(*outs, want):
        ra, rb = rel(a, w), rel(b, w)
        assert ra <= 2 * rb + BF16_EPS, (ra, rb)
        worst = max(worst, ra / max(rb, BF16_EPS))
    return worst


def main() -> None:
    global _bench
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--parts", default="fc1,mlp,conv", help="which tables: fc1 (fc1 + GELU and the MLP's training "
                    "step), mlp (the whole MLP), conv (conv + SiLU); comma-separated")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if not parts or set(parts) - {"fc1", "mlp", "conv"}:
        ap.error("--parts takes fc1, mlp and conv, comma-separated")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        _bench = once_ms
        dev, batch, stages = "cpu", 1, [(c // 6, 4) for c, _ in STAGES[:2]]
    else:
        dev, batch, stages = "cuda", BATCH, STAGES
    from vmbench.kernels import _linear_gelu_triton as LG

    lines = [f"# fc1 + GELU fused, batch {batch}, bf16 — {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}",
             "", "| stage (M, C -> 4C) | fc1+gelu ms | fused ms | × | MLP train ms | fused MLP train ms | × "
             "| worst error / unfused |", "|---|---|---|---|---|---|---|---|"]
    data = []
    torch.manual_seed(0)
    for c, hw in stages if "fc1" in parts else []:
        m, n = batch * hw * hw, 4 * c
        x = torch.randn(batch, hw, hw, c, device=dev).to(torch.bfloat16)
        w1, b1 = torch.randn(n, c, device=dev) * c ** -0.5, torch.randn(n, device=dev) * 0.1
        w2, b2 = torch.randn(c, n, device=dev) * n ** -0.5, torch.randn(c, device=dev) * 0.1
        params = (w1, b1, w2, b2)
        worst = check(x, params)
        w1b, b1b = w1.to(torch.bfloat16), b1.to(torch.bfloat16)
        t_ref = _bench(lambda: F.gelu(F.linear(x, w1b, b1b)))
        t_new = _bench(lambda: LG.linear_gelu_launch(x, w1b, b1b))
        leaves = [t.detach().requires_grad_(True) for t in (x, *params)]
        g = torch.randn(*x.shape, device=dev).to(torch.bfloat16)

        def train(fn):
            return lambda: torch.autograd.grad(fn(*leaves), leaves, g)
        tr_ref, tr_new = _bench(train(_mlp_unfused)), _bench(train(_mlp_fused))
        lines.append(f"| ({m}, {c} -> {n}) | {t_ref:.3f} | {t_new:.3f} | {t_ref / t_new:.2f} | {tr_ref:.3f} | "
                     f"{tr_new:.3f} | {tr_ref / tr_new:.2f} | {worst:.2f} |")
        data.append(dict(m=m, c=c, n=n, infer_ref=t_ref, infer_fused=t_new, train_ref=tr_ref, train_fused=tr_new,
                         worst=worst))
        if args.sweep:
            for bm, bn, bk, w, s in SWEEP:
                cfg = dict(block_m=bm, block_n=bn, block_k=bk, warps=w, stages=s)
                try:
                    t = _bench(lambda: LG.linear_gelu_launch(x, w1b, b1b, config=cfg))
                except Exception as e:  # a tile that does not fit in shared memory
                    t = float("nan")
                    print(f"sweep {cfg}: {type(e).__name__}: {str(e)[:100]}")
                lines.append(f"| sweep C={c} {bm}x{bn}x{bk} w{w} s{s} | | {t:.3f} | {t_ref / t:.2f} | | | | |")
                data.append(dict(c=c, sweep=cfg, infer_fused=t))
    lines += ffn_rows(dev, batch, stages, args.sweep, data) if "mlp" in parts else []
    lines += conv_rows(dev, batch, stages, args.sweep, data) if "conv" in parts else []
    text = "\n".join(lines)
    print(text)
    save("fusions", text, data)


def within_bound(got, ref, want) -> float:
    """got's error against fp64 `want` as a multiple of the unfused `ref`'s; asserts it is within 2x (+ 1e-6), except
    in a dry run (the interpreter rounds fp32 -> bf16 by truncation, the GPU to nearest)."""
    assert _bench is once_ms or rel(got, want) <= 2 * rel(ref, want) + 1e-6, (rel(got, want), rel(ref, want))
    return rel(got, want) / max(rel(ref, want), BF16_EPS)


def ffn_rows(dev, batch, stages, sweep, data) -> list:
    """The whole-MLP table: unfused, fc1 + GELU fused then fc2, and the one kernel; inference, bf16."""
    from vmbench.kernels import _linear_gelu_triton as LG
    from vmbench.kernels import _mlp_triton as MK
    from vmbench.kernels.mlp import mlp_ref

    lines = ["", "| stage (B, H, W, C), hidden 4C | unfused ms | fc1+gelu fused, fc2 ms | whole mlp ms | × unfused "
             "| × fc1+gelu | error / unfused |", "|---|---|---|---|---|---|---|"]
    for c, hw in stages:
        if c > MK.MAX_KP:
            continue
        x = torch.randn(batch, hw, hw, c, device=dev).to(torch.bfloat16)
        ops = [(torch.randn(4 * c, c, device=dev) * c ** -0.5), 0.5 * torch.randn(4 * c, device=dev),
               (torch.randn(c, 4 * c, device=dev) * (4 * c) ** -0.5), 0.1 * torch.randn(c, device=dev)]
        w1, b1, w2, b2 = (t.to(torch.bfloat16) for t in ops)
        want = mlp_ref(x.double(), *(t.double() for t in (w1, b1, w2, b2)))
        ref = mlp_ref(x, w1, b1, w2, b2)
        err = within_bound(MK.mlp_launch(x, w1, b1, w2, b2), ref, want)
        t_ref = _bench(lambda: mlp_ref(x, w1, b1, w2, b2))
        t_lg = _bench(lambda: F.linear(LG.linear_gelu_launch(x, w1, b1), w2, b2))
        t_new = _bench(lambda: MK.mlp_launch(x, w1, b1, w2, b2))
        lines.append(f"| ({batch}, {hw}, {hw}, {c}) | {t_ref:.3f} | {t_lg:.3f} | {t_new:.3f} | {t_ref / t_new:.2f} | "
                     f"{t_lg / t_new:.2f} | {err:.2f} |")
        data.append(dict(op="mlp", c=c, hw=hw, ref=t_ref, linear_gelu=t_lg, fused=t_new, err=err))
        for bm, bh, nw, ns in MLP_SWEEP if sweep else []:
            cfg = dict(block_m=bm, block_h=bh, warps=nw, stages=ns)
            try:
                e = within_bound(MK.mlp_launch(x, w1, b1, w2, b2, config=cfg), ref, want)
                t = _bench(lambda: MK.mlp_launch(x, w1, b1, w2, b2, config=cfg))
            except Exception as ex:  # a tile that does not fit in shared memory / registers, or a wrong result
                e = t = float("nan")
                print(f"mlp sweep {cfg}: {type(ex).__name__}: {str(ex)[:100]}")
            lines.append(f"| sweep C={c} {bm}x{bh} w{nw} s{ns} | | | {t:.3f} | {t_ref / t:.2f} | {t_lg / t:.2f} | "
                         f"{e:.2f} |")
            data.append(dict(op="mlp", c=c, sweep=cfg, fused=t, err=e))
    return lines


def conv_rows(dev, batch, stages, sweep, data) -> list:
    """The conv + SiLU table: cuDNN's conv then SiLU against the kernel, inference, bf16 (checked first)."""
    from vmbench.kernels import _dwconv_silu_triton as DW
    from vmbench.kernels.dwconv_silu import dwconv_silu_ref

    lines = ["", "| stage (B, H, W, D) | conv+silu ms | fused ms | × | error / unfused |", "|---|---|---|---|---|"]
    for c, hw in stages:
        x = torch.randn(batch, hw, hw, c, device=dev).to(torch.bfloat16)  # a channels-last map, as in_proj writes it
        w = (torch.randn(c, 1, 3, 3, device=dev) / 3).to(torch.bfloat16)
        ref, want = dwconv_silu_ref(x, w), dwconv_silu_ref(x.double(), w.double())
        err = within_bound(DW.dwconv_silu_launch(x, w, None), ref, want)
        t_ref = _bench(lambda: dwconv_silu_ref(x, w))
        t_new = _bench(lambda: DW.dwconv_silu_launch(x, w, None))
        lines.append(f"| ({batch}, {hw}, {hw}, {c}) | {t_ref:.3f} | {t_new:.3f} | {t_ref / t_new:.2f} | {err:.2f} |")
        data.append(dict(op="dwconv_silu", c=c, hw=hw, ref=t_ref, fused=t_new, err=err))
        for bw, bd, nw in DW_SWEEP if sweep else []:
            cfg = dict(block_w=bw, block_d=bd, warps=nw)
            e = within_bound(DW.dwconv_silu_launch(x, w, None, config=cfg), ref, want)
            t = _bench(lambda: DW.dwconv_silu_launch(x, w, None, config=cfg))
            lines.append(f"| sweep D={c} {bw}x{bd} w{nw} | | {t:.3f} | {t_ref / t:.2f} | {e:.2f} |")
            data.append(dict(op="dwconv_silu", c=c, sweep=cfg, fused=t, err=e))
    return lines


if __name__ == "__main__":
    main()
