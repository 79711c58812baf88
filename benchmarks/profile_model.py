"""Where a model's time goes on CUDA: torch.profiler over inference and training steps.

    python benchmarks/profile_model.py [--model vmamba_t] [--batch 128] [--res 224] [--top 30] [--compile]
                                       [--infer-only | --train-only] [--fusions default]

AMP-bf16, channels-last input, random data. Prints, for inference (no grad) and for a training step
(forward + cross-entropy + backward, no optimizer), the CUDA kernels sorted by total time with their
share of the step, and the step's wall-clock time (a step slower than its GPU time is bound by the host);
--host adds the host-side self time per op; --python adds cProfile's tables of the Python functions that
take the host's time in an inference and a training step (Triton's launcher, our wrappers, autograd) and the
step's wall time in the setups that differ between this script and benchmarks/models.py (model in
channels_last memory or not; inference under no_grad or inference_mode). --compile profiles
torch.compile(model) (default mode; the first calls compile, untimed). Any model of the registry (swin_t, ...).
VMamba's CUDA-graph replays are off here: every kernel is listed, and the wall time is the eager call's.
Writes the tables to $OUT/profile_<model>[_compiled].md when $OUT is set.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import FUSIONS, fusion_switch, save, valid_fusion  # noqa: E402  (benchmarks/, the script's own folder)

import torch
import torch.nn.functional as F


def _table(prof, steps: int, top: int, host: bool = False) -> str:
    """Per op, sorted: GPU kernels by their time, or (host=True) host-side ops by their self CPU time (Python,
    dispatch and launch: the eager-mode cost). GPU rows are the kernels themselves, never the CPU ops that
    launched them, so nothing is counted twice when host activity is profiled too."""
    from torch.autograd import DeviceType

    def spent(e):
        if host:
            return e.self_cpu_time_total
        if e.device_type == DeviceType.CPU:  # a host op: its kernels have rows of their own
            return 0
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))

    events = [e for e in prof.key_averages() if e.key and not e.key.startswith("ProfilerStep") and spent(e) > 0]
    total = sum(spent(e) for e in events)
    events.sort(key=spent, reverse=True)
    what = "host time per step {:.2f} ms (sum of op self CPU times)" if host else \
        "GPU time per step {:.2f} ms (sum of kernel times)"
    lines = [what.format(total / steps / 1e3), "",
             f"| {'op' if host else 'kernel'} | {'host ' if host else ''}ms per step | share | calls per step |",
             "|---|---|---|---|"]
    for e in events[:top]:
        lines.append(f"| {e.key[:90]} | {spent(e) / steps / 1e3:.3f} | {100 * spent(e) / total:.1f}% | "
                     f"{e.count / steps:.0f} |")
    return "\n".join(lines)


def _wall_ms(fn, steps: int) -> float:
    """Wall-clock ms per call of `fn` over `steps` calls, after 3 untimed ones (GPU synchronised around)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def _infer_step(model, x, grad_mode=torch.no_grad):
    with grad_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)


def _train_step(model, x, target):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    F.cross_entropy(out.float(), target).backward()


