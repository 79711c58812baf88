"""vmbench's training step eager against `vmbench run --cuda-graph` (vmbench.engine.graphed_step), per model, in one
process on one GPU.

    python3 benchmarks/train_graph.py                      # vmamba_t and swin_t, batch 128, 224², AMP-bf16
    python3 benchmarks/train_graph.py --models vmamba_t,swin_t,convnext_t --batch 64 --steps 30
    python3 benchmarks/train_graph.py --dry-run            # the CPU, tiny shapes, eager only: checks the script

Both modes run train_one_epoch, the loop `vmbench run` trains with (AdamW with no decay on 1-d parameters,
per-step cosine lr, clipping at --clip, label smoothing 0.1, bf16 autocast), from the same seed over the same
--steps batches of random images already on the GPU: --warmup steps first (the graph mode warms up and captures
there), then --repeats timed passes; img/s = images / the loop's own train_time_s (host time included, the loop
syncs at the end of a pass), median over the passes. Peak memory is torch.cuda.max_memory_allocated over the
whole mode. The last pass's mean loss is printed for both modes (same data, same steps: they agree to bf16
rounding). Prints a markdown table and, with $OUT set, writes $OUT/train_graph.md / .json.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import save  # noqa: E402  (benchmarks/, the script's own folder)


def _batches(n: int, batch: int, res: int, classes: int, device) -> list:
    import torch

    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, res, res, generator=g).to(device),
             torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(n)]


def time_training(name: str, graphed: bool, batches: list, res: int, device, args) -> dict:
    """{img_s (median), img_s_runs, peak_gb, loss (last pass)} of `name` trained by train_one_epoch."""
    import torch
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from vmbench.engine.graphed_step import GraphedStep, capturable_optimizer_kwargs
    from vmbench.engine.train import ClassificationObjective, param_groups, seed_everything, train_one_epoch
    from vmbench.models import create_model, model_entry

    seed_everything(0)
    model = create_model(name, num_classes=args.classes, drop_path_rate=0.0,
                         img_size=res if model_entry(name).source == "timm" else None).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    extra = capturable_optimizer_kwargs("adamw") if graphed else {}
    optimizer = create_optimizer_v2(param_groups(model, 0.05), opt="adamw", lr=1e-3, weight_decay=0.05, **extra)
    total = args.warmup + args.repeats * len(batches)
    sched = CosineLRScheduler(optimizer, t_initial=total, lr_min=1e-5, warmup_t=0, t_in_epochs=False)
    amp = device.type == "cuda"
    objective = ClassificationObjective(label_smoothing=0.1, channels_last=args.channels_last)
    graph = GraphedStep(model, optimizer, objective, device, amp=amp, clip_grad=args.clip) if graphed else None
    kw = dict(scheduler=sched, amp=amp, clip_grad=args.clip, objective=objective, graph=graph)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = train_one_epoch(model, batches[:args.warmup], optimizer, device, **kw)["steps"]
    runs, loss = [], None
    for _ in range(args.repeats):
        r = train_one_epoch(model, batches, optimizer, device, start_step=step, **kw)
        step += r["steps"]
        runs.append(r["images"] / r["train_time_s"])
        loss = r["train_loss"]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer, graph
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(img_s=statistics.median(runs), img_s_runs=runs, peak_gb=peak, loss=loss)


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def to_markdown(rows: list[dict], peer: str, head: str) -> str:
    by = {r["model"]: r for r in rows}
    p = by.get(peer, {})
    lines = [head, "", "| model | eager img/s | graphed img/s | graphed / eager | eager × " + peer + " | graphed × " + peer
             + " | peak GB eager / graphed | loss eager / graphed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, g = r["eager"]["img_s"], (r.get("graph") or {}).get("img_s")
        pe, pg = (p.get("eager") or {}).get("img_s"), (p.get("graph") or {}).get("img_s")
        lines.append(
            f"| {r['model']} | {e:.0f} | {_f(g, '.0f')} | {_x(g / e if g else None)} "
            f"| {_x(e / pe if pe else None)} | {_x(g / pg if g and pg else None)} "
            f"| {_f(r['eager']['peak_gb'], '.1f')} / {_f((r.get('graph') or {}).get('peak_gb'), '.1f')} "
            f"| {r['eager']['loss']:.4f} / {_f((r.get('graph') or {}).get('loss'), '.4f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vmamba_t,swin_t")
    ap.add_argument("--peer", default="swin_t")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20, help="batches per timed pass")
    ap.add_argument("--warmup", type=int, default=8, help="steps before timing (graph: 3 eager, capture, replays)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="the CPU, tiny shapes, eager only (times mean nothing)")
    args = ap.parse_args(argv)
    import torch

    if args.dry_run:
        device = torch.device("cpu")
        args.batch, args.res, args.steps, args.warmup, args.repeats, args.classes = 2, 32, 2, 1, 1, 10
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = _batches(args.steps, args.batch, args.res, args.classes, device)
    rows = []
    for name in models:
        row = dict(model=name, eager=time_training(name, False, batches, args.res, device, args))
        if device.type == "cuda":
            row["graph"] = time_training(name, True, batches, args.res, device, args)
        rows.append(row)
        print(name, {k: (v["img_s"] if isinstance(v, dict) else v) for k, v in row.items()}, flush=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    head = (f"Training step, vmbench's loop (AdamW, cosine, clip {args.clip}): eager vs --cuda-graph; {card}, "
            f"torch {torch.__version__}, batch {args.batch}, {args.res}², "
            f"{'AMP-bf16' if device.type == 'cuda' else 'fp32'}{', channels-last' if args.channels_last else ''}; "
            f"median of {args.repeats} passes of {args.steps} steps")
    text = to_markdown(rows, args.peer, head)
    print(text)
    save("train_graph", text, dict(args=vars(args), card=card, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
