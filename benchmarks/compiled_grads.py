"""Does a compiled VMamba training step compute eager's gradients? Per parameter, on a GPU, for `--fusions` sets.

    python3 benchmarks/compiled_grads.py                                  # defaults, autocast-bf16 and fp32
    python3 benchmarks/compiled_grads.py --fusions default,mlp+ffn+conv+gelu+convop --amp bf16

A small VMamba (dims 32, depths 1-1-2-1, batch 4, 64², Triton path, channels_last, no drop path, graph replays off)
takes one eager step, a second eager step (the run-to-run spread, 0 when deterministic) and one
`torch.compile(fullgraph=True)` step per set. For each it prints the losses, how many parameters' gradients differ
from eager's by more than `--tol` (relative L2 norm) and the worst few. Exit code 1 when any set exceeds `--tol`.
With $OUT set, writes $OUT/<name>.json. `--device cpu` runs the torch scan path on the CPU (checks the script).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import FUSIONS, fusion_switch, save, valid_fusion  # noqa: E402  (benchmarks/, the script's own folder)


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖ (1.0 when a is all zeros); nan when only one of them is None."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fusions", default="default,mlp+ffn+conv+gelu+convop", help="comma-separated sets, as "
                    "peers.py --fusions")
    ap.add_argument("--amp", default="bf16,fp32", help="bf16, fp32 or both: the step under autocast-bf16 or not")
    ap.add_argument("--tol", type=float, default=0.05, help="largest relative gradient error that passes")
    ap.add_argument("--worst", type=int, default=4, help="list this many of the worst parameters")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--name", default="compiled_grads", help="$OUT/<name>.json")
    args = ap.parse_args(argv)
    fusions, amps = args.fusions.split(","), args.amp.split(",")
    if not all(valid_fusion(f) for f in fusions):
        ap.error(f"--fusions takes a comma-separated list of {', '.join(FUSIONS)} (or names joined by +)")
    if not amps or set(amps) - {"bf16", "fp32"}:
        ap.error("--amp takes bf16, fp32 or bf16,fp32")
    import torch
    import torch.nn.functional as F

    from vmbench.models.vmamba import _create_vmamba

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = _create_vmamba(dict(dims=32, depths=(1, 1, 2, 1)), num_classes=10,
                           scan_backend="triton" if dev.type == "cuda" else "torch", drop_path_rate=0.0)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    model.graph_replay.enabled = False
    x = torch.randn(4, 3, 64, 64, device=dev).to(memory_format=torch.channels_last)
    target = torch.tensor([3, 8, 1, 0], device=dev)
    names = [n for n, _ in model.named_parameters()]

    def step(fn, amp: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(fn(x).float(), target)
        loss.backward()
        return loss.item(), [None if p.grad is None else p.grad.float().clone() for p in model.parameters()]

    use_fusion, rows, failed = fusion_switch(), [], False
    for amp in amps:
        for fuse in fusions:
            use_fusion(fuse)
            loss, eager = step(model, amp == "bf16")
            _, again = step(model, amp == "bf16")
            torch._dynamo.reset()
            loss_c, comp = step(torch.compile(model, fullgraph=True), amp == "bf16")
            errs = sorted(((rel(c, e), n) for c, e, n in zip(comp, eager, names)), key=lambda t: -t[0])
            bad = sum(not e <= args.tol for e, _ in errs)  # nan counts as bad
            failed |= bad > 0
            rows.append(dict(amp=amp, fusions=fuse, loss_eager=loss, loss_compiled=loss_c, bad=bad,
                             spread=max(rel(a, b) for a, b in zip(again, eager)), worst=errs[:args.worst]))
            print(f"amp {amp}, fusions {fuse}: loss eager {loss:.5f} compiled {loss_c:.5f}; {bad} of {len(errs)} "
                  f"gradients off by > {args.tol:g} (eager's own spread {rows[-1]['spread']:.1e}); worst: "
                  + ", ".join(f"{n} {e:.2e}" for e, n in errs[:args.worst]), flush=True)
    use_fusion("default")
    save(args.name, data={"torch": torch.__version__, "args": vars(args), "rows": rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
