"""What Inductor is handed when a model is compiled, read on the CPU at a GPU run's shapes: whether its layout
optimisation turns on (by the rules it applies to a GPU graph), the convolutions it sees, and in training the
tensors the forward keeps for the backward.

    python benchmarks/inductor_graph.py                                # VMamba-T and Swin-T, batch 128, 224², bf16
    python benchmarks/inductor_graph.py --models vmamba_t --fusions default,lnbwd+mlp+ffn+conv+convop   # without gelu
    python benchmarks/inductor_graph.py --modes train --top 20         # the largest saved tensors, grouped
    python benchmarks/inductor_graph.py --codegen                      # + Inductor's kernels: launches and bytes

Each model is compiled as `torch.compile(model)` compiles it: Dynamo, AOTAutograd (in training its joint graph,
Inductor's joint-graph passes and min-cut partitioner), then the forward graph Inductor would lower. That graph is
read and the compile stops there, so nothing runs and no GPU is needed (VMamba's Triton ops stay single nodes with
their fake kernels; TRITON_INTERPRET=1 lets the Triton path trace on CPU tensors).
- layout_opt: `GraphLowering.decide_layout_opt` with oneDNN off (on the CPU it would always say yes). When on,
  Inductor gives channels_last strides to the 4-D tensors upstream of the last convolution (and downstream of the
  first). A (B, H, W, C) tensor then gets H innermost.
- saved GB: the forward graph's outputs after the model's own, i.e. what the backward reads. Inputs (parameters,
  the image) and views of them are not counted, and views of one buffer count once. This is what the partitioner
  keeps, not the peak: the peak adds the weights, gradients, optimizer state and the backward's transients.
- with --codegen, Inductor also generates its Triton code for the graphs (forward, and in training the backward),
  as it would for a GPU, with Triton as its CPU backend (cpu_backend="triton"; the code is generated, never run):
  its kernels' launches per call, how many of them tile two dimensions (transposing copies), and the bytes they
  read and write by Inductor's own estimate (its scheduler's best case per fused kernel, not a measurement).
  This leans on Inductor internals (its scheduler's codegen, the Triton backend hash), checked with torch 2.14.
Differences from a GPU run: autocast is the CPU's (LayerNorm follows its input's dtype where CUDA's runs it in
fp32, which vmbench's LayerNorm does itself on the Triton path), and Swin's attention is the CPU's SDPA (math:
attention matrices saved). Prints a markdown table; with $OUT set, writes $OUT/<name>.md / .json.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
import warnings
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

from _shared import FUSIONS, fusion_switch, save, valid_fusion  # noqa: E402  (benchmarks/, the script's own folder)

AMP = {"bf16": "bfloat16", "fp16": "float16"}
MODES = ("train", "infer")


class _Captured(Exception):
    """Raised by the recording compiler once the forward graph is read: the compile stops there."""


def _base(node):
    """The node whose buffer `node` views (itself when it is not a view): aten ops whose result aliases an input."""
    while node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if schema is None or not schema.returns or schema.returns[0].alias_info is None or not node.args:
            break
        node = node.args[0]
    return node


def _saved(gm, fw_metadata) -> list[dict]:
    """The forward graph's outputs after the model's own (what the backward reads), one dict per buffer."""
    import torch

    outs = list(gm.graph.find_nodes(op="output")[0].args[0])
    n_user = fw_metadata.num_mutated_inp_runtime_indices + len(fw_metadata.output_info)
    seen, rows = set(), []
    for node in outs[n_user:]:
        if not isinstance(node, torch.fx.Node):
            continue
        base = _base(node)
        val = base.meta.get("val")
        if base.op == "placeholder" or base in seen or not isinstance(val, torch.Tensor):
            continue
        seen.add(base)
        rows.append(dict(bytes=val.untyped_storage().nbytes() if val.numel() else 0, shape=tuple(val.shape),
                         dtype=str(val.dtype).replace("torch.", ""), op=str(base.target)))
    return sorted(rows, key=lambda r: -r["bytes"])


def _kernel_stats(source: str, kernel_bytes: int) -> dict:
    """Launches and 2-D tiled launches of the Triton kernels in one generated module; its kernels' bytes."""
    defs = dict(re.findall(r"^def (triton_\w+)\((.*?)\):", source, re.M))
    calls = collections.Counter(re.findall(r"(triton_\w+)\.run\(", source))
    return dict(launches=sum(calls.values()), tiled_2d=sum(c for k, c in calls.items() if "ynumel" in defs.get(k, "")),
                kernel_gb=kernel_bytes / 1e9)


