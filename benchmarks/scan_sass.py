"""The N = 1 selective-scan kernels compiled for an H100 (sm_90) on any machine, GPU or not.

    python3 benchmarks/scan_sass.py [--stages 1,2,3,4] [--prev DIR] [--config KEY=VALUE,...]

For the forward and backward kernels at VMamba-T's stage lengths, with the default chunks, rows and
warps (fp16 in, fp32 out), it prints registers per thread, spills, shared memory, the layout
conversions inside the chunk loop (Triton's GPU IR: each moves a tensor through shared memory),
the bytes of the widest global load and store (PTX) and the SASS instructions of one loop iteration. --prev DIR
also compiles the kernels exported by benchmarks/prev_kernels.py, for a before / after.

It uses `triton.compile` with a CUDA 9.0 target and the ptxas / nvdisasm that come with triton's
wheel; nothing is launched. Figures depend on the triton version: for the GPU machine's, run it
with that version first on the path (`pip install --target DIR triton==3.6.0`, `PYTHONPATH=DIR`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout runs uninstalled

STAGES = [(96, 3136), (192, 784), (384, 196), (768, 49)]  # (channels per direction, L) of VMamba-T at 224^2
K = 4
_F32 = {"A_ptr", "D_ptr", "bias_ptr", "y_ptr", "hs_ptr", "dy_ptr", "dBC_ptr", "dP_ptr"}


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} not found next to triton ({path})")
    return path


def _compile(fn, ints: dict, consts: dict, warps: int, dtype: str = "fp16"):
    """triton.compile of one kernel for sm_90: fp16 tensors but for the fp32 ones in _F32, int arguments
    specialised as a launch would (divisibility by 16 when they divide)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jf = fn if isinstance(fn, JITFunction) else JITFunction(fn)
    sig, cx, attrs = {}, {}, {}
    for i, name in enumerate(jf.arg_names):
        if name.endswith("_ptr"):
            sig[name] = "*fp32" if name in _F32 else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ints:
            sig[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "constexpr"
            cx[(i,)] = consts[name]
    return triton.compile(ASTSource(fn=jf, signature=sig, constexprs=cx, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def _loop_sass(sass: str) -> int:
    """Instructions in the longest backward branch's span: the chunk loop's body."""
    lines = sass.splitlines()
    labels = {ln.split(":")[0]: i for i, ln in enumerate(lines) if re.match(r"^\.L_x_\d+:", ln)}
    best = 0
    for i, ln in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", ln)
        if m and labels.get(m.group(1), i) < i:
            best = max(best, sum(1 for x in lines[labels[m.group(1)]:i] if re.search(r"/\*[0-9a-f]{4}\*/", x)))
    return best


def stats(kernel) -> dict:
    """Registers, spills, shared memory, loop conversions, widest load / store and loop SASS of a compiled kernel."""
    ttgir, ptx = kernel.asm["ttgir"], kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        info = subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", src, "-o", cubin], capture_output=True,
                              text=True, check=True).stderr
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    loop = ttgir[ttgir.find("scf.for"):]
    conv = [re.search(r": tensor<([0-9x]+)x", ln).group(1) for ln in loop.splitlines() if "convert_layout" in ln]

    def widest(op: str) -> int:  # bytes moved by the widest global load / store instruction
        best = 0
        for mods in re.findall(rf"\b{op}\.global((?:\.[\w:]+)+)", ptx):
            parts = mods.split(".")
            vec = int(next((m[1:] for m in parts if m in ("v2", "v4", "v8")), 1))
            bits = next((int(m[1:]) for m in parts if re.fullmatch(r"[bfsu](8|16|32|64)", m)), 0)
            best = max(best, vec * bits // 8)
        return best

    return dict(regs=int(re.search(r"Used (\d+) registers", info).group(1)),
                spills=int(re.search(r"(\d+) bytes spill stores", info).group(1)),
                shared=kernel.metadata.shared, conversions=conv, load=widest("ld"), store=widest("st"),
                loop_sass=_loop_sass(sass))


def scan_kernels(T, dk: int, L: int, dtype: str = "fp16") -> dict:
    """Compiled stats of the N = 1 forward and backward of the kernels module T (this package's, or an exported
    earlier one) at its default configuration for one direction's dk channels and length L."""
    flags = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True)
    out = {}
    for kind, fn in (("fwd", T._scan_fwd_n1_kernel), ("bwd", T._scan_bwd_n1_kernel)):
        bd, _, bl, warps = T._blocks(L, 1, dk, backward=kind == "bwd")
        save = T._blocks(L, 1, dk, backward=True)[2]
        ints = dict(K=K, Dk=dk, L=L, n_chunks=-(-L // bl), n_saved=-(-L // save), sbc=L)
        # as launched on a GPU (FAST); kernels older than the hints take none
        if not hasattr(T, "_n1_hints"):
            hints = {}
        elif "backward" in T._n1_hints.__code__.co_varnames:  # the forward's own n1_fwd_vec
            hints = dict(T._n1_hints(L, L, bl, backward=kind == "bwd"), FAST=True)
        else:
            hints = dict(T._n1_hints(L, L, bl), FAST=True)
        consts = dict(flags, BLOCK_D=bd, BLOCK_L=bl, SAVE_EVERY=save, SAVE_STATES=True, **hints)
        if hasattr(T, "_n1_bwd_prefetch"):  # kernels older than the backward's prefetch take none
            consts["PREFETCH"] = T._n1_bwd_prefetch(bl)
        st = stats(_compile(fn, ints, consts, warps, dtype))
        st.update(rows=bd, chunk=bl, tile=f"{bd} × {bl}", warps=warps, per_thread=bd * bl // (32 * warps))
        out[kind] = st
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated VMamba-T stages (1-4)")
    ap.add_argument("--prev", help="a folder written by benchmarks/prev_kernels.py: compile its kernels too")
    ap.add_argument("--config", default="", metavar="KEY=VALUE,...",
                    help="scan_config overrides for this version's kernels (e.g. n1_bwd_prefetch=32)")
    args = ap.parse_args(argv)
    import triton

    from vmbench.kernels import _selective_scan_triton as T

    cfg = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=") for kv in args.config.split(",") if kv)}
    versions = [("current" + (f" ({args.config})" if cfg else ""), T)]
    if args.prev:
        import importlib

        sys.path.insert(0, os.path.abspath(args.prev))
        versions.append(("prev", importlib.import_module("kernels_prev._selective_scan_triton")))
    print(f"N = 1 scan kernels for sm_90, triton {triton.__version__}, fp16 in / fp32 out; SASS per element = loop "
          "SASS / elements per thread\n")
    print("| version | kernel | stage (K·D, L) | rows × chunk, warps | regs | spills | shared B "
          "| conversions in loop | widest load / store, bytes | loop SASS | SASS per element |")
    print("|" + "---|" * 11)
    for i in args.stages.split(","):
        dk, L = STAGES[int(i) - 1]
        for name, mod in versions:
            with (T.scan_config(**cfg) if mod is T else contextlib.nullcontext()):
                kernels = scan_kernels(mod, dk, L)
            for kind, s in kernels.items():
                conv = ", ".join(s["conversions"]) or "none"
                print(f"| {name} | {kind} | ({K * dk}, {L}) | {s['tile']}, {s['warps']} | {s['regs']} | {s['spills']} "
                      f"| {s['shared']} | {conv} | {s['load']} / {s['store']} | {s['loop_sass']} "
                      f"| {s['loop_sass'] / s['per_thread']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
