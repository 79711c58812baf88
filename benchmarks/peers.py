"""VMamba against its timm peers, every model through one timing function, in one process on one GPU.

    python benchmarks/peers.py                                   # 224², batch 128, AMP-bf16, eager
    python benchmarks/peers.py --compile                         # the same, torch.compile (default mode)
    python benchmarks/peers.py --compile on,off --modes plain,train   # compiled and eager rows in one process
    python benchmarks/peers.py --compile --freezing --modes plain   # + Inductor freezing (parameters as constants)
    python benchmarks/peers.py --res 1024 --batch 4 --amp fp16 --models vmamba_t,convnext_t --peer convnext_t
    python benchmarks/peers.py --modes plain,bench,nograd_frozen,infmode,graph   # where the eager time goes
    python benchmarks/peers.py --replay on,off                   # VMamba with and without its graph replays
    python benchmarks/peers.py --fusions all,ffn,mlp,conv,none   # VMamba's fused MLP, fc1 + GELU, conv + SiLU kernels
    python benchmarks/peers.py --compile --modes train --fusions default,mlp+ffn+conv+gelu+convop  # without lnbwd
    python benchmarks/peers.py --compile --modes plain,train --scan real,free   # the bound: a scan that costs nothing

Modes (`--modes`, default plain,bench,train):
  plain          a user's own loop: `with torch.no_grad(), torch.autocast("cuda", dtype): model(x)`
  bench          vmbench's bench path: inference_mode (no_grad when compiled) + `frozen_parameters()`
  nograd_frozen  no_grad + `frozen_parameters()`;  infmode: inference_mode alone (diagnostics)
  graph          the plain call captured once as a CUDA graph, replays timed: GPU work without host time
  train          training step: forward under autocast, cross-entropy, backward, AdamW step
  train_graph    forward + backward (no optimizer step) captured as a CUDA graph: the GPU work of training
Each is timed by vmbench's own loop (`vmbench.engine.bench.timed_runs`, the one `vmbench bench` and the suite use):
CUDA-event timing of `--iters` calls, median of `--repeats` runs after at least `--warmup` calls and `--warmup-s`
seconds (the first call's seconds reported apart: compile time; in the graph modes, the first replay after a
side-stream warm-up and the capture), peak memory (torch.cuda.max_memory_allocated, weights included).
Prints a markdown table (img/s, peak GB, ratio to `--peer`) and, with $OUT set, writes $OUT/<name>.md / .json.
VMamba replays its calls from CUDA graphs (vmbench/models/graph_replay.py): the plain, bench and train rows
include that. `--replay on,off` times each VMamba row both ways in one process (rows "MODEL/eager": replays
off, every call eager).
`--dry-run` runs every path once on the CPU with tiny shapes (checks the script, times mean nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import (FUSIONS, SCANS, fusion_switch, save, scan_switch,  # noqa: E402  (the script's folder)
                     valid_fusion)

MODES = ("plain", "bench", "nograd_frozen", "infmode", "graph", "train", "train_graph")
AMP = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}


def _contexts(mode: str, compiled: bool):
    """The grad-mode and parameter contexts of one inference call in `mode` (autocast comes from time_mode)."""
    import torch

    from vmbench.kernels import frozen_parameters

    grad = {"plain": torch.no_grad, "graph": torch.no_grad, "nograd_frozen": torch.no_grad,
            "infmode": torch.inference_mode,
            "bench": torch.no_grad if compiled else torch.inference_mode}[mode]
    frozen = frozen_parameters() if mode in ("bench", "nograd_frozen") else contextlib.nullcontext()
    return grad, frozen


def time_mode(model, mode: str, batch: int, res: int, device, dtype, compiled: bool = False, warmup: int = 3,
              repeats: int = 5, iters: int = 10, warmup_s: float = 3.0) -> dict:
    """img/s, ms per batch (median), first call s and peak GB of `model` in `mode` (see the module docstring).
    The calls are timed by vmbench's own loop (`vmbench.engine.bench.timed_runs`, as `vmbench bench`)."""
    import torch
    import torch.nn.functional as F

    from vmbench.engine.bench import PeakMemory, cuda_graph_replay, timed_runs

    cuda = device.type == "cuda"
    x = torch.randn(batch, 3, res, res, device=device)
    target = torch.randint(1000, (batch,), device=device)
    fn = torch.compile(model) if compiled else model
    graphed = mode in ("graph", "train_graph") and cuda

    def amp():
        return torch.autocast(device.type, dtype=dtype, cache_enabled=not graphed) if dtype else \
            contextlib.nullcontext()

    opt = None
    if mode in ("train", "train_graph"):
        model.train()
        if mode == "train":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def step():
            if opt is not None:
                opt.zero_grad(set_to_none=True)
            with amp():
                out = fn(x)
            F.cross_entropy(out.float(), target).backward()
            if opt is not None:
                opt.step()
        outer = contextlib.nullcontext()
    else:
        model.eval()
        grad, outer = _contexts(mode, compiled)

        def step():
            with grad(), amp():
                fn(x)
    with PeakMemory(device) as pm, outer:
        # graph modes: warm-up calls on a side stream, one capture (gradients allocated by the graph), replays timed
        run = cuda_graph_replay(step, device, lambda: model.zero_grad(set_to_none=True)) if graphed else step
        first, ms = timed_runs(run, device, warmup=warmup, repeats=repeats, iters=iters, warmup_s=warmup_s)
    med = statistics.median(ms)
    peak = pm.mb * 2**20 / 1e9 if cuda and pm.mb is not None else None
    model.zero_grad(set_to_none=True)  # the optimizer's state goes with this call's closures
    return dict(img_s=batch * 1e3 / med, ms=med, ms_runs=ms, first_s=first, peak_gb=peak)


