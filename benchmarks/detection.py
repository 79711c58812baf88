"""Mask R-CNN training speed and memory per backbone: one epoch of shapes-det at 800 x 1333, side by side.

    python benchmarks/detection.py [--models vmamba_t,swin_t] [--images 128] [--batch 2] [--size 800x1333]

Each backbone gets the same Mask R-CNN (vmbench.engine.detection.build_detector: FPN, torchvision heads, the
detector's own resize to shorter side 800 / longer <= 1333), AdamW, bf16 autocast, and one epoch of `images`
shapes-det images drawn at H x W, through vmbench's training loop (train_one_epoch + DetectionObjective) with
the automatic loader workers. img/s = images / epoch time after one untimed warm-up epoch of 4 batches; peak
memory = torch.cuda.max_memory_allocated over the timed epoch. `--dry-run`: 4 images at 97 x 131 on the CPU
(checks the script; its numbers mean nothing).

Prints a markdown table; writes it to $OUT/detection.md (and .json) when $OUT is set.
"""
from __future__ import annotations

import argparse
import time

from _shared import save  # benchmarks/, the script's own folder


def one(name: str, args, device) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset

    from vmbench.data import ShapesDetDataset, detection_collate, get_dataset_info, resolve_workers
    from vmbench.engine.detection import DetectionObjective, build_detector
    from vmbench.engine.train import train_one_epoch
    from vmbench.models import create_model
    from vmbench.models.features import size_free_kwargs

    h, w = args.hw
    torch.manual_seed(0)
    backbone = create_model(name, num_classes=10, drop_path_rate=0.2, **size_free_kwargs(name))
    det = build_detector(backbone, 10, min_size=min(h, w), max_size=max(h, w)).to(device)
    opt = torch.optim.AdamW(det.parameters(), lr=1e-4, weight_decay=0.05)
    ds = ShapesDetDataset("train", args.images, (h, w), hflip=True)
    workers = resolve_workers(None, device.type, get_dataset_info("shapes-det"))
    kw = dict(batch_size=args.batch, shuffle=True, collate_fn=detection_collate, num_workers=workers,
              persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    amp = device.type == "cuda"
    train_one_epoch(det, DataLoader(Subset(ds, range(min(4 * args.batch, args.images))), **kw), opt, device,
                    amp=amp, objective=DetectionObjective())  # warm-up: cuDNN search, allocator, first draws
    loader = DataLoader(ds, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr = train_one_epoch(det, loader, opt, device, amp=amp, objective=DetectionObjective())
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return dict(model=name, img_s=tr["images"] / dt, step_img_s=tr["images"] / max(dt - tr["data_wait_s"], 1e-9),
                data_wait_s=tr["data_wait_s"], peak_mem_mb=peak, loss=tr["train_loss"], images=tr["images"],
                workers=workers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vmamba_t,swin_t")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", default="800x1333", help="H x W of the generated images")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    import torch

    if args.dry_run:
        args.images, args.batch, args.size = 4, 2, "97x131"
    args.hw = tuple(int(v) for v in args.size.lower().split("x"))
    device = torch.device("cpu" if args.dry_run else "cuda")
    rows = [one(m, args, device) for m in args.models.split(",")]
    ref = rows[-1]["img_s"]
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    lines = [f"Mask R-CNN training, shapes-det {args.hw[0]}x{args.hw[1]}, batch {args.batch}, {args.images} images, "
             f"AdamW, bf16 autocast, {gpu}", "",
             "| backbone | img/s | vs last row | img/s without data wait | data wait (s) | peak memory (MB) | loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        lines.append(f"| {r['model']} | {r['img_s']:.2f} | {r['img_s'] / ref:.2f}x | {r['step_img_s']:.2f} | "
                     f"{r['data_wait_s']:.2f} | {mem} | {r['loss']:.3f} |")
    text = "\n".join(lines)
    print(text)
    save("detection", text, rows)


if __name__ == "__main__":
    main()
