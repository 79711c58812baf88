"""Benchmark: LayerNorm over the last dim at VMamba-T shapes, Triton kernel vs F.layer_norm (CUDA only).

    python benchmarks/layer_norm.py [--sweep] [--no-train] [--dry-run]

Shapes: batch 128 channels-last stage maps, rows = 128*56*56 / 28*28 / 14*14 / 7*7 with C = 96 / 192 / 384 / 768.
Cases: x fp32 -> y bf16 (AMP: LayerNorm runs in fp32, the next Linear casts its input) and x bf16 -> y bf16.
Peers, timed in the same run:
    torch      F.layer_norm(x, (C,), w, b) (+ .to(bf16) when x is fp32); bf16 x with bf16 weights (one kernel)
    torch AMP  under torch.autocast(bf16): F.layer_norm(x, (C,), w, b).to(bf16), fp32 weights (what VMamba runs
               today: autocast upcasts x, normalises in fp32, the cast feeds the next Linear)
    ours       vmbench.kernels.layer_norm(x, w, b, out_dtype=bf16), fp32 weights (custom op: forward and backward
               each one kernel plus a tiny (P, C) sum)
fwd+bwd: y = f(x); torch.autograd.grad(y, (x, w, b), dy). Timing: triton.testing.do_bench (CUDA events, median).
TB/s is ours over the minimal traffic: forward reads x and writes y; the backward reads dy and x and writes dx
(weights and per-row statistics are < 3 % of it and not counted). Every case is checked before it is timed:
y, dx, dweight and dbias vs fp64, error <= 2 x the fp32 torch twin's (`layer_norm_ref`) + 1e-6.
Prints a markdown table; writes it to $OUT/layer_norm.md when $OUT is set. --sweep also times tile
configurations of the raw launchers (stages 1 and 4, bf16). --dry-run checks the script on the CPU
(Triton interpreter, tiny shapes; timings meaningless).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import gpu_ms, once_ms, save  # noqa: E402  (benchmarks/, the script's own folder)

import torch
import torch.nn.functional as F

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]  # (C, H = W) of VMamba-T's four stages
BATCH = 128
EPS = 1e-5


_bench = gpu_ms  # --dry-run swaps in once_ms


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(x, w, b, out_dtype):
    """Forward and gradients of ours vs fp64, against the fp32 twin's error. Returns (ok, worst ratio text)."""
    from vmbench.kernels import layer_norm, layer_norm_ref

    leaves = [t.detach().requires_grad_(True) for t in (x, w, b)]
    g = torch.randn(x.shape, device=x.device).to(out_dtype)
    y = layer_norm(*leaves, EPS, out_dtype, backend="triton")
    got = [y, *torch.autograd.grad(y, leaves, g)]
    y_r = layer_norm_ref(*leaves, EPS, out_dtype)
    twin = [y_r, *torch.autograd.grad(y_r, leaves, g)]
    up = [t.detach().double().requires_grad_(True) for t in leaves]
    y64 = layer_norm_ref(*up, EPS)
    want = [y64, *torch.autograd.grad(y64, up, g.double())]
    ok, worst = True, ""
    for name, a, r, c in zip(("y", "dx", "dw", "db"), got, twin, want):
        e, e_r = rel(a, c), rel(r, c)
        if torch.isnan(a).any() or e > 2 * e_r + 1e-6:
            ok = False
            worst += f" {name} {e:.1e} (twin {e_r:.1e})"
    return ok, worst


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="time launcher tile configs too")
    ap.add_argument("--no-train", action="store_true", help="skip fwd+bwd timings")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the script on the CPU: Triton interpreter (TRITON_INTERPRET=1), tiny shapes")
    args = ap.parse_args(argv)
    global BATCH, STAGES, _bench
    if args.dry_run:
        if "triton" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton reads it when kernels are decorated
        BATCH, STAGES = 1, [(12, 5), (40, 3)]
        _bench = once_ms
    elif not torch.cuda.is_available():
        print("benchmarks/layer_norm.py needs CUDA", file=sys.stderr)
        return 2
    import triton

    if args.dry_run:  # the interpreter truncates fp32 -> bf16 where the GPU rounds: use the tests' fix
        try:
            import pytest

            sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
            from triton_interp import patch_interpreter_bf16

            patch_interpreter_bf16(pytest.MonkeyPatch())
        except ImportError:
            print("dry run: bf16 outputs truncated by the interpreter; checks may FAIL", file=sys.stderr)
    from vmbench.kernels import layer_norm
    from vmbench.kernels import _layer_norm_triton as lnt

    dev = torch.device("cpu" if args.dry_run else "cuda")
    bf16 = torch.bfloat16
    amp_dev = dev.type
    name = "CPU dry run (interpreter)" if args.dry_run else torch.cuda.get_device_name()
    lines = [f"# LayerNorm (last dim) — {name}, torch {torch.__version__}, triton {triton.__version__}, "
             f"batch {BATCH}", "",
             "| stage | rows x C | x -> y | pass | torch ms | torch AMP ms | ours ms | vs torch | vs AMP "
             "| ours TB/s | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    sweep_lines = []
    for si, (C, HW) in enumerate(STAGES):
        R = BATCH * HW * HW
        g = torch.Generator(device="cpu").manual_seed(si)
        w = (1 + 0.1 * torch.randn(C, generator=g)).to(dev)
        b = (0.1 * torch.randn(C, generator=g)).to(dev)
        for xdt in (torch.float32, bf16):
            case = f"{str(xdt)[6:]} -> bf16"
            try:
                x = (torch.randn(R, C, generator=g) * 2 + 0.5).to(dev, xdt)
                dy = torch.randn(R, C, device=dev).to(bf16)
                ok, worst = check(x, w, b, bf16)
                verdict = "ok" if ok else f"FAIL{worst}"
                wt, bt = (w, b) if xdt == torch.float32 else (w.to(xdt), b.to(xdt))

                def torch_fwd(x=x, wt=wt, bt=bt):
                    return F.layer_norm(x, (C,), wt, bt, EPS).to(bf16)

                def amp_fwd(x=x):
                    with torch.autocast(amp_dev, dtype=bf16):
                        return F.layer_norm(x, (C,), w, b, EPS).to(bf16)

                def ours_fwd(x=x):
                    return layer_norm(x, w, b, EPS, bf16, backend="triton")

                ex = x.element_size()
                fwd_bytes = R * C * (ex + 2)
                with torch.no_grad():
                    t = [_bench(torch_fwd), _bench(amp_fwd), _bench(ours_fwd)]
                lines.append(f"| {si + 1} | {R} x {C} | {case} | fwd | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | "
                             f"{t[0] / t[2]:.2f}x | {t[1] / t[2]:.2f}x | {fwd_bytes / t[2] / 1e9:.2f} | {verdict} |")
                print(lines[-1], flush=True)
                if not args.no_train:
                    leaves_t = [x.detach().requires_grad_(True), wt.detach().requires_grad_(True),
                                bt.detach().requires_grad_(True)]
                    leaves = [x.detach().requires_grad_(True), w.detach().requires_grad_(True),
                              b.detach().requires_grad_(True)]

                    def train(f, ls):
                        y = f(*ls)
                        return torch.autograd.grad(y, ls, dy)

                    def amp_fb(xx, ww, bb):
                        with torch.autocast(amp_dev, dtype=bf16):
                            return F.layer_norm(xx, (C,), ww, bb, EPS).to(bf16)

                    tt = [_bench(lambda: train(lambda xx, ww, bb: F.layer_norm(xx, (C,), ww, bb, EPS).to(bf16),
                                               leaves_t)),
                          _bench(lambda: train(amp_fb, leaves)),
                          _bench(lambda: train(lambda xx, ww, bb: layer_norm(xx, ww, bb, EPS, bf16, backend="triton"),
                                               leaves))]
                    fb_bytes = fwd_bytes + R * C * (2 + 2 * ex)  # + read dy (bf16) and x, write dx
                    lines.append(f"| {si + 1} | {R} x {C} | {case} | fwd+bwd | {tt[0]:.3f} | {tt[1]:.3f} | "
                                 f"{tt[2]:.3f} | {tt[0] / tt[2]:.2f}x | {tt[1] / tt[2]:.2f}x | "
                                 f"{fb_bytes / tt[2] / 1e9:.2f} | {verdict} |")
                    print(lines[-1], flush=True)
                if args.sweep and xdt == bf16 and si in (0, len(STAGES) - 1):
                    y, mean, rstd = lnt.layer_norm_fwd_launch(x, w, b, EPS, bf16)
                    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 1
                    for elems in (1024, 2048, 4096, 8192):
                        br = max(1, elems // triton.next_power_of_2(C))
                        for nw in (2, 4, 8):
                            tf = _bench(lambda: lnt.layer_norm_fwd_launch(x, w, b, EPS, bf16, config=(br, nw)), rep=30)
                            sweep_lines.append(f"| {si + 1} | fwd (BLOCK_R {br}, warps {nw}) | {tf:.3f} | "
                                               f"{fwd_bytes / tf / 1e9:.2f} |")
                        for nw in (4, 8):
                            for waves in (1, 2, 4):
                                cfg = (br, nw, waves * sms)
                                tb = _bench(lambda: lnt.layer_norm_bwd_launch(dy, x, w, mean, rstd, config=cfg),
                                            rep=30)
                                sweep_lines.append(f"| {si + 1} | bwd (BLOCK_R {br}, warps {nw}, {waves}/SM) | "
                                                   f"{tb:.3f} | {R * C * (2 + 2 * ex) / tb / 1e9:.2f} |")
                x = dy = None  # free them before the next stage
            except Exception:
                traceback.print_exc()
                lines.append(f"| {si + 1} | {R} x {C} | {case} | ERROR | | | | | | | |")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if sweep_lines:
        lines += ["", "## launcher tile sweeps (bf16 x -> bf16 y)", "", "| stage | config | ms | TB/s |",
                  "|---|---|---|---|"]
        lines += sweep_lines
    text = "\n".join(lines)
    print(text)
    save("layer_norm", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
