"""What the GPU scripts share: where they leave their results (the folder $OUT, set on the device machine) and
the kernel timers (CUDA events, or one plain call for a script's --dry-run on the CPU)."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable


def gpu_ms(fn: Callable[[], Any], rep: int = 60) -> float:
    """Median ms of `fn` by triton.testing.do_bench (CUDA events), our launchers launching directly."""
    import triton.testing

    from vmbench.kernels._backend import direct_launch

    with direct_launch():  # launchers called directly launch without the traceable wrapper
        return triton.testing.do_bench(fn, warmup=15, rep=rep, return_mode="median")


def once_ms(fn: Callable[[], Any], rep: int = 60) -> float:
    """One call's wall ms (a --dry-run checks a script on the CPU; its times mean nothing). `rep` is ignored."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


FUSIONS = ("default", "all", "none", "mlp", "ffn", "conv", "lnbwd", "lnfwd", "gelu", "convop")  # or a+b


def valid_fusion(value: str) -> bool:
    """Is `value` one of FUSIONS or kernel names of it joined by "+"?"""
    return all(part in FUSIONS for part in value.split("+"))


def fusion_switch():
    """A function `use(fusion)` that sets the flags of VMamba's fused kernels for one value of FUSIONS: mlp (fc1 +
    GELU, kernels/linear_gelu.py), ffn (the whole MLP, kernels/mlp.py; where both take a call, the whole MLP runs),
    conv (SS2D's conv + SiLU, kernels/dwconv_silu.py), lnbwd / lnfwd (compiled graphs with gradients: the LayerNorm
    backward / forward and backward on the Triton kernel, kernels/layer_norm.py), gelu (compiled graphs with
    gradients: the MLP's forward GELU as an op of its own, which saves one hidden activation per MLP), convop
    (compiled graphs: the convolutions as an op of their own, which keeps Inductor's layout optimisation off; both
    vmbench/models/opaque_ops.py), all, none, default (the flags as the modules set them, read when this is
    called), or kernel names joined by "+" ("mlp+conv")."""
    import importlib

    from vmbench.kernels import dwconv_silu, linear_gelu, mlp
    from vmbench.models import opaque_ops

    layer_norm = importlib.import_module("vmbench.kernels.layer_norm")  # the package exports a function of that name
    flags = {"mlp": (linear_gelu, "USE_KERNEL"), "ffn": (mlp, "USE_KERNEL"), "conv": (dwconv_silu, "USE_KERNEL"),
             "lnbwd": (layer_norm, "USE_KERNEL"), "lnfwd": (layer_norm, "USE_KERNEL_FWD"),
             "gelu": (opaque_ops, "USE_GELU_OP"), "convop": (opaque_ops, "USE_CONV_OP")}
    default = {name for name, (mod, attr) in flags.items() if getattr(mod, attr)}
    sets = {"default": default, "all": set(flags), "none": set(), **{name: {name} for name in flags}}

    def use(fusion: str) -> None:
        on = set().union(*(sets[part] for part in fusion.split("+")))
        for name, (mod, attr) in flags.items():
            setattr(mod, attr, name in on)
    return use


SCANS = ("real", "free")  # --scan of peers.py


def scan_switch():
    """A function `use(scan)` for one value of SCANS: "real" runs the map-layout scan kernels, "free" skips their
    launches (forward and backward; outputs left as allocated, so values are garbage): VMamba's time with a scan that
    costs nothing, the bound on what any scan kernel can gain. Compiled rows must be traced after the call."""
    from vmbench.kernels import _ss2d_map_triton as _map

    real = _map._kernel
    skipped = ("_scan_fwd_map_kernel", "_scan_bwd_map_kernel")

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    def free(fn):
        return _NoLaunch() if fn.__name__ in skipped else real(fn)

    def use(scan: str) -> None:
        _map._kernel = free if scan == "free" else real
    return use


def save(name: str, text: str | None = None, data: Any = None) -> None:
    """Write `text` to $OUT/<name>.md and `data` to $OUT/<name>.json (either may be None); without $OUT, nothing."""
    out = os.environ.get("OUT")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    if text is not None:
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    if data is not None:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