def _build(name: str, device, res: int):
    import torch

    from vmbench.models import create_model, model_entry

    model = create_model(name, img_size=res if model_entry(name).source == "timm" else None)
    return model.to(device).to(memory_format=torch.channels_last) if device.type == "cuda" else model.to(device)


def _dynamo_stats() -> dict:
    try:
        from torch._dynamo.utils import counters
    except Exception:
        return {}
    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values())}


COMPILED = "/compiled"  # label suffix of the compiled rows when --compile on,off times both


def _peer_of(label: str, peer: str) -> str:
    """The row a row's ratio divides by: the peer, compiled when the row is (with --compile on,off)."""
    return peer + COMPILED if label.endswith(COMPILED) else peer


def to_markdown(rows: list[dict], models: list[str], modes: list[str], peer: str, head: str) -> str:
    by = {(r["model"], r["mode"]): r for r in rows}
    peers = {_peer_of(m, peer) for m in models}
    lines = [head, "", "| mode | " + " | ".join(models) + " | " +
             " | ".join(f"{m} / {_peer_of(m, peer)}" for m in models if m not in peers) + " |",
             "|---" * (1 + len(models) + len([m for m in models if m not in peers])) + "|"]
    for mode in modes:
        cells, ratios = [], []
        for m in models:
            r = by.get((m, mode))
            if r is None or "error" in r:
                cells.append("—" if r is None else f"error: {r['error'][:60]}")
                continue
            mem = f" ({r['peak_gb']:.1f} GB)" if r.get("peak_gb") is not None else ""
            cells.append(f"{r['img_s']:.0f}{mem}")
        for m in models:
            if m in peers:
                continue
            r, p = by.get((m, mode)), by.get((_peer_of(m, peer), mode))
            ok = r and p and "error" not in r and "error" not in p
            ratios.append(f"**{r['img_s'] / p['img_s']:.2f}×**" if ok else "—")
        lines.append(f"| {mode} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    vm = [m for m in models if m not in peers]
    for m in vm:
        a, b = by.get((m, "plain")), by.get((m, "bench"))
        if a and b and "error" not in a and "error" not in b:
            lines.append(f"\n{m}: plain call / bench path = **{a['img_s'] / b['img_s']:.2f}×**")
    return "\n".join(lines)


_MAP_LABEL = {"default": "", "off": "/composition"}  # row label suffixes of --ss2d-map values


def _map_setting(spec: str, _map) -> tuple[bool, dict]:
    """(USE_MAP, MAP_CONFIG entries) of one --ss2d-map value; ValueError for an unknown one."""
    if spec in ("default", "off"):
        return spec == "default", dict(_map.MAP_CONFIG)
    variant, _, limit = spec.partition(":")  # this variant for every call on the map, with gradients up to L
    return True, {**_map.MAP_CONFIG, **_map.variant_config(variant), "train_max_l": int(limit or 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vmamba_t,swin_t,convnext_t")
    ap.add_argument("--peer", default="swin_t", help="the model the ratios divide by")
    ap.add_argument("--modes", default="plain,bench,train")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--amp", choices=sorted(AMP), default="bf16")
    ap.add_argument("--compile", nargs="?", const="on", default="off", help="torch.compile(model), default mode: "
                    "--compile (or on), off (the default), or on,off: both in one process (rows MODEL/compiled, each "
                    "divided by the compiled peer)")
    ap.add_argument("--freezing", action="store_true", help="with --compile: Inductor's freezing for the inference "
                    "modes (parameters and what is derived from them — casts, padded scan weights — folded into "
                    "the graph as constants once; training graphs are not frozen)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls after the first, at least")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="untimed seconds after the first call, at least "
                    "(in a fresh process the first seconds of eager VMamba calls ran up to 1.5x slower)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--replay", default="on", help="on, off or on,off: VMamba's CUDA-graph replays of its calls "
                    "(off: every call eager; rows MODEL/eager)")
    ap.add_argument("--ss2d-map", default="default", help="comma-separated: default (VMamba's SS2D as "
                    "kernels/_ss2d_map_triton.py sets it), off (every call on the composition), or DELTA-YS[:L] "
                    "(gemm-fp32, dot-fp32, gemm-input, dot-input): calls without gradients on the map-layout scan "
                    "with that variant, calls with them too where H*W <= L (rows MODEL/map-DELTA-YS[:L])")
    ap.add_argument("--fusions", default="default", help="comma-separated, of default, all, none, mlp, ffn, conv, "
                    "lnbwd, lnfwd, gelu, convop: which of VMamba's fused kernels and compiled-graph ops run — mlp: "
                    "fc1 + GELU as one GEMM (kernels/linear_gelu.py), ffn: the whole MLP as one kernel in calls "
                    "without gradients (kernels/mlp.py), conv: SS2D's depthwise conv + SiLU in compiled inference "
                    "(kernels/dwconv_silu.py), lnbwd: the LayerNorm backward on the Triton kernel in compiled "
                    "training (kernels/layer_norm.py; lnfwd: its forward too), gelu: the MLP's forward GELU as an "
                    "op of its own in compiled training (one hidden activation saved per MLP, not two), convop: "
                    "the convolutions as ops of their own in compiled graphs (Inductor's layout optimisation off; "
                    "both vmbench/models/opaque_ops.py), default: as their flags are set, "
                    "a+b: both; the others run unfused, as cuBLAS / cuDNN / Inductor then a pass (rows "
                    "MODEL/fuse-all, MODEL/fuse-none, ...)")
    ap.add_argument("--scan", default="real", help="comma-separated: real, free — free skips the launches of "
                    "the map-layout scan's forward and backward kernels (their outputs garbage; rows MODEL/scan-free): "
                    "VMamba's speed if its scan cost nothing, the most a faster scan could give")
    ap.add_argument("--name", default="peers", help="$OUT/<name>.md and <name>.json")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, one call per path")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    compiles = args.compile.split(",")
    if not compiles or set(compiles) - {"on", "off"} or len(set(compiles)) < len(compiles):
        ap.error("--compile takes on, off or on,off")
    if args.freezing and "on" not in compiles:
        ap.error("--freezing applies to compiled models: add --compile")
    models = args.models.split(",")
    if args.peer not in models:
        models.append(args.peer)
    replays = args.replay.split(",")
    if not replays or set(replays) - {"on", "off"}:
        ap.error("--replay takes on, off or on,off")
    fusions = args.fusions.split(",")
    if not fusions or not all(valid_fusion(f) for f in fusions):
        ap.error(f"--fusions takes a comma-separated list of {', '.join(FUSIONS)} (or names joined by +)")
    scans = args.scan.split(",")
    if not scans or set(scans) - set(SCANS):
        ap.error(f"--scan takes a comma-separated list of {', '.join(SCANS)}")
    from vmbench.kernels import _ss2d_map_triton as _map

    use_fusion, use_scan = fusion_switch(), scan_switch()

    maps = args.ss2d_map.split(",")
    try:
        settings = {m: _map_setting(m, _map) for m in maps}
    except ValueError:
        ap.error(f"--ss2d-map takes default, off and DELTA-YS[:L] with a variant of {', '.join(_map.VARIANTS)}")

    import torch

    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        args.res, args.batch, args.warmup, args.repeats, args.iters, args.warmup_s = 64, 2, 0, 1, 1, 0.0
        modes = [m for m in modes if m != "graph"]
    dtype = getattr(torch, AMP[args.amp]) if AMP[args.amp] and not args.dry_run else None
    torch.backends.cudnn.benchmark = True
    if "on" in compiles:
        # every compiled row traced afresh: rows that differ only inside a registered op's body (--scan, kernel
        # flags read there) give Dynamo the same graph, and AOTAutograd's cache would hand the second row the first
        # row's kernels (seen with --scan free: its inference row ran the real scan)
        import torch._functorch.config
        import torch._inductor.config

        torch._functorch.config.enable_autograd_cache = False
        torch._inductor.config.fx_graph_cache = False
    if args.freezing:
        import torch._inductor.config

        torch._inductor.config.freezing = True
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"card: {card}; torch {torch.__version__}", flush=True)
    rows = []
    for name in models:
        try:
            model = _build(name, device, args.res)
        except Exception as e:  # e.g. a window size that does not tile the input
            rows += [dict(model=name, mode=mode, error=f"{type(e).__name__}: {e}") for mode in modes]
            continue
        replay = getattr(model, "graph_replay", None)
        variants = [(r == "on", m, f, s) for m in maps for r in replays for f in fusions for s in scans] \
            if replay is not None else [(True, "default", "default", "real")]
        for mode in modes:
            for (on, use_map, fuse, scan), compiled in itertools.product(variants, compiles):
                compiled = compiled == "on"
                use_fusion(fuse)
                use_scan(scan)
                if replay is not None:
                    replay.enabled = on
                    replay.clear()  # a graph recorded in another row may have run the other SS2D forward
                _map.USE_MAP, cfg = settings[use_map]
                _map.MAP_CONFIG.update(cfg)
                try:
                    r = time_mode(model, mode, args.batch, args.res, device, dtype, compiled=compiled,
                                  warmup=args.warmup, repeats=args.repeats, iters=args.iters,
                                  warmup_s=args.warmup_s)
                except Exception as e:  # one failing path must not lose the table
                    r = {"error": f"{type(e).__name__}: {e}"}
                label = name + ("" if on else "/eager") + _MAP_LABEL.get(use_map, f"/map-{use_map}") \
                    + ("" if fuse == "default" else f"/fuse-{fuse}") + ("" if scan == "real" else f"/scan-{scan}") \
                    + (COMPILED if compiled and len(compiles) > 1 else "")
                r.update(model=label, mode=mode, **(_dynamo_stats() if compiled else {}))
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "ms_runs"}), file=sys.stderr, flush=True)
                if compiled:
                    torch._dynamo.reset()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    how = {("on",): "torch.compile", ("off",): "eager"}.get(tuple(compiles),
                                                          f"eager and torch.compile (rows {COMPILED})")
    head = (f"{card}, torch {torch.__version__}: {how}"
            f"{' + freezing' if args.freezing else ''}, "
            f"batch {args.batch}, {args.res}², AMP-{args.amp}; img/s (peak GB)")
    labels = list(dict.fromkeys(r["model"] for r in rows))
    md = to_markdown(rows, labels, modes, args.peer, head)
    print(md)
    save(args.name, md, {"card": card, "torch": torch.__version__, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
