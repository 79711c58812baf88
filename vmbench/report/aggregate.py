"""Protocol groups and their aggregates: the rows of `vmbench compare`.

A number's protocol is what changes its meaning. Accuracy: the dataset evaluated on, the dataset the weights were
trained on (for evaluations of a checkpoint), image size, crop / resize, epochs and recipe. Speed: device and GPU
name, precision, batch, resolution, compiled / CUDA graph / channels-last, scan backend, and whether a training
step or an inference was timed. Runs of different protocols never share a row.

Entry point: `compare_rows(run_rows, trained, agg)` over `queries.select_runs` rows; `paper_rows(models)`.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

BENCH_GROUP = "(benchmark)"
PAPER_GROUP = "(paper, quoted)"
AGGS = ("mean", "best", "latest")
# Columns where a larger value is better / a smaller one is (for highlighting the best value and sorting).
HIGHER = ("top1", "top5", "img_s", "train_img_s")
LOWER = ("loss",)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None if v is None else float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _flag(*values: Any) -> bool:
    for v in values:
        if v in (True, 1, 1.0, "1", "1.0", "True", "true"):
            return True
    return False


def _precision(r: dict) -> str | None:
    if r["kind"] == "bench":
        return r.get("p_precision") or r.get("r_precision")
    if r.get("p_amp") or _flag(r.get("r_amp")):
        return f"amp_{r.get('p_amp_dtype') or 'bf16'}"
    return "fp32"


def mode(r: dict) -> str:
    """How a speed figure was taken: "inference" or "train step", plus compiled / graph / channels-last."""
    train = r["kind"] == "bench" and ("train" in (r.get("p_section"), r.get("p_kind")))
    parts = ["train step" if train else "inference"]
    if _flag(r.get("p_compile"), r.get("p_compiled"), r.get("r_compile")):
        parts.append("compiled")
    if _flag(r.get("p_cuda_graph"), r.get("r_cuda_graph")) or r.get("p_section") == "graph":
        parts.append("graph")
    if _flag(r.get("p_channels_last"), r.get("r_channels_last")):
        parts.append("channels-last")
    return " + ".join(parts)


def speed_protocol(r: dict) -> dict[str, Any] | None:
    """The protocol of a run's speed figure (None for runs that timed nothing, e.g. evaluations)."""
    if r["kind"] == "eval" or _num(r.get("img_s")) is None:
        return None
    if r["kind"] == "bench":
        batch = r.get("p_batch") or _num(r.get("batch"))
        res = r.get("p_res") or _num(r.get("res"))
    else:
        batch = _num(r.get("bench_batch")) or r.get("p_bench_batch") or r.get("p_batch_size")
        res = _num(r.get("img_size")) or r.get("p_img_size")
    return {"device": r.get("device"), "gpu": r.get("r_gpu_name"), "precision": _precision(r),
            "batch": int(batch) if batch is not None else None, "res": int(res) if res is not None else None,
            "mode": mode(r), "scan_backend": r.get("scan_backend") or r.get("r_scan_backend")}


def _speed_key(p: dict) -> tuple:
    return tuple(p[k] for k in ("device", "gpu", "precision", "batch", "res", "mode", "scan_backend"))


def _mem(r: dict) -> tuple[float | None, float | None, str | None]:
    """(absolute peak MB, RSS growth MB, what the absolute one is): a training run's peak RSS and a benchmark's
    RSS growth over its start are different quantities and get different columns."""
    mb, src = _num(r.get("peak_mem_mb")), r.get("r_peak_mem_source")
    if mb is None:
        return None, None, None
    if src == "cpu_peak_rss_delta":
        return None, mb, None
    return mb, None, {"cuda_max_allocated": "CUDA", "cpu_peak_rss": "RSS"}.get(src, src)


def accuracy_protocol(r: dict, trained: dict[str, dict]) -> dict[str, Any]:
    img = _num(r.get("img_size")) or r.get("p_img_size")
    proto = {"source": r["kind"], "img_size": int(img) if img is not None else None,
             "val_resize": r.get("p_val_resize"), "train_resize": r.get("p_train_resize") if r["kind"] == "train"
             else None, "epochs": r.get("p_epochs") if r["kind"] == "train" else None,
             "recipe": r.get("recipe") if r["kind"] == "train" else None, "trained_on": r.get("dataset")}
    if r["kind"] == "eval":
        src = trained.get(r.get("p_weights_path") or "")
        proto["trained_on"] = src["dataset"] if src else "external weights"
        proto["epochs"] = src["epochs"] if src else None
        proto["weights"] = f"run {src['run_id']}" if src else r.get("p_weights_path")
    return proto