@contextlib.contextmanager
def _triton_codegen_on_cpu():
    """Inductor generating Triton code for CPU tensors as for a GPU's, backward graphs compiled with the forward's.
    The generated kernels are never compiled or run; their backend hash (which would ask Triton for a GPU driver)
    is a constant. The bytes of each graph's fused kernels (the scheduler's estimate) are collected on the way."""
    import torch._functorch.config
    import torch._inductor.config
    import torch._inductor.scheduler as sch

    kernel_bytes = []
    codegen = sch.Scheduler.codegen
    extern = (sch.ExternKernelSchedulerNode, sch.NopKernelSchedulerNode)

    def recording(self):
        kernel_bytes.append(sum(n.get_read_write_buffers_sizes() for n in self.nodes if not isinstance(n, extern)))
        return codegen(self)

    with torch._inductor.config.patch(cpu_backend="triton", compile_threads=1, fx_graph_cache=False), \
            torch._functorch.config.patch(force_non_lazy_backward_lowering=True), \
            mock.patch("torch.utils._triton.triton_hash_with_backend", lambda: "0" * 64), \
            mock.patch.object(sch.Scheduler, "codegen", recording):
        yield kernel_bytes


def inspect(model, x, train: bool, codegen: bool = False) -> dict:
    """Facts of the graphs Inductor gets for `model(x)` (a training step's if `train`): of the forward, its aten
    convolutions and vmbench::conv2d ops (and how many of those get a bias), the layout decision and (training) the
    saved tensors; with `codegen`, the kernel statistics of the forward and, in training, of the backward (keys
    fwd / bwd)."""
    import torch
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    from torch._inductor.graph import GraphLowering

    facts = {}
    ctx = _triton_codegen_on_cpu() if codegen else contextlib.nullcontext([])

    def inner(gm, example_inputs, **kw):
        backward = kw.get("is_backward", False)
        if not backward:
            targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
            facts["nodes"] = len(gm.graph.nodes)
            facts["aten_convs"] = targets.count(torch.ops.aten.convolution.default)
            facts["conv_ops"] = targets.count(torch.ops.vmbench.conv2d.default)
            facts["conv_op_biases"] = sum(n.target is torch.ops.vmbench.conv2d.default and n.args[2] is not None
                                          for n in gm.graph.nodes)  # VMamba adds them outside the op
            with warnings.catch_warnings(), torch.backends.mkldnn.flags(enabled=False):  # the rules a CUDA graph gets
                warnings.simplefilter("ignore")  # oneDNN's flags warn of TF32 on their way out
                facts["layout_opt"] = bool(GraphLowering.decide_layout_opt(gm, is_inference=not train))
            if train:
                facts["saved"] = _saved(gm, torch._guards.TracingContext.try_get().fw_metadata)
        if not codegen:
            raise _Captured
        out = compile_fx_inner(gm, example_inputs, **kw)
        facts["bwd" if backward else "fwd"] = _kernel_stats(out.source_code, kernel_bytes[-1])
        if backward or not train:
            raise _Captured
        return out

    torch._dynamo.reset()
    model.train(train)
    with ctx as kernel_bytes:
        try:
            with torch.set_grad_enabled(train):
                torch.compile(model, backend=lambda gm, inputs: compile_fx(gm, inputs, inner_compile=inner))(x)
        except Exception as e:  # Dynamo wraps the backend's exception
            cause = e
            while cause is not None and not isinstance(cause, _Captured):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
    return facts


def _build(name: str, res: int):
    """The model as peers.py builds it on a GPU (channels_last), VMamba on its Triton path."""
    import torch

    from vmbench.models import create_model, model_entry

    vm = model_entry(name).source != "timm"
    kw = dict(scan_backend="triton") if vm else dict(img_size=res)
    return create_model(name, **kw).to(memory_format=torch.channels_last)


