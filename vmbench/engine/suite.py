"""The paper benchmark suite: VMamba against its peers, measured in one process on one device.

Sections (the layout of shared/ANCHORS.md):
  infer    inference img/s at batch 128, 224², fp32 / AMP-bf16 / AMP-fp16
  train    training fwd+bwd img/s (AMP-bf16, no optimizer step) and peak memory, batch 128, 224²
  res      resolution scaling, AMP-fp16: 224² (batch 64), 512² (16), 1024² (4)
  graph    inference and training step (AMP-bf16, batch 128, 224²) captured once into a CUDA graph and replayed:
           the GPU's time alone, without the eager host overhead (Python, dispatch, launches)
  compile  torch.compile'd inference (AMP-bf16) and training, batch 128, 224²
`run_suite`'s `res`, `precision` and `channels_last` replace the defaults above in every section they apply to
(`res` leaves the resolution sweep out; `precision` replaces each section's precisions); `vmbench bench --suite
paper --compile` / `--cuda-graph` run only the compile / graph section. Table titles say what was measured.
Every row also carries the ratio against the peer of the same size measured in the same run
(VMamba-T vs Swin-T, …; ConvNeXt-T for the resolution rows), so a speed claim is always a ratio on one card.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .bench import measure_throughput, resolve_device, resolve_scan_backend, train_step_throughput

SECTIONS = ("infer", "train", "res", "graph", "compile")
PAPER_MODELS = ("vmamba_t", "vmamba_s", "vmamba_b", "swin_t", "swin_s", "swin_b", "convnext_t", "convnext_s",
                "convnext_b", "res2net50")
RES_MODELS = ("vmamba_t", "swin_t", "convnext_t")
RES_POINTS = ((224, 64), (512, 16), (1024, 4))
COMPILE_MODELS = ("vmamba_t", "swin_t", "convnext_t")  # also the models of the graph section
# The peer each model's speed is compared with, per section.
PEER = {"vmamba_t": "swin_t", "vmamba_s": "swin_s", "vmamba_b": "swin_b"}
RES_PEER = {"vmamba_t": "convnext_t"}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _build(name: str, device: torch.device, backend: str, res: int = 224, channels_last: bool = False):
    from vmbench.models import create_model

    model = create_model(name, num_classes=1000, scan_backend=backend, img_size=res).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _measure(fn: Callable[[], dict]) -> dict:
    """Run one measurement; an error (e.g. out of memory) becomes a row with `error` instead of a crash."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a suite reports every failure and carries on
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return {"error": f"{type(e).__name__}: {msg[:200]}"}


def run_suite(models: Iterable[str] = PAPER_MODELS, sections: Iterable[str] = SECTIONS, device: str = "auto",
              scan_backend: str = "auto", batch: int = 128, warmup: int = 3, repeats: int = 5,
              progress: Callable[[str, int, int], None] | None = None,
              log: Callable[[dict], None] | None = None, res: int | None = None, precision: str | None = None,
              channels_last: bool = False) -> list[dict]:
    """Measure `models` in the given `sections`; returns one dict per measurement (see module doc).

    `res` (default 224) and `precision` (default: each section's own) apply to every section; a given `res`
    leaves the resolution sweep out. `channels_last` puts every model and input in channels_last.
    Each row: {section, model, precision, res, batch, compiled, channels_last, img_s, latency_ms, peak_mem_mb,
    first_call_s, error?, peer?, ratio?}. `log(row)` is called as each row is measured.
    """
    from vmbench.models import uses_scan

    dev = resolve_device(device)
    backend = resolve_scan_backend(scan_backend, dev)
    models = list(models)
    sections = [s for s in SECTIONS if s in set(sections) and not (s == "res" and res is not None)]
    size = res or 224
    infer_precisions = (precision,) if precision else ("fp32", "amp_bf16", "amp_fp16")
    rows: list[dict] = []
    cl = channels_last
    common = dict(warmup=warmup, repeats=repeats, progress=progress, channels_last=cl)

    def add(row: dict) -> None:
        row.setdefault("scan_backend", backend if uses_scan(row["model"]) else None)
        row["channels_last"] = cl
        rows.append(row)
        if log:
            log(row)

    if "infer" in sections:
        for name in models:
            model = _measure(lambda: _build(name, dev, backend, size, cl))
            for prec in infer_precisions:
                base = dict(section="infer", model=name, precision=prec, res=size, batch=batch, compiled=False)
                if isinstance(model, dict):
                    add({**base, **model})
                    continue
                r = _measure(lambda: measure_throughput(model, batch, size, dev, prec, task=f"{name} {prec}",
                                                        **common))
                add({**base, **_pick(r)})
            del model
            _free(dev)

    if "train" in sections:
        for name in models:
            prec = precision or "amp_bf16"
            base = dict(section="train", model=name, precision=prec, res=size, batch=batch, compiled=False)
            r = _measure(lambda: train_step_throughput(_build(name, dev, backend, size, cl), batch, size, dev, prec,
                                                       task=f"{name} train", **common))
            add({**base, **_pick(r)})
            _free(dev)

    if "res" in sections:
        for name in [m for m in RES_MODELS if m in models]:
            for r_res, b in RES_POINTS:
                prec = precision or "amp_fp16"
                base = dict(section="res", model=name, precision=prec, res=r_res, batch=b, compiled=False)
                r = _measure(lambda: measure_throughput(_build(name, dev, backend, r_res, cl), b, r_res, dev,
                                                        prec, task=f"{name} {r_res}²", **common))
                add({**base, **_pick(r)})
                _free(dev)

    if "graph" in sections:
        for name in [m for m in COMPILE_MODELS if m in models]:
            for kind in ("infer", "train"):
                prec = precision or "amp_bf16"
                base = dict(section="graph", model=name, precision=prec, res=size, batch=batch, compiled=False,
                            kind=kind)

                def graphed():
                    model = _build(name, dev, backend, size, cl)
                    fn = measure_throughput if kind == "infer" else train_step_throughput
                    return fn(model, batch, size, dev, prec, task=f"{name} {kind} graph", cuda_graph=True,
                              **common)

                add({**base, **_pick(_measure(graphed))})
                _free(dev)

    if "compile" in sections:
        for name in [m for m in COMPILE_MODELS if m in models]:
            for kind in ("infer", "train"):
                prec = precision or "amp_bf16"
                base = dict(section="compile", model=name, precision=prec, res=size, batch=batch,
                            compiled=True, kind=kind)

                def go():
                    torch._dynamo.reset()
                    model = _build(name, dev, backend, size, cl)
                    t0 = time.perf_counter()
                    cm = torch.compile(model)
                    if kind == "infer":
                        r = measure_throughput(cm, batch, size, dev, prec, compiled=True,
                                               task=f"{name} compiled", **common)
                    else:
                        r = train_step_throughput(cm, batch, size, dev, prec, task=f"{name} compiled train",
                                                  **common)
                    r["compile_wall_s"] = time.perf_counter() - t0
                    return r

                add({**base, **_pick(_measure(go))})
                _free(dev)

    _add_ratios(rows)
    return rows


