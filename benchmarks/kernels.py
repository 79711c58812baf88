"""Selective-scan benchmark on CUDA: our Triton kernels vs the torch twin, at VMamba-T stage shapes.

    python benchmarks/kernels.py [--quick] [--json] [--sweep] [--no-ref] [--prev DIR]

For each stage shape (batch 128, K = 4, N = 1) and input dtype (fp16, bf16; fp32 out) it first
checks the forward and every gradient against fp64 (derived tolerance, as in the tests), then times
forward and backward with `triton.testing.do_bench` (median), reports the effective bandwidth over
the minimal traffic (each input read once, each output written once), the torch twin
(`selective_scan_ref`, autograd) measured in the same run, and the official CUDA kernel's times from
shared/ANCHORS.md (H100, fp16 in / fp32 out) as constants for the ratio column. The "previous" columns
time another version on the same inputs in the same process: the kernels package of an earlier commit
with --prev DIR (exported by benchmarks/prev_kernels.py), else the general 3-D kernels (v1). Writes the
markdown table to $OUT/kernels.md when $OUT is set. Imports only torch, triton and vmbench.kernels.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import save  # noqa: E402  (benchmarks/, the script's own folder)

import torch


B_SZ, K, N = 128, 4, 1
STAGES = [(384, 3136), (768, 784), (1536, 196), (3072, 49)]  # (K*D, L) of VMamba-T at 224^2
# Official selective-scan CUDA kernel, VMamba-T shapes, batch 128, fp16 in / fp32 out (ANCHORS.md, H100).
OFFICIAL_MS = {(384, 3136): (1.10, 2.62), (768, 784): (0.55, 1.37), (1536, 196): (0.30, 0.88), (3072, 49): (0.28, 0.77)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(kd, L, dtype, batch=B_SZ, n=N, k=K, device="cuda"):
    g = torch.Generator(device=device).manual_seed(kd * 100003 + L)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    u = r(batch, kd, L).to(dtype)
    delta = (r(batch, kd, L) * 0.5 - 1.0).to(dtype)
    A = -(torch.rand(kd, n, device=device, generator=g) * 2 + 0.2)
    Bm = r(batch, k, n, L).to(dtype)
    Cm = r(batch, k, n, L).to(dtype)
    return u, delta, A, Bm, Cm, r(kd), r(kd) * 0.5


def byte_floor(kd, L, dtype, batch=B_SZ, n=N, k=K):
    """Minimal HBM traffic (bytes) of the forward and the backward, fp32 out / fp32 dy."""
    e = torch.finfo(dtype).bits // 8
    big = batch * kd * L
    bc = batch * k * n * L
    small = kd * n * 4 + 2 * kd * 4  # A, D, delta_bias
    fwd = 2 * big * e + 2 * bc * e + small + big * 4  # u, delta, B, C in; y out (fp32)
    bwd = (2 * big * e + 2 * bc * e + small + big * 4) + (2 * big * e + 2 * bc * e + small)  # + dy in; grads out
    return fwd, bwd


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check(kd, L, dtype, chunk=16):
    """Kernel vs fp64 at a real stage shape: error <= 2 x the torch twin's (fp32 compute) + 8 eps.
    fp64 and the twin use the analytic torch backward op, over batch chunks to bound memory."""
    from vmbench.kernels import _selective_scan_triton as T
    from vmbench.kernels.selective_scan import selective_scan_ref

    torch.manual_seed(kd + L)
    x = make_inputs(kd, L, dtype)
    dy = torch.randn(B_SZ, kd, L, device="cuda")
    T._POISON = True  # outputs start as NaN: unwritten elements show up as non-finite
    try:
        y, hs = T._scan_fwd(*x, True, True)
        gk = T._scan_bwd(dy, *x, hs, True)
    finally:
        T._POISON = False
    bwd = torch.ops.vmbench.selective_scan_torch_bwd
    outs = {}
    for prec in (torch.float64, torch.float32):
        ys, gs = [], []
        for s in range(0, B_SZ, chunk):
            xs = [t[s:s + chunk].to(prec) for t in x[:2]] + [x[2].to(prec)] + \
                 [t[s:s + chunk].to(prec) for t in x[3:5]] + [t.to(prec) for t in x[5:]]
            with torch.no_grad():
                ys.append(selective_scan_ref(*xs))
                gs.append(bwd(dy[s:s + chunk].to(prec), *xs, True, True))
        g = [torch.cat([c[i] for c in gs]) if i in (0, 1, 3, 4) else sum(c[i] for c in gs) for i in range(7)]
        outs[prec] = (torch.cat(ys), g)
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    y64, g64 = outs[torch.float64]
    y32, g32 = outs[torch.float32]
    worst = 0.0
    rows = [("y", y, y32, y64)] + [(nm, gk[i], g32[i].to(x[i].dtype), g64[i]) for i, nm in enumerate(names)]
    for nm, a, r32, r64 in rows:
        if not torch.isfinite(a).all():
            raise AssertionError(f"{kd}x{L} {dtype}: {nm} has non-finite (unwritten?) elements")
        ek, er = rel(a, r64), rel(r32, r64)
        worst = max(worst, ek / (2 * er + 8 * 1.2e-7))
        if ek > 2 * er + 8 * 1.2e-7:
            raise AssertionError(f"{kd}x{L} {dtype}: {nm} kernel error {ek:.3e} > 2 x twin {er:.3e}")
    return worst


def bench(fn, n_sets=1):
    import triton.testing

    it = [0]

    def run():
        fn(it[0] % n_sets)
        it[0] += 1

    from vmbench.kernels._backend import direct_launch

    with direct_launch():  # launchers called directly launch without the traceable wrapper
        return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")


def time_stage(kd, L, dtype, with_ref=True, prev=None):
    """Times of one stage shape; `prev` is the previous kernels package (None: v1 of this one)."""
    from vmbench.kernels import _selective_scan_triton as T
    from vmbench.kernels.selective_scan import selective_scan_ref

    fwd_bytes, bwd_bytes = byte_floor(kd, L, dtype)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if hasattr(torch.cuda.get_device_properties(0), "L2_cache_size") else 50 << 20
    n_sets = max(1, math.ceil(2 * l2 / fwd_bytes))  # rotate input sets only if one set would fit in L2
    sets = [make_inputs(kd, L, dtype) for _ in range(n_sets)]
    dys = [torch.randn(B_SZ, kd, L, device="cuda") for _ in range(n_sets)]
    hss = [T._scan_fwd(*x, True, True)[1] for x in sets]
    fwd_ms = bench(lambda i: T._scan_fwd(*sets[i], True, True), n_sets)
    bwd_ms = bench(lambda i: T._scan_bwd_parts(dys[i], *sets[i], hss[i], True), n_sets)
    res = dict(kd=kd, L=L, dtype=str(dtype).split(".")[-1], fwd_ms=fwd_ms, bwd_ms=bwd_ms,
               fwd_tbs=fwd_bytes / fwd_ms / 1e9, bwd_tbs=bwd_bytes / bwd_ms / 1e9,
               fwd_floor_mb=fwd_bytes / 1e6, bwd_floor_mb=bwd_bytes / 1e6)
    # the previous version on the same inputs, same run: an earlier commit's kernels, or v1 (the general
    # 3-D kernels with dB / dC atomics)
    if prev is not None:
        import importlib

        P = importlib.import_module(prev.__name__ + "._selective_scan_triton")
    else:
        P = T
    with (P.scan_config() if prev is not None else T.scan_config(n1=0)), prev_launch(prev):
        hss = [P._scan_fwd(*x, True, True)[1] for x in sets]
        res["prev_fwd_ms"] = bench(lambda i: P._scan_fwd(*sets[i], True, True), n_sets)
        res["prev_bwd_ms"] = bench(lambda i: P._scan_bwd_parts(dys[i], *sets[i], hss[i], True), n_sets)
    del sets, dys, hss
    if with_ref:
        x = [t.requires_grad_(True) if t.is_floating_point() else t for t in make_inputs(kd, L, dtype)]
        dy = torch.randn(B_SZ, kd, L, device="cuda")
        with torch.no_grad():
            res["ref_fwd_ms"] = bench(lambda i: selective_scan_ref(*x))
        y = selective_scan_ref(*x)
        res["ref_bwd_ms"] = bench(lambda i: torch.autograd.grad(y, x, dy, retain_graph=True))
        del x, y, dy
    torch.cuda.empty_cache()
    off = OFFICIAL_MS.get((kd, L))
    if off:
        res["official_fwd_ms"], res["official_bwd_ms"] = off
    return res


def prev_launch(prev):
    """The previous package's eager raw-launch context (its launches then cost what ours do)."""
    import contextlib

    return prev._backend.direct_launch() if prev is not None else contextlib.nullcontext()


