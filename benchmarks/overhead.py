"""Framework overhead and data-pipeline speed of `vmbench run`'s training loop, on CUDA.

    python benchmarks/overhead.py [--model vmamba_t] [--batch 128] [--steps 30] [--repeats 5] [--workers 12]

1. Training step. vmbench's `train_one_epoch` (the loop `vmbench run` drives: autocast, loss and accuracy
   sums, the non-finite-loss check, progress hook) against a bare loop (forward, cross-entropy, backward,
   AdamW step, zero_grad) on the same model, batch, precision (AMP-bf16), optimizer and the same batches,
   already on the GPU, so the loops are all that differs. Alternating repeats, median img/s of each.
2. Data pipeline. ImageNet-like JPEGs (500x375; --unique distinct files written once to a temp folder, hard-linked
   up to --images files) through vmbench's loaders (decode, random-resized crop to 224, flip, normalise, pinned
   memory) with --workers processes, and the `fake` dataset's loader: steady-state img/s of the loader alone, to
   set against the training step's img/s. The first 2 x workers batches are not timed: the workers make their
   first batches in parallel during start-up, so counting them would overstate the rate.

Prints a markdown table; writes it to $OUT/overhead.md when $OUT is set.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import save  # noqa: E402  (benchmarks/, the script's own folder)

import torch
import torch.nn.functional as F


def _write_jpegs(args: tuple[str, int, int]) -> None:
    from PIL import Image

    folder, start, count = args
    g = torch.Generator().manual_seed(start)
    for i in range(start, start + count):
        cls = f"c{i % 10}"
        os.makedirs(os.path.join(folder, "train", cls), exist_ok=True)
        img = (torch.rand(375 // 15, 500 // 20, 3, generator=g) * 255).to(torch.uint8)  # blocky, JPEG-typical size
        img = img.repeat_interleave(15, 0).repeat_interleave(20, 1).numpy()
        Image.fromarray(img).save(os.path.join(folder, "train", cls, f"{i}.jpg"), quality=90)


def image_folder(root: str, n: int, unique: int, procs: int) -> str:
    """n JPEG files in 10 classes: `unique` distinct images (a spawn pool writes them, since forking a process that
    has initialised CUDA or thread pools can deadlock the children), hard-linked to make up n files."""
    import multiprocessing

    unique = min(unique, n)
    per = -(-unique // procs)
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_write_jpegs, [(root, s, min(per, unique - s)) for s in range(0, unique, per)]))
    for i in range(unique, n):  # file i is a link to file i mod unique, in the same class
        src = i % unique
        os.link(os.path.join(root, "train", f"c{src % 10}", f"{src}.jpg"),
                os.path.join(root, "train", f"c{src % 10}", f"{i}.jpg"))
    for cls in range(10):  # a val split so the folder is a dataset; not timed
        os.makedirs(os.path.join(root, "val", f"c{cls}"), exist_ok=True)
        os.link(os.path.join(root, "train", f"c{cls}", f"{cls}.jpg"), os.path.join(root, "val", f"c{cls}", "0.jpg"))
    return root


def loader_img_s(loader, workers: int) -> tuple[float, int]:
    """Steady-state img/s over one pass of `loader`, and the number of batches timed."""
    it = iter(loader)
    for _ in range(max(1, 2 * workers)):  # start-up, and the batches the workers made in parallel during it
        next(it)
    n, timed, t0 = 0, 0, time.perf_counter()
    for x, _ in it:
        n += x.shape[0]
        timed += 1
    assert timed >= 2 * workers, f"too few batches to time ({timed}): raise --images"
    return n / (time.perf_counter() - t0), timed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vmamba_t")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--images", type=int, default=12288, help="JPEG files of the data-pipeline test")
    ap.add_argument("--unique", type=int, default=1024, help="distinct JPEGs among them (the rest are links)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/overhead.py needs CUDA", file=sys.stderr)
        return 2
    from timm.optim import create_optimizer_v2

    from vmbench.data import build_loaders, get_dataset_info
    from vmbench.engine.train import train_one_epoch
    from vmbench.models import create_model

    tmp = tempfile.TemporaryDirectory()  # the JPEGs are written first, before this process touches CUDA
    procs = max(1, min(16, os.cpu_count() or 1))
    t0 = time.perf_counter()
    root = image_folder(os.path.join(tmp.name, "jpegs"), args.images, args.unique, procs)
    made = time.perf_counter() - t0
    print(f"wrote {args.unique} JPEGs ({args.images} files) in {made:.1f} s", flush=True)

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = create_model(args.model, num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-4, weight_decay=0.05)
    g = torch.Generator(device=dev).manual_seed(0)
    batches = [(torch.randn(args.batch, 3, 224, 224, device=dev, generator=g).contiguous(
        memory_format=torch.channels_last), torch.randint(1000, (args.batch,), device=dev, generator=g))
        for _ in range(4)]
    feed = [batches[i % len(batches)] for i in range(args.steps)]

    def bare():
        for x, y in feed:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    def vmbench_loop():
        train_one_epoch(model, feed, opt, dev, amp=True, progress=lambda *a: None)

    def timed(fn) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return args.steps * args.batch / (time.perf_counter() - t0)

    for fn in (bare, vmbench_loop, bare, vmbench_loop):  # compile kernels, cuDNN algorithms, optimizer state, clocks
        fn()
    rates = {"bare": [], "vmbench": []}
    for _ in range(args.repeats):
        rates["bare"].append(timed(bare))
        rates["vmbench"].append(timed(vmbench_loop))
    bare_s, vm_s = statistics.median(rates["bare"]), statistics.median(rates["vmbench"])
    each = {k: ", ".join(f"{r:.0f}" for r in v) for k, v in rates.items()}
    print(f"bare {each['bare']} img/s, vmbench {each['vmbench']} img/s", flush=True)
    card = torch.cuda.get_device_name()
    lines = [f"# vmbench training-loop overhead and data pipeline — {card}, torch {torch.__version__}", "",
             f"{args.model}, batch {args.batch}, 224², AMP-bf16, AdamW; {args.steps} steps × {args.repeats} "
             "alternating repeats, median.", "",
             "| loop | img/s (median) | each repeat | vs bare |", "|---|---|---|---|",
             f"| bare (fwd, CE, bwd, AdamW step) | {bare_s:.0f} | {each['bare']} | 1.000 |",
             f"| vmbench train_one_epoch | {vm_s:.0f} | {each['vmbench']} | {vm_s / bare_s:.3f} "
             f"(overhead {100 * (1 - vm_s / bare_s):.1f} %) |",
             ""]
    feed.clear()  # free the GPU batches before the loader tests
    batches.clear()
    torch.cuda.empty_cache()

    rows = []
    with tmp:
        info = get_dataset_info(root)
        for workers in sorted({max(1, args.workers // 2), args.workers}):
            train_loader, _ = build_loaders(info, args.batch, 224, num_workers=workers,
                                            model_cfg=getattr(model, "pretrained_cfg", None))
            rows.append((f"JPEG folder (500×375 → RRC 224, flip), {workers} workers",
                         *loader_img_s(train_loader, workers)))
            print(rows[-1], flush=True)
        fake = get_dataset_info(f"fake:{args.images}")
        train_loader, _ = build_loaders(fake, args.batch, 224, num_workers=args.workers)
        rows.append((f"fake:{args.images} (random tensors), {args.workers} workers",
                     *loader_img_s(train_loader, args.workers)))
    lines += [f"Data pipeline ({args.images} JPEG files, {args.unique} distinct; {os.cpu_count()} CPU cores; "
              f"batch {args.batch}):", "",
              "| loader | img/s | batches timed | vs vmbench training step |", "|---|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {timed} | {rate / vm_s:.2f}× |" for name, rate, timed in rows]
    text = "\n".join(lines)
    print(text)
    save("overhead", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