def _python_profile(fn, label: str, steps: int, top: int) -> str:
    """cProfile over `steps` calls of `fn`: the Python functions with the most own (tottime) time per step."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    pr = cProfile.Profile()
    # The backward runs on this thread (not autograd's device thread, which cProfile does not see).
    with torch.autograd.set_multithreading_enabled(False):
        pr.enable()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        pr.disable()
    st = pstats.Stats(pr)
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    total = sum(v[2] for v in st.stats.values())
    lines = [f"### {label}, Python profile (cProfile): {total / steps * 1e3:.1f} ms of own time per step",
             "", "| function | own ms per step | cumulative ms per step | calls per step |", "|---|---|---|---|"]
    for (file, line, name), (_cc, ncalls, tt, ct, _callers) in rows:
        where = f"{os.path.basename(os.path.dirname(file))}/{os.path.basename(file)}:{line}" if line else file
        lines.append(f"| {name} ({where}) | {tt / steps * 1e3:.3f} | {ct / steps * 1e3:.3f} | {ncalls / steps:.0f} |")
    return "\n".join(lines)


def _setups(args, x, steps: int) -> str:
    """Wall ms per step of fresh models in the setups this script and benchmarks/models.py differ in."""
    from vmbench.models import create_model

    lines = ["### setups (wall ms per step, unprofiled)", "",
             "| model memory | input | inference no_grad | inference inference_mode | training step |",
             "|---|---|---|---|---|"]
    target = torch.randint(1000, (args.batch,), device="cuda")
    for cl in (True, False):
        model = create_model(args.model, num_classes=1000).cuda()
        if cl:
            model = model.to(memory_format=torch.channels_last)
        xi = x if cl else x.contiguous()
        model.eval()
        res = []
        for ctx in (torch.no_grad, torch.inference_mode):
            res.append(_wall_ms(lambda: _infer_step(model, xi, ctx), steps))
        model.train()
        res.append(_wall_ms(lambda: _train_step(model, xi, target), steps))
        lines.append(f"| {'channels_last' if cl else 'contiguous'} | {'channels_last' if cl else 'contiguous'} | "
                     + " | ".join(f"{r:.2f}" for r in res) + " |")
        model = None
        torch.cuda.empty_cache()
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vmamba_t")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--ln-backend", choices=("auto", "torch", "triton"), default=None,
                    help="override the backend of vmbench LayerNorm modules (comparisons)")
    ap.add_argument("--compile", action="store_true", help="profile torch.compile(model) (default mode)")
    ap.add_argument("--host", action="store_true", help="also profile host (CPU) time per op: launch overhead")
    ap.add_argument("--python", action="store_true",
                    help="also cProfile the Python of an inference and a training step, and time the setups "
                         "models.py differs in")
    ap.add_argument("--fusions", default="default",
                    help=f"which of VMamba's fused kernels and compiled-graph ops run: one of {', '.join(FUSIONS)}, "
                         "or names joined by + (as peers.py --fusions)")
    ap.add_argument("--infer-only", action="store_true", help="profile inference only, no training step")
    ap.add_argument("--train-only", action="store_true", help="profile the training step only")
    args = ap.parse_args(argv)
    if not valid_fusion(args.fusions):
        ap.error(f"--fusions takes one of {', '.join(FUSIONS)} (or names joined by +)")
    if args.infer_only and args.train_only:
        ap.error("--infer-only and --train-only exclude each other")
    if args.python and args.compile:
        ap.error("--python profiles the eager model's Python; drop --compile")
    if not torch.cuda.is_available():
        print("benchmarks/profile_model.py needs CUDA", file=sys.stderr)
        return 2
    from torch.profiler import ProfilerActivity, profile

    from vmbench.models import create_model

    fusion_switch()(args.fusions)

    torch.backends.cudnn.benchmark = True
    model = create_model(args.model, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    if args.ln_backend:
        from vmbench.kernels import LayerNorm

        for m in model.modules():
            if isinstance(m, LayerNorm):
                m.backend = args.ln_backend
    x = torch.randn(args.batch, 3, args.res, args.res, device="cuda").to(memory_format=torch.channels_last)
    target = torch.randint(1000, (args.batch,), device="cuda")
    if getattr(model, "graph_replay", None) is not None:
        model.graph_replay.enabled = False  # every kernel in the profile, not graph launches
    run = torch.compile(model) if args.compile else model

    def infer():
        _infer_step(run, x)

    def train():
        _train_step(run, x, target)

    md = [f"# {args.model}{' (torch.compile)' if args.compile else ''}, batch {args.batch}, {args.res}², AMP-bf16 — "
          f"{torch.cuda.get_device_name()}"
          + (f" (LayerNorm backend {args.ln_backend})" if args.ln_backend else "")
          + (f" (fusions: {args.fusions})" if args.fusions != "default" else "")]
    steps = 5
    parts = (("inference", infer), ("training step", train))
    for name, fn in parts[1 if args.train_only else 0:1 if args.infer_only else 2]:
        model.train(name != "inference")
        torch.cuda.reset_peak_memory_stats()
        wall = _wall_ms(fn, steps)
        peak = torch.cuda.max_memory_allocated() / 1e9
        acts = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.host else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                fn()
            torch.cuda.synchronize()
        md += ["", f"## {name}: {wall:.2f} ms per step wall-clock (unprofiled), peak {peak:.2f} GB", "",
               _table(prof, steps, args.top)]
        if args.host:
            md += ["", _table(prof, steps, args.top, host=True)]
        print("\n".join(md[-5:]), flush=True)
    if args.python:
        model.eval()
        md += ["", _python_profile(lambda: _infer_step(model, x, torch.inference_mode), "inference (inference_mode)",
                                   steps, args.top)]
        model.train()
        md += ["", _python_profile(train, "training step", steps, args.top), "", _setups(args, x, steps)]
        print("\n".join(md[-5:]), flush=True)
    save(f"profile_{args.model}" + (f"_ln-{args.ln_backend}" if args.ln_backend else "")
         + (f"_fuse-{args.fusions}" if args.fusions != "default" else "")
         + ("_compiled" if args.compile else ""), "\n".join(md))
    return 0


if __name__ == "__main__":
    from vmbench.kernels import frozen_parameters

    # No step here changes a parameter (no optimizer): inference keeps SS2D's kernel-form parameters between
    # steps, as in models.py's timed loops and in an evaluation pass.
    with frozen_parameters():
        sys.exit(main())
