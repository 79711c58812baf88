"""Data-parallel scaling of `vmbench run --gpus N`: training img/s with 1, 2, … GPUs of one host.

    python benchmarks/ddp_scaling.py [--model vmamba_t] [--gpus 1,2] [--batch 128] [--images 16384] [--epochs 3]

Each point is one real `vmbench run MODEL fake:IMAGES --device cuda --amp --gpus N` (torchrun + DDP for N >= 2)
with the same per-GPU batch, so N GPUs run 1/N of the steps per epoch. The figure is the run's own per-epoch
`train_img_s` (all ranks' images over the slowest rank's training time, recorded in the store), the median over
epochs 2.. (epoch 1 pays for kernel compilation and cuDNN's algorithm search). Scaling efficiency =
img/s(N) / (N × img/s(1)).

Prints a markdown table; writes it to $OUT/ddp_scaling.md when $OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _shared import save  # benchmarks/, the script's own folder


def run_point(args, gpus: int, db: str) -> dict:
    cmd = [sys.executable, "-m", "vmbench.cli", "run", args.model, f"fake:{args.images}", "--device", "cuda", "--amp",
           "--batch-size", str(args.batch), "--epochs", str(args.epochs), "--workers", str(args.workers),
           "--max-val-batches", "1", "--gpus", str(gpus), "--db", db, "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    run_id = json.loads(p.stdout)["id"]
    shown = subprocess.run([sys.executable, "-m", "vmbench.cli", "show", str(run_id), "--db", db, "--json"],
                           capture_output=True, text=True, check=True)
    epochs = [m for m in json.loads(shown.stdout)["metrics"] if m.get("epoch") is not None]
    rates = [m["train_img_s"] for m in sorted(epochs, key=lambda m: m["epoch"])]
    return dict(gpus=gpus, rates=rates, img_s=statistics.median(rates[1:] or rates), wall_s=wall,
                peak_mb=max(m["peak_mem_mb"] or 0 for m in epochs), cmd=" ".join(cmd[3:-3]))  # without --db TMP --json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vmamba_t")
    ap.add_argument("--gpus", default="1,2", help="comma-separated process counts")
    ap.add_argument("--batch", type=int, default=128, help="per-GPU batch")
    ap.add_argument("--images", type=int, default=16384, help="training images per epoch (fake:IMAGES)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=6, help="loader workers per process")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/ddp_scaling.py needs CUDA", file=sys.stderr)
        return 2
    card, n_cards = torch.cuda.get_device_name(), torch.cuda.device_count()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for g in (int(x) for x in args.gpus.split(",")):
            if g > n_cards:
                print(f"skipping --gpus {g}: {n_cards} GPU(s) visible", file=sys.stderr)
                continue
            points.append(run_point(args, g, os.path.join(tmp, f"g{g}.db")))
            print(points[-1], flush=True)
    base = next((p["img_s"] for p in points if p["gpus"] == 1), None)
    lines = [f"# `vmbench run --gpus N` scaling — {n_cards}× {card}, torch {torch.__version__}", "",
             f"{args.model}, fake:{args.images}, batch {args.batch} per GPU, AMP-bf16, {args.workers} loader workers "
             f"per process, {args.epochs} epochs; img/s = median of the per-epoch train_img_s over epochs 2..", "",
             "| GPUs | img/s | per-epoch img/s | speed-up | efficiency | peak MB (rank 0) | run wall s |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        up = p["img_s"] / base if base else float("nan")
        lines.append(f"| {p['gpus']} | {p['img_s']:.0f} | {', '.join(f'{r:.0f}' for r in p['rates'])} | "
                     f"{up:.2f}× | {up / p['gpus']:.2f} | {p['peak_mb']:.0f} | {p['wall_s']:.0f} |")
    lines += ["", "Command per point: `vmbench " + (points[-1]["cmd"] if points else "") + "`"]
    text = "\n".join(lines)
    print(text)
    save("ddp_scaling", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