def _stats(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    mean = statistics.fmean(vals)
    return mean, (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _pick(grp: list[dict], agg: str, metric: str) -> list[dict]:
    """The runs a row's numbers come from: all of them (mean), or the best / latest one."""
    if agg == "mean" or len(grp) == 1:
        return grp
    if agg == "latest":
        return [max(grp, key=lambda r: r["id"])]
    return [max(grp, key=lambda r: (_num(r.get(metric)) if _num(r.get(metric)) is not None else -math.inf,
                                    r["id"]))]


def _accuracy_row(grp: list[dict], proto: dict, agg: str, bench_by_key: dict) -> dict[str, Any]:
    used = _pick(grp, agg, "top1")
    first = used[0]
    classes = _num(first.get("num_classes"))
    few = classes is not None and classes <= 5
    row: dict[str, Any] = {"section": first["dataset"], "kind": first["kind"], "model": first["model"],
                           "dataset": first["dataset"], **proto}
    for col, key in (("top1", "top1"), ("top5", "top5"), ("loss", "val_loss")):
        mean, std, n = _stats([_num(r.get(key)) for r in used])
        if col == "top5" and few:
            mean = std = None  # top-5 of 5 classes or fewer is 100 % by construction
        row[col], row[f"{col}_std"] = mean, std
    row["top5_note"] = f"{int(classes)} classes" if few else None
    row["runs"] = len(used)
    row["runs_in_group"] = len(grp)
    row["seeds"] = sorted({r.get("seed") for r in used if r.get("seed") is not None})
    row["run_ids"] = sorted(r["id"] for r in used)
    row["run_id"] = max(used, key=lambda r: r["id"])["id"] if agg != "best" else used[0]["id"]
    row["params_m"] = _stats([_num(r.get("params_m")) for r in used])[0]
    row["gflops"] = _stats([_num(r.get("gflops")) for r in used])[0]
    row["wall_s"] = _stats([_num(r.get("train_time_s")) for r in used])[0]
    row["epochs_done"] = _stats([_num(r.get("epochs_done")) for r in used])[0]
    speeds = [speed_protocol(r) for r in used]
    keys = {(_speed_key(p) if p else None) for p in speeds}
    row.update(device=None, gpu=None, precision=None, batch=None, res=None, mode=None, scan_backend=None,
               img_s=None, img_s_n=0, train_img_s=None, peak_mem_mb=None, peak_mem_kind=None,
               mem_delta_mb=None, speed_note=None)
    if len(keys) > 1:
        row["speed_note"] = "runs timed under different protocols: see the benchmark rows"
    elif keys != {None}:
        p = speeds[0]
        row.update({k: p[k] for k in ("device", "gpu", "precision", "batch", "res", "mode", "scan_backend")})
        joined = bench_by_key.get((first["model"], _speed_key(p)), [])
        row["img_s"], _, row["img_s_n"] = _stats([_num(r.get("img_s")) for r in used + joined])
        train_key = _speed_key({**p, "mode": p["mode"].replace("inference", "train step")})
        row["train_img_s"] = _stats([_num(r.get("img_s")) for r in bench_by_key.get((first["model"], train_key),
                                                                                         [])])[0]
        mems = [_mem(r) for r in used]
        kinds = {m[2] for m in mems if m[0] is not None}
        if len(kinds) == 1:
            row["peak_mem_mb"] = _stats([m[0] for m in mems])[0]
            row["peak_mem_kind"] = kinds.pop()
        row["mem_delta_mb"] = _stats([_mem(r)[1] for r in joined])[0]
    return row


def _speed_row(grp: list[dict], proto: dict, agg: str) -> dict[str, Any]:
    used = _pick(grp, agg, "img_s")
    first = used[0]
    row: dict[str, Any] = {"section": BENCH_GROUP, "kind": "bench", "model": first["model"], "dataset": BENCH_GROUP,
                           "top1": None, "top5": None, "loss": None, **proto}
    row["img_s"], row["img_s_std"], row["img_s_n"] = _stats([_num(r.get("img_s")) for r in used])
    row["latency_ms"] = _stats([_num(r.get("latency_ms")) for r in used])[0]
    row["params_m"] = _stats([_num(r.get("params_m")) for r in used])[0]
    row["gflops"] = _stats([_num(r.get("gflops")) for r in used])[0]
    mems = [_mem(r) for r in used]
    kinds = {m[2] for m in mems if m[0] is not None}
    row["peak_mem_mb"] = _stats([m[0] for m in mems])[0] if len(kinds) == 1 else None
    row["peak_mem_kind"] = kinds.pop() if len(kinds) == 1 else None
    row["mem_delta_mb"] = _stats([m[1] for m in mems])[0]
    row["runs"] = len(used)
    row["runs_in_group"] = len(grp)
    row["run_ids"] = sorted(r["id"] for r in used)
    row["run_id"] = max(used, key=lambda r: r["id"])["id"] if agg != "best" else used[0]["id"]
    return row


def compare_rows(run_rows: Iterable[dict], trained: dict[str, dict], agg: str = "mean",
                 include_bench: bool = True) -> list[dict]:
    """Rows of `compare` from completed runs: accuracy rows per (model, dataset, accuracy protocol, own speed
    protocol when one) and, with `include_bench`, speed rows per (model, speed protocol)."""
    assert agg in AGGS, agg
    acc: dict[tuple, list[dict]] = {}
    speed: dict[tuple, list[dict]] = {}
    protos: dict[tuple, dict] = {}
    for r in run_rows:
        if r["kind"] == "bench":
            p = speed_protocol(r)
            if p is None:
                continue
            key = (r["model"], _speed_key(p))
            speed.setdefault(key, []).append(r)
            protos[("s", *key)] = p
        else:
            p = accuracy_protocol(r, trained)
            key = (r["model"], r["dataset"], tuple(sorted((k, str(v)) for k, v in p.items())))
            acc.setdefault(key, []).append(r)
            protos[("a", *key)] = p
    rows = [_accuracy_row(grp, protos[("a", *key)], agg, speed) for key, grp in acc.items()]
    if include_bench:
        rows += [_speed_row(grp, protos[("s", *key)], agg) for key, grp in speed.items()]
    return rows


def paper_rows(entries: Iterable[Any]) -> list[dict]:
    """The registry's quoted paper numbers (ImageNet-1K top-1 at 224², params, FLOPs) as rows of their own."""
    rows = []
    for e in entries:
        if e.paper_top1 is None and e.paper_params_m is None:
            continue
        rows.append({"section": PAPER_GROUP, "kind": "paper", "model": e.name, "dataset": "imagenet-1k (quoted)",
                     "quoted": True, "top1": e.paper_top1, "top5": None, "loss": None, "params_m": e.paper_params_m,
                     "gflops": e.paper_gflops, "img_size": 224, "runs": 0, "run_id": None,
                     "source": "paper (quoted)"})
    return rows


def mark_best(rows: list[dict]) -> None:
    """Set row["best"] to the columns where the row holds its section's best value (sections of 2+ rows)."""
    by_section: dict[str, list[dict]] = {}
    for r in rows:
        r["best"] = []
        by_section.setdefault(r["section"], []).append(r)
    for grp in by_section.values():
        if len(grp) < 2:
            continue
        for col in HIGHER + LOWER:
            vals = [r.get(col) for r in grp if isinstance(r.get(col), (int, float))]
            if len(vals) < 2:
                continue
            best = max(vals) if col in HIGHER else min(vals)
            for r in grp:
                if r.get(col) == best:
                    r["best"].append(col)


def sort_rows(rows: list[dict], column: str | None) -> list[dict]:
    """Sections in order (datasets by name, then benchmarks, then quoted paper rows); inside one, by `column`
    (top-1 for accuracy, img/s for benchmarks by default): larger first for HIGHER columns, else smaller first."""
    def section_key(r):
        return ({BENCH_GROUP: 1, PAPER_GROUP: 2}.get(r["section"], 0), str(r["section"]))

    def value_key(r):
        col = column or ("img_s" if r["section"] == BENCH_GROUP else "top1")
        v = r.get(col)
        missing = v is None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (missing, -v if col in HIGHER else v, "")
        return (missing, 0, "" if v is None else str(v))

    return sorted(rows, key=lambda r: (section_key(r), value_key(r), r["model"], r.get("run_id") or 0))
