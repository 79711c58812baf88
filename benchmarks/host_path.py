"""Host time of the eager kernel wrappers (CPU, no GPU needed): what a call costs before the GPU sees it.

    python benchmarks/host_path.py [--repeats 2000]

Eager VMamba at batch 128 on a fast GPU is bound by its host (benchmarks/RESULTS.md: the profile of the
LayerNorm and SS2D Functions), so the Python between a module call and its kernel launches matters. This
script times that Python on tiny CPU tensors with every Triton launch replaced by a no-op (Triton's
interpreter is loaded and its `run` stubbed), so what it measures is our wrappers plus the torch ops they
issue (allocations, views, the small GEMMs of SS2D on tiny shapes), not Triton's own launcher (counted
separately, as launches per call; its cost per launch shows in `profile_model.py --python` on a GPU). The
module rows run inside `vmbench.kernels.frozen_parameters()`, as vmbench's evaluation pass and benchmarks
do; the whole-model rows time VMamba-T (full depth, 32² input, CPU autocast bf16) as a user's plain call
(`torch.no_grad()` + autocast) and as vmbench's bench path (inference_mode + `frozen_parameters()`), and count
the aten ops each issues (torch profiler): those two must stay equal. A plain `torch.add` of two tiny tensors
and `nn.LayerNorm` are timed as the unit of one dispatched op.
Numbers are this machine's; compare versions in one run (`git worktree add DIR REV`, then run
DIR/benchmarks/host_path.py beside this one).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the kernels become interpreted functions
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

import torch  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

LAUNCHES = [0]


def _no_launch(self, *args, **kwargs):
    LAUNCHES[0] += 1


def _us(fn, repeats: int) -> tuple[float, float]:
    """(µs of CPU time per call, the fastest of 10 rounds; Triton launches per call)."""
    for _ in range(20):
        fn()
    rounds = []
    n = max(1, repeats // 10)
    for _ in range(10):
        LAUNCHES[0] = 0
        t0 = time.thread_time()  # this thread's CPU time: less disturbed than the wall clock by other work
        for _ in range(n):
            fn()
        rounds.append((time.thread_time() - t0) / n * 1e6)
    return min(rounds), LAUNCHES[0] / n


def aten_ops(fn) -> int:
    """aten ops (every level of the dispatcher) that one call of `fn` issues, by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args(argv)
    InterpretedFunction.run = _no_launch
    torch.set_num_threads(1)

    from vmbench.kernels import LayerNorm, _ss2d_map_triton, frozen_parameters
    from vmbench.models.vmamba import SS2D

    # one image of 32² takes the SS2D route a batch of 128 at 224² takes (the map layout; _ss2d_map_triton.takes_map)
    _ss2d_map_triton.MAP_CONFIG["min_programs"] = 0

    a, b = torch.randn(8), torch.randn(8)
    x = torch.randn(1, 4, 4, 96)
    ln = LayerNorm(96, autocast_out=True, backend="triton")
    ref_ln = torch.nn.LayerNorm(96)
    ss2d = SS2D(96, scan_backend="triton")
    xg = x.clone().requires_grad_(True)

    def ln_train():
        ln(xg).sum().backward()

    def ss2d_train():
        ss2d(xg).sum().backward()

    rows = []
    with torch.inference_mode(), frozen_parameters():  # as in an evaluation pass or a benchmark's timed loop
        rows += [("torch.add (one dispatched op)", *_us(lambda: torch.add(a, b), args.repeats)),
                 ("nn.LayerNorm forward", *_us(lambda: ref_ln(x), args.repeats)),
                 ("LayerNorm forward (inference_mode)", *_us(lambda: ln(x), args.repeats)),
                 ("SS2D module forward (inference_mode)", *_us(lambda: ss2d(x), args.repeats // 4))]
    rows += [("LayerNorm forward + backward", *_us(ln_train, args.repeats // 4)),
             ("SS2D module forward + backward", *_us(ss2d_train, args.repeats // 8))]

    from vmbench.models.vmamba import vmamba_t

    model = vmamba_t(scan_backend="triton", num_classes=10).eval()
    img = torch.randn(1, 3, 32, 32)

    def plain():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            model(img)

    def bench():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            model(img)

    ops = {"VMamba-T forward, plain call (no_grad)": aten_ops(plain)}
    rows.append(("VMamba-T forward, plain call (no_grad)", *_us(plain, args.repeats // 40)))
    with frozen_parameters():
        ops["VMamba-T forward, bench path (inference_mode, frozen)"] = aten_ops(bench)
        rows.append(("VMamba-T forward, bench path (inference_mode, frozen)", *_us(bench, args.repeats // 40)))
    unit = rows[0][1]
    print(f"Host time per call, CPU ({torch.__version__}), Triton launches stubbed; 'adds' = the time in units of "
          "one torch.add measured in the same run (steadier across runs than µs on a shared machine)\n")
    print("| call | µs per call | adds | Triton launches per call | aten ops per call |\n|---|---|---|---|---|")
    for name, us, launches in rows:
        print(f"| {name} | {us:.1f} | {us / unit:.0f} | {launches:.0f} | {ops.get(name, '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