def groups(rows: list[dict]) -> list[tuple[str, int, int]]:
    """(op, dtype, shape) groups of saved tensors: (label, count, bytes), largest first."""
    acc = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        key = f"{r['op']} {r['dtype']} {list(r['shape'])}"
        acc[key][0] += 1
        acc[key][1] += r["bytes"]
    return sorted(((k, c, b) for k, (c, b) in acc.items()), key=lambda t: -t[2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vmamba_t,swin_t")
    ap.add_argument("--modes", default="train,infer", help="train (a training step's forward), infer (no_grad)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--amp", choices=sorted(AMP), default="bf16")
    ap.add_argument("--fusions", default="default", help="comma-separated, as peers.py --fusions: which of VMamba's "
                    "kernels and compiled-graph ops are on (rows MODEL/fuse-X)")
    ap.add_argument("--codegen", action="store_true", help="also generate Inductor's Triton code for the graphs "
                    "(slower): kernel launches, 2-D tiled launches, bytes by Inductor's estimate")
    ap.add_argument("--top", type=int, default=12, help="list the largest groups of saved tensors (op, dtype, shape)")
    ap.add_argument("--name", default="inductor_graph", help="$OUT/<name>.md and <name>.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path traces on the CPU
    modes = args.modes.split(",")
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    fusions = args.fusions.split(",")
    if not all(valid_fusion(f) for f in fusions):
        ap.error(f"--fusions takes a comma-separated list of {', '.join(FUSIONS)} (or names joined by +)")
    import torch
    import torch._functorch.config

    torch._functorch.config.decompose_custom_triton_ops = False  # each Triton op one node, traced by its fake
    use_fusion = fusion_switch()
    dtype = getattr(torch, AMP[args.amp])
    x = torch.randn(args.batch, 3, args.res, args.res).to(memory_format=torch.channels_last)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = _build(name, args.res)
        for fuse in fusions if hasattr(model, "graph_replay") else ["default"]:
            use_fusion(fuse)
            for mode in modes:
                with torch.autocast("cpu", dtype=dtype):
                    facts = inspect(model, x, mode == "train", args.codegen)
                saved = facts.pop("saved", None)
                row = dict(model=name + ("" if fuse == "default" else f"/fuse-{fuse}"), mode=mode, **facts)
                if saved is not None:
                    row.update(saved_bytes=sum(r["bytes"] for r in saved), saved_tensors=len(saved),
                               groups=groups(saved))
                rows.append(row)
                print({k: v for k, v in row.items() if k != "groups"}, file=sys.stderr, flush=True)
        use_fusion("default")
    head = (f"Compiled forward graphs as Inductor gets them (CPU trace, torch {torch.__version__}): batch "
            f"{args.batch}, {args.res}², autocast-{args.amp}")
    lines = [head, "", "| model | mode | graph nodes | aten convolutions | layout optimisation (GPU rules) | "
             "saved for backward, GB (tensors) |", "|---|---|---|---|---|---|"]
    for r in rows:
        saved = f"{r['saved_bytes'] / 1e9:.3f} ({r['saved_tensors']})" if "saved_bytes" in r else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['nodes']} | {r['aten_convs']} | "
                     f"{'on' if r['layout_opt'] else 'off'} | {saved} |")
    if args.codegen:
        lines += ["", "Inductor's Triton kernels per call (generated for the CPU as for a GPU, not run): launches, of "
                  "them 2-D tiled (transposing), GB read and written by Inductor's estimate", "",
                  "| model | mode | graph | launches | 2-D tiled | GB |", "|---|---|---|---|---|---|"]
        for r in rows:
            for graph in ("fwd", "bwd"):
                if graph in r:
                    k = r[graph]
                    lines.append(f"| {r['model']} | {r['mode']} | {graph} | {k['launches']} | {k['tiled_2d']} | "
                                 f"{k['kernel_gb']:.2f} |")
    for r in rows:
        if r.get("groups") and args.top:
            lines += ["", f"{r['model']}, largest saved groups (op, dtype, shape: count, GB):", ""]
            lines += [f"- {k}: {c}, {b / 1e9:.3f}" for k, c, b in r["groups"][:args.top]]
    md = "\n".join(lines)
    print(md)
    save(args.name, md, {"torch": torch.__version__, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