def sweep(stages):
    """Time a few chunk / tile / warp choices per stage (fp16); prints one line per config."""
    from vmbench.kernels import _selective_scan_triton as T

    # N = 1 kernels (the benchmark's shapes); the first entry of each list is the default. Chunks are fitted
    # to L (n1_max_pad; forward rows of at most n1_fwd_whole positions are one chunk); rows per program are tile //
    # chunk. 16-position backward chunks (stage 4) run n1_bwd_warps_short warps whatever n1_bwd_warps says.
    fwd_cfgs = [dict(n1_fwd_chunk=c, n1_fwd_tile=t, n1_fwd_warps=w, n1_fwd_vec=v, n1_fwd_whole=h) for c, t, w, v, h in
                [(128, 512, 1, 0, 256), (128, 512, 1, 8, 256), (128, 1024, 4, 0, 256), (128, 1024, 2, 0, 256),
                 (128, 512, 2, 0, 256), (128, 512, 1, 0, 0), (128, 256, 1, 0, 256), (256, 1024, 2, 8, 256)]]
    bwd_cfgs = [dict(n1_bwd_chunk=c, n1_bwd_tile=t, n1_bwd_warps=w, n1_bwd_warps_short=ws, n1_bwd_prefetch=f)
                for c, t, w, ws, f in
                [(32, 512, 1, 4, 32), (32, 512, 1, 4, 0), (32, 512, 2, 4, 32), (32, 512, 2, 4, 0), (32, 1024, 1, 4, 32),
                 (32, 256, 1, 4, 32), (32, 1024, 2, 4, 32), (32, 512, 1, 1, 16), (32, 512, 1, 2, 0)]]
    out = []
    for kd, L in stages:
        x = make_inputs(kd, L, torch.float16)
        dy = torch.randn(B_SZ, kd, L, device="cuda")
        for cfg in fwd_cfgs:
            with T.scan_config(**cfg):
                ms = bench(lambda i: T._scan_fwd(*x, True, True))
            out.append(dict(stage=f"{kd}x{L}", kind="fwd", **cfg, ms=ms))
            print(f"sweep fwd {kd}x{L} {cfg} {ms:.3f} ms", flush=True)
        for cfg in bwd_cfgs:
            with T.scan_config(**cfg):
                hs = T._scan_fwd(*x, True, True)[1]
                ms = bench(lambda i: T._scan_bwd_parts(dy, *x, hs, True))
            out.append(dict(stage=f"{kd}x{L}", kind="bwd", **cfg, ms=ms))
            print(f"sweep bwd {kd}x{L} {cfg} {ms:.3f} ms", flush=True)
        del x, dy
        torch.cuda.empty_cache()
    return out