def _pick(r: dict) -> dict:
    keys = ("img_s", "latency_ms", "peak_mem_mb", "first_call_s", "compile_wall_s", "load_avg_1m", "load_warning",
            "error")
    return {k: r[k] for k in keys if k in r}


def _add_ratios(rows: list[dict]) -> None:
    """ratio = img/s of the row ÷ img/s of its peer in the same section/precision/res/kind."""
    def key(r, model):
        return (r["section"], model, r["precision"], r["res"], r.get("kind"))

    index = {key(r, r["model"]): r for r in rows}
    for r in rows:
        peer = (RES_PEER if r["section"] == "res" else PEER).get(r["model"])
        other = index.get(key(r, peer)) if peer else None
        if other and r.get("img_s") and other.get("img_s"):
            r["peer"] = peer
            r["ratio"] = r["img_s"] / other["img_s"]


_TITLES = {"infer": "Inference", "train": "Training fwd+bwd, no optimizer", "res": "Resolution scaling",
           "compile": "torch.compile", "graph": "CUDA graph (eager kernels, host overhead removed)"}
_PRECISION_NAMES = {"fp32": "fp32", "amp_bf16": "AMP-bf16", "amp_fp16": "AMP-fp16"}


def _joined(values) -> str:
    return " / ".join(str(v) for v in dict.fromkeys(values))


def section_title(section: str, rows: list[dict]) -> str:
    """A section's title from what its rows measured (precision, batch, resolution, memory format)."""
    parts = [_TITLES[section], _joined(_PRECISION_NAMES.get(r["precision"], r["precision"]) for r in rows)]
    if section != "res":
        parts += [f"batch {_joined(r['batch'] for r in rows)}", f"{_joined(r['res'] for r in rows)}²"]
    if any(r.get("channels_last") for r in rows):
        parts.append("channels-last")
    return ", ".join(parts)


def to_markdown(rows: list[dict], device_name: str = "") -> str:
    """One markdown table per section, titled with what was measured."""
    out = []
    for sec in SECTIONS:
        sec_rows = [r for r in rows if r["section"] == sec]
        if not sec_rows:
            continue
        out.append(f"### {section_title(sec, sec_rows)}{' — ' + device_name if device_name else ''}\n")
        out.append("| model | precision | res | batch | kind | img/s | peak MB | vs peer | first call s | note |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in sec_rows:
            ratio = f"{r['ratio']:.2f}× {r['peer']}" if r.get("ratio") else ""
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["model"], r["precision"], r["res"], r["batch"], r.get("kind", "infer" if sec != "train" else "train"),
                f"{r['img_s']:.0f}" if r.get("img_s") else "—",
                f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else "—", ratio,
                f"{r['first_call_s']:.1f}" if r.get("first_call_s") else "—", r.get("error", "")))
        out.append("")
    return "\n".join(out)


def summary(rows: list[dict]) -> dict[str, Any]:
    """The goal checks of the suite: each VMamba ratio against its peer (≥ 1 means the goal is met)."""
    return {f"{r['section']}/{r['model']}/{r['precision']}/{r['res']}/{r.get('kind', '')}": round(r["ratio"], 3)
            for r in rows if r.get("ratio")}
