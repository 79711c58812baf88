"""Benchmark: cross-scan / cross-merge and the SS2D core at VMamba-T stage shapes (CUDA only).

    python benchmarks/ss2d.py [--quick] [--sweep] [--prev DIR]

Shapes: batch 128, D = 96 * 2**i, H = W = 56 / 28 / 14 / 7, K = 4, N = 1, R = ceil(D / 16);
fp16 and bf16. Every op is checked against the torch twin before it is timed. Timing:
triton.testing.do_bench (CUDA events, median). Prints a markdown table; writes it to
$OUT/ss2d.md when $OUT is set. --sweep also times tile configurations (used to choose the
launchers' defaults; see benchmarks/NOTES-ss2d.md). --prev DIR also times the SS2D core of the kernels
package exported there by benchmarks/prev_kernels.py (an earlier commit) on the same inputs.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import gpu_ms, once_ms, save  # noqa: E402  (benchmarks/, the script's own folder)

import torch

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]
BATCH = 128
HBM_TBS = 3.0  # measured device-to-device copy on the H100 of this workplace (read + write)


_bench = gpu_ms  # --dry-run swaps in once_ms


def rel(a, b):
    b = b.double()
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-30))


def ss2d_params(D, N, R, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    xp = torch.randn(4, R + 2 * N, D, generator=g) / math.sqrt(D)
    dtw = torch.randn(4, D, R, generator=g) / math.sqrt(R)
    dtb = torch.rand(4, D, generator=g) * 4 - 6  # softplus(bias) ~ 0.002 .. 0.1 (VMamba's dt init range)
    Al = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(4 * D, 1)
    Ds = torch.ones(4 * D)
    return [t.to(device) for t in (xp, dtw, dtb, Al, Ds)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="stage 1 fp16 only")
    ap.add_argument("--sweep", action="store_true", help="time tile configs too")
    ap.add_argument("--no-train", action="store_true", help="skip fwd+bwd timings")
    ap.add_argument("--prev", metavar="DIR", help="also time the SS2D core of benchmarks/prev_kernels.py's export")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the script on the CPU: Triton interpreter (set TRITON_INTERPRET=1), tiny shapes")
    args = ap.parse_args(argv)
    global BATCH, STAGES, _bench
    if args.dry_run:
        BATCH, STAGES = 1, [(16, 5), (32, 3)]
        _bench = once_ms
    elif not torch.cuda.is_available():
        print("benchmarks/ss2d.py needs CUDA", file=sys.stderr)
        return 2
    import triton

    from vmbench.kernels import cross_merge_ref, cross_scan_ref, ss2d_core, ss2d_core_ref
    from vmbench.kernels import _cross_scan_triton as xst
    from vmbench.kernels import _ss2d_triton as sst
    prev = prev_core = None
    if args.prev:
        from prev_kernels import load

        prev = load(args.prev)

        def prev_core(*a):  # its Functions launch raw inside its own direct_launch, as ours do
            with prev._backend.direct_launch():
                return prev.ss2d_core(*a, backend="triton")

    dev = torch.device("cpu" if args.dry_run else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    name = "CPU dry run (interpreter)" if args.dry_run else torch.cuda.get_device_name()
    lines = [f"# SS2D kernels — {name}, torch {torch.__version__}, triton {triton.__version__}, batch {BATCH}", ""]
    stages = STAGES[:1] if args.quick else STAGES
    dtypes = [torch.float16] if args.quick else [torch.float16, torch.bfloat16]

    # ---------------------------------------------------------------- cross-scan / cross-merge
    lines += ["## cross-scan / cross-merge (channels-last x (B, H, W, C) <-> (B, 4, C, L))", "",
              "| stage | dtype | op | floor ms | torch ms | triton ms | triton TB/s | speed-up | check |",
              "|---|---|---|---|---|---|---|---|---|"]
    sweep_lines = []
    for si, (C, HW) in enumerate(stages):
        for dt in dtypes:
            x = torch.randn(BATCH, HW, HW, C, device=dev).to(dt)
            nbytes = 5 * x.numel() * x.element_size()  # read once + write 4 copies (and the adjoint)
            floor = nbytes / HBM_TBS / 1e9
            try:
                xs_t = xst.cross_scan_triton(x)
                ok = torch.equal(xs_t, cross_scan_ref(x))
                t_ref = _bench(lambda: cross_scan_ref(x))
                t_tri = _bench(lambda: xst.cross_scan_launch(x))
                lines.append(f"| {si + 1} | {str(dt)[6:]} | cross_scan | {floor:.3f} | {t_ref:.3f} | {t_tri:.3f} | "
                             f"{nbytes / t_tri / 1e9:.2f} | {t_ref / t_tri:.1f}x | {'exact' if ok else 'MISMATCH'} |")
                ys = torch.randn(BATCH, 4, C, HW * HW, device=dev).to(dt)
                y_t = xst.cross_merge_triton(ys, HW, HW)
                y_64 = cross_merge_ref(ys.double(), HW, HW)
                e_t, e_r = rel(y_t, y_64), rel(cross_merge_ref(ys, HW, HW), y_64)
                ok = e_t <= 2 * e_r + 1e-6
                t_ref = _bench(lambda: cross_merge_ref(ys, HW, HW))
                t_tri = _bench(lambda: xst.cross_merge_launch(ys, HW, HW))
                lines.append(f"| {si + 1} | {str(dt)[6:]} | cross_merge | {floor:.3f} | {t_ref:.3f} | {t_tri:.3f} | "
                             f"{nbytes / t_tri / 1e9:.2f} | {t_ref / t_tri:.1f}x | {'ok' if ok else 'FAIL'} "
                             f"{e_t:.1e} (ref {e_r:.1e}) |")
                if args.sweep and dt == torch.float16 and si < 2:
                    for tiles in [(32, 16, 16, 4), (32, 16, 16, 8), (64, 8, 16, 4), (16, 16, 32, 4),
                                  (32, 8, 32, 4), (64, 16, 16, 8), (16, 32, 32, 8)]:
                        a = _bench(lambda: xst.cross_scan_launch(x, tiles=tiles), rep=30)
                        b = _bench(lambda: xst.cross_merge_launch(ys, HW, HW, tiles=tiles), rep=30)
                        sweep_lines.append(f"| {si + 1} | xscan/xmerge tiles {tiles} | {a:.3f} | {b:.3f} |")
                del ys, y_t, y_64, xs_t
            except Exception:
                traceback.print_exc()
                lines.append(f"| {si + 1} | {str(dt)[6:]} | cross_scan/merge | ERROR | | | | | |")
            del x
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print("\n".join(lines[-(len(stages) * len(dtypes) * 2):]), flush=True)

    # ---------------------------------------------------------------- SS2D core
    lines += ["", "## SS2D core (N = 1, R = ceil(D/16)); ms", "",
              "comp. = the Triton composition (ss2d_core(backend='triton')); prev = the same from "
              + (f"commit {prev.REV}" if prev else "an earlier commit (not given: --prev)")
              + "; all columns from the same run.", "",
              "| stage | dtype | fwd torch | fwd comp. prev | fwd comp. | fwd fused | fused vs comp. | fused err (torch err) "
              "| fwd+bwd torch | fwd+bwd comp. prev | fwd+bwd comp. |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    N = 1
    for si, (D, HW) in enumerate(stages):
        R = math.ceil(D / 16)
        ps = ss2d_params(D, N, R, dev, seed=si)
        for dt in dtypes:
            row = [f"{si + 1}", str(dt)[6:]]
            try:
                x = torch.randn(BATCH, HW, HW, D, device=dev).to(dt)
                with torch.no_grad():
                    y32 = ss2d_core_ref(x.float(), *ps)
                    y_ref = ss2d_core(x, *ps, backend="torch")
                    y_f = sst.ss2d_fused_forward(x, *ps)
                    e_f, e_r = rel(y_f, y32), rel(y_ref, y32)
                    t_ref = _bench(lambda: ss2d_core(x, *ps, backend="torch"), rep=40)
                    comps = [lambda: prev_core(x, *ps), lambda: ss2d_core(x, *ps, backend="triton")]
                    t_comps = []
                    for comp in comps:
                        if comp is comps[0] and prev is None:
                            row.append("—")
                            continue
                        e_c = rel(comp(), y32)
                        t_comps.append(_bench(comp, rep=40))
                        row.append(f"{t_comps[-1]:.3f}" + ("" if e_c <= 2 * e_r + 1e-5 else f" FAIL {e_c:.1e}"))
                    t_f = _bench(lambda: sst.ss2d_fused_forward(x, *ps), rep=40)
                ok = e_f <= 2 * e_r + 1e-5
                row.insert(2, f"{t_ref:.3f}")
                row += [f"{t_f:.3f}", f"{t_comps[-1] / t_f:.2f}x", f"{'ok' if ok else 'FAIL'} {e_f:.1e} ({e_r:.1e})"]
                if args.sweep and dt == torch.float16:
                    for cfg in [(16, 32, 4), (32, 32, 4), (32, 64, 4), (16, 64, 4), (64, 32, 8)]:
                        with torch.no_grad():
                            y_c = sst.ss2d_fwd_launch(x, *ps, config=cfg)
                            e_c = rel(y_c, y32)
                            t_c = _bench(lambda: sst.ss2d_fwd_launch(x, *ps, config=cfg), rep=30)
                        sweep_lines.append(f"| {si + 1} | fused (BD, BT, warps) {cfg} | {t_c:.3f} | err {e_c:.1e} |")
                if args.no_train:
                    row += ["-", "-", "-"]
                else:
                    def train(fn):
                        xx = x.detach().requires_grad_(True)
                        pp = [p.detach().requires_grad_(True) for p in ps]
                        y = fn(xx, *pp)
                        y.backward(torch.ones_like(y))

                    for fn in (lambda *a: ss2d_core(*a, backend="torch"), prev_core,
                               lambda *a: ss2d_core(*a, backend="triton")):
                        if fn is None:
                            row.append("—")
                            continue
                        train(fn)
                        row.append(f"{_bench(lambda: train(fn), rep=40):.3f}")
                del x, y32, y_ref, y_f
            except Exception:
                traceback.print_exc()
                row += ["ERROR"] * (11 - len(row))
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if sweep_lines:
        lines += ["", "## tile sweeps (fp16; ms)", "", "| stage | config | ms | ms / err |", "|---|---|---|---|"]
        lines += sweep_lines
    text = "\n".join(lines)
    print(text)
    save("ss2d", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
