"""The paper suite: VMamba-T/S/B against Swin, ConvNeXt and Res2Net, measured in one process on one device.

    python benchmarks/models.py                         # all sections, all paper models
    python benchmarks/models.py --sections infer,train  # a subset
    python benchmarks/models.py --quick                 # vmamba_t / swin_t / convnext_t only, 3 repeats
    python benchmarks/models.py --quick --sections infer,train,graph   # eager and CUDA-graph replays
Same as `vmbench bench --suite paper`. Prints markdown; with $OUT set (the device machine) also writes
$OUT/<name>.md and $OUT/<name>.json (--name, default models).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import save  # noqa: E402  (benchmarks/, the script's own folder)

from vmbench.engine.suite import PAPER_MODELS, SECTIONS, run_suite, summary, to_markdown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(PAPER_MODELS))
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scan-backend", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="vmamba_t, swin_t, convnext_t; 3 repeats")
    ap.add_argument("--name", default="models", help="$OUT/<name>.md and <name>.json")
    args = ap.parse_args(argv)
    models = ["vmamba_t", "swin_t", "convnext_t"] if args.quick else args.models.split(",")
    repeats = 3 if args.quick else args.repeats

    def log(row):
        print(json.dumps(row), file=sys.stderr, flush=True)

    rows = run_suite(models, args.sections.split(","), device=args.device, scan_backend=args.scan_backend,
                     batch=args.batch, warmup=args.warmup, repeats=repeats, log=log)
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    md = to_markdown(rows, card)
    print(md)
    print(json.dumps(summary(rows), indent=1))
    save(args.name, md, {"card": card, "torch": torch.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