def kernel_stats():
    """Registers, spills and shared memory of every compiled scan kernel variant in this process."""
    from vmbench.kernels._scan_helpers import _KERNELS

    out = []
    for (name, interp), fn in _KERNELS.items():
        caches = getattr(fn, "device_caches", None)
        kernels = []
        if caches:
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                kernels += list(cache.values())
        for k in kernels:
            md = getattr(k, "metadata", None)
            consts = getattr(getattr(k, "src", None), "constants", {}) or {}
            blocks = {str(getattr(c, "name", c)): v for c, v in consts.items() if "BLOCK" in str(getattr(c, "name", c))}
            out.append(dict(kernel=name, regs=getattr(k, "n_regs", None), spills=getattr(k, "n_spills", None),
                            shared=getattr(md, "shared", None), warps=getattr(md, "num_warps", None), blocks=blocks))
    return out


def table(rows, card, prev_name):
    hdr = ("| stage (B, K·D, L) | in | fwd ms | fwd TB/s | bwd ms | bwd TB/s | prev fwd / bwd ms | × prev fwd / bwd "
           "| torch twin fwd / bwd ms | × twin fwd / bwd "
           "| official fwd / bwd ms (ANCHORS, H100, fp16) | × official fwd / bwd | max err / tol |")
    lines = [f"Selective scan, {card}, K=4, N=1, fp32 out; TB/s = minimal traffic / time; "
             f"× = other's time / ours (higher is better); prev = {prev_name}, same run.", "", hdr,
             "|" + "---|" * 13]
    for r in rows:
        pv = f"{r['prev_fwd_ms']:.3f} / {r['prev_bwd_ms']:.3f}"
        xpv = f"{r['prev_fwd_ms'] / r['fwd_ms']:.2f} / {r['prev_bwd_ms'] / r['bwd_ms']:.2f}"
        ref = (f"{r['ref_fwd_ms']:.2f} / {r['ref_bwd_ms']:.2f}" if "ref_fwd_ms" in r else "—")
        xref = (f"{r['ref_fwd_ms'] / r['fwd_ms']:.1f} / {r['ref_bwd_ms'] / r['bwd_ms']:.1f}" if "ref_fwd_ms" in r else "—")
        off = (f"{r['official_fwd_ms']:.2f} / {r['official_bwd_ms']:.2f}" if "official_fwd_ms" in r else "—")
        xoff = (f"{r['official_fwd_ms'] / r['fwd_ms']:.2f} / {r['official_bwd_ms'] / r['bwd_ms']:.2f}"
                if "official_fwd_ms" in r else "—")
        err = f"{r['err_ratio']:.2f}" if "err_ratio" in r else "—"
        lines.append(f"| (128, {r['kd']}, {r['L']}) | {r['dtype']} | {r['fwd_ms']:.3f} | {r['fwd_tbs']:.2f} | "
                     f"{r['bwd_ms']:.3f} | {r['bwd_tbs']:.2f} | {pv} | {xpv} | {ref} | {xref} | {off} | {xoff} | {err} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="stages 1 and 4 only, fp16 only")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--sweep", action="store_true", help="also time a few tile / chunk configs (fp16)")
    ap.add_argument("--sweep-stages", default="1", help="comma-separated stages (1-4) for --sweep")
    ap.add_argument("--no-ref", action="store_true", help="skip timing the torch twin")
    ap.add_argument("--no-check", action="store_true", help="skip the fp64 correctness check")
    ap.add_argument("--prev", metavar="DIR", help="time the kernels exported by benchmarks/prev_kernels.py into DIR "
                    "beside ours (default: the v1 kernels of this version)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    card = torch.cuda.get_device_name(0)
    print(f"card {card}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    prev = None
    if args.prev:
        from prev_kernels import load

        prev = load(args.prev)
    prev_name = f"the kernels of commit {prev.REV}" if prev is not None else "v1 (general 3-D kernels)"
    stages = [STAGES[0], STAGES[3]] if args.quick else STAGES
    dtypes = ["fp16"] if args.quick else list(DTYPES)
    rows = []
    for name in dtypes:
        for kd, L in stages:
            err = None if args.no_check else check(kd, L, DTYPES[name])
            r = time_stage(kd, L, DTYPES[name], with_ref=not args.no_ref, prev=prev)
            if err is not None:
                r["err_ratio"] = err
            rows.append(r)
            print(json.dumps(r), flush=True)
    sw = sweep([STAGES[int(i) - 1] for i in args.sweep_stages.split(",")]) if args.sweep else []
    md = table(rows, card, prev_name)
    stats = kernel_stats()
    md += "\n\nCompiled variants (registers / spills per thread):\n" + "\n".join(
        f"- {k['kernel']} {k['blocks']} warps={k['warps']}: regs {k['regs']}, spills {k['spills']}, "
        f"shared {k['shared']} B" for k in stats)
    print(md)
    if args.json:
        print(json.dumps({"card": card, "rows": rows, "sweep": sw}, indent=1))
    save("kernels", md, {"card": card, "rows": rows, "sweep": sw, "kernels": stats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
