"""Protocol groups and their aggregates: the rows of `vmbench compare`.

A number's protocol is what changes its meaning. Accuracy: the dataset evaluated on, the dataset the weights were
trained on (for evaluations of a checkpoint), image size, crop / resize, epochs and recipe. Speed: device and GPU
name, precision, batch, resolution, compiled / CUDA graph / channels-last, scan backend, and whether a training
step or an inference was timed. Runs of different protocols never share a row.

Entry point: `compare_rows(run_rows, agg)` over `queries.select_runs` rows; `paper_rows(models)`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..config import DETECTION_METRICS

BENCH_GROUP = "(benchmark)"
PAPER_GROUP = "(paper, quoted)"
AGGS = ("mean", "best", "latest")
# Columns where a larger value is better / a smaller one is (for highlighting the best value and sorting).
HIGHER = ("top1", "top5", "img_s", "train_img_s", *DETECTION_METRICS)
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
    if _flag(r.get("p_amp")):
        return f"amp_{r.get('p_amp_dtype') or 'bf16'}"
    return "fp32"


def mode(r: dict) -> str:
    """How a speed figure was taken: "inference" or "train step", plus compiled / graph / channels-last."""
    train = r["kind"] == "bench" and ("train" in (r.get("p_section"), r.get("p_kind")))
    parts = ["train step" if train else "detector inference" if r.get("p_task") == "detection" else "inference"]
    if _flag(r.get("p_compile"), r.get("p_compiled")):
        parts.append("compiled")
    if _flag(r.get("p_cuda_graph")) or r.get("p_section") == "graph":
        parts.append("graph")
    if _flag(r.get("p_channels_last")):
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
    res = int(res) if res is not None else None
    if res is not None and r["kind"] == "bench" and r.get("p_res_w"):  # a detector's H x W
        res = f"{res}x{int(r['p_res_w'])}"
    return {"device": r.get("device"), "gpu": r.get("r_gpu_name"), "precision": _precision(r),
            "batch": int(batch) if batch is not None else None, "res": res,
            "mode": mode(r), "scan_backend": r.get("scan_backend")}


def _speed_key(p: dict) -> tuple:
    return tuple(p[k] for k in ("device", "gpu", "precision", "batch", "res", "mode", "scan_backend"))


def _mem_kind(r: dict) -> str | None:
    """What a run's peak_mem_mb is: "CUDA" / "RSS" (absolute peaks) or "delta" (a CPU benchmark's RSS growth
    over its start: a different quantity, kept in its own column)."""
    src = r.get("r_peak_mem_source")
    if src == "cpu_peak_rss_delta":
        return "delta"
    return {"cuda_max_allocated": "CUDA", "cpu_peak_rss": "RSS"}.get(src, src)


def _mem(rows: list[dict]) -> tuple[float | None, str | None, float | None]:
    """(mean absolute peak MB, its kind, mean RSS growth MB); the peak is None when the runs' kinds differ."""
    with_mem = [r for r in rows if _parts(r, "peak_mem_mb")[0]]
    absolute = [r for r in with_mem if _mem_kind(r) != "delta"]
    kinds = {_mem_kind(r) for r in absolute}
    peak, kind = (_gstats(absolute, "peak_mem_mb")[0], kinds.pop()) if len(kinds) == 1 else (None, None)
    return peak, kind, _gstats([r for r in with_mem if _mem_kind(r) == "delta"], "peak_mem_mb")[0]


def _start(r: dict) -> str:
    """Where a train run's weights started: from scratch, timm's pretrained weights, or a file (fine-tuned)."""
    if r.get("p_pretrained"):
        return "pretrained (timm)"
    if r.get("p_init") or r.get("p_weights"):
        return f"from {r.get('p_init') or r.get('p_weights')}"
    return "scratch"


def accuracy_protocol(r: dict) -> dict[str, Any]:
    img = _num(r.get("img_size")) or r.get("p_img_size")
    proto = {"source": r["kind"], "img_size": int(img) if img is not None else None,
             "val_resize": r.get("p_val_resize"), "train_resize": r.get("p_train_resize") if r["kind"] == "train"
             else None, "epochs": r.get("p_epochs") if r["kind"] == "train" else None,
             "recipe": r.get("recipe") if r["kind"] == "train" else None, "trained_on": r.get("dataset"),
             "start": _start(r) if r["kind"] == "train" else None}
    if r["kind"] == "eval":
        # Checkpoints of train runs group by what they were trained on (like seeds); an outside file is its own
        # protocol (by content hash, else path).
        src = bool(r.get("src_ids"))  # the checkpoint's train run (queries._weights_source)
        proto["trained_on"] = r.get("src_dataset") if src else "external weights"
        proto["epochs"] = r.get("src_epochs") if src else None
        proto["weights"] = "train run checkpoint" if src else (r.get("p_weights_sha256") or r.get("p_weights_path"))
    return proto


def _weights_label(grp: list[dict]) -> str | None:
    """How an eval row names its weights: "run N" (or "runs N, M", or "K runs: N, M, …, Z") for train-run
    checkpoints, else the file."""
    if all(r.get("src_ids") for r in grp):
        ids = sorted({i for r in grp for i in r["src_ids"]})
        if len(ids) > 4:  # a long sweep's evaluations: the count and the ends, not every id in one cell
            return f"{len(ids)} runs: {ids[0]}, {ids[1]}, …, {ids[-1]}"
        return ("run " if len(ids) == 1 else "runs ") + ", ".join(map(str, ids))
    return grp[0].get("p_weights_path")


def _parts(r: dict, key: str) -> tuple[int, float, float]:
    """(count, sum, sum of squares) of result `key` in a run (from select_runs) or a group (select_groups)."""
    if "n_runs" in r:
        n = r.get(f"{key}__n") or 0
        return (n, r.get(f"{key}__sum") or 0.0, r.get(f"{key}__sq") or 0.0) if n else (0, 0.0, 0.0)
    v = _num(r.get(key))
    return (0, 0.0, 0.0) if v is None else (1, v, v * v)


def _gstats(rows: list[dict], key: str) -> tuple[float | None, float | None, int]:
    """mean, sample std (None for one value) and n of `key` over runs and/or groups of runs."""
    n = s = sq = 0.0
    for r in rows:
        a, b, c = _parts(r, key)
        n, s, sq = n + a, s + b, sq + c
    if not n:
        return None, None, 0
    mean = s / n
    std = math.sqrt(max(0.0, (sq - n * mean * mean) / (n - 1))) if n > 1 else None
    return mean, std, int(n)


def _n_runs(rows: list[dict]) -> int:
    return sum(r.get("n_runs", 1) for r in rows)


def _ids(rows: list[dict]) -> list[int]:
    return sorted(i for r in rows for i in (r["ids"] if "n_runs" in r else [r["id"]]))


def _seeds(rows: list[dict]) -> list[int]:
    out: set[int] = set()
    for r in rows:
        if "n_runs" in r:
            out.update(r["seeds"])
        elif r.get("seed") is not None:
            out.add(r["seed"])
    return sorted(out)


def _pick(grp: list[dict], agg: str, metric: str) -> list[dict]:
    """The runs a row's numbers come from: all of them (mean), or the best / latest one (runs, not groups)."""
    if agg == "mean" or len(grp) == 1:
        return grp
    assert not any("n_runs" in r for r in grp), "best / latest pick single runs"
    if agg == "latest":
        return [max(grp, key=lambda r: r["id"])]
    return [max(grp, key=lambda r: (_num(r.get(metric)) if _num(r.get(metric)) is not None else -math.inf,
                                    r["id"]))]


def _accuracy_row(grp: list[dict], proto: dict, agg: str, bench_by_key: dict) -> dict[str, Any]:
    detection = any(_parts(r, "box_ap")[0] for r in grp)  # a detection run's results are COCO AP, not top-1
    used = _pick(grp, agg, "box_ap" if detection else "top1")
    first = used[0]
    classes = _num(first.get("num_classes"))
    few = classes is not None and classes <= 5
    row: dict[str, Any] = {"section": first["dataset"], "kind": first["kind"], "model": first["model"],
                           "dataset": first["dataset"], **proto}
    for col, key in (("top1", "top1"), ("top5", "top5"), ("loss", "val_loss")):
        mean, std, n = _gstats(used, key)
        if col == "top5" and few:
            mean = std = None  # top-5 of 5 classes or fewer is 100 % by construction
        row[col], row[f"{col}_std"] = mean, std
    row["top5_note"] = f"{int(classes)} classes" if few and not detection else None
    row["task"] = "detection" if detection else "classification"
    if first["kind"] == "eval":
        row["weights"] = _weights_label(used)
    for key in DETECTION_METRICS:
        row[key], row[f"{key}_std"], _ = _gstats(used, key)
    row["runs"] = _n_runs(used)
    row["runs_in_group"] = _n_runs(grp)
    row["seeds"] = _seeds(used)
    row["run_ids"] = _ids(used)
    row["run_id"] = row["run_ids"][-1] if agg != "best" else used[0]["id"]
    row["params_m"] = _gstats(used, "params_m")[0]
    row["gflops"] = _gstats(used, "gflops")[0]
    row["wall_s"] = _gstats(used, "train_time_s")[0]
    row["epochs_done"] = _gstats(used, "epochs_done")[0]
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
        row["img_s"], _, row["img_s_n"] = _gstats(used + joined, "img_s")
        train_key = _speed_key({**p, "mode": p["mode"].replace("inference", "train step")})
        row["train_img_s"] = _gstats(bench_by_key.get((first["model"], train_key), []), "img_s")[0]
        row["peak_mem_mb"], row["peak_mem_kind"], _ = _mem(used)
        row["mem_delta_mb"] = _mem(joined)[2]
    return row


def _speed_row(grp: list[dict], proto: dict, agg: str) -> dict[str, Any]:
    used = _pick(grp, agg, "img_s")
    first = used[0]
    row: dict[str, Any] = {"section": BENCH_GROUP, "kind": "bench", "model": first["model"], "dataset": BENCH_GROUP,
                           "top1": None, "top5": None, "loss": None, **proto}
    row["img_s"], row["img_s_std"], row["img_s_n"] = _gstats(used, "img_s")
    row["latency_ms"] = _gstats(used, "latency_ms")[0]
    row["params_m"] = _gstats(used, "params_m")[0]
    row["gflops"] = _gstats(used, "gflops")[0]
    row["peak_mem_mb"], row["peak_mem_kind"], row["mem_delta_mb"] = _mem(used)
    row["runs"] = _n_runs(used)
    row["runs_in_group"] = _n_runs(grp)
    row["run_ids"] = _ids(used)
    row["run_id"] = row["run_ids"][-1] if agg != "best" else used[0]["id"]
    return row


def compare_rows(run_rows: Iterable[dict], agg: str = "mean", include_bench: bool = True) -> list[dict]:
    """Rows of `compare` from runs (select_runs) or groups of identical runs (select_groups): accuracy rows per
    (model, dataset, accuracy protocol) — their speed columns only when all their runs were timed under one speed
    protocol, else a note — and, with `include_bench`, speed rows per (model, speed protocol)."""
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
            p = accuracy_protocol(r)
            key = (r["model"], r["dataset"], tuple(sorted((k, str(v)) for k, v in p.items())))
            acc.setdefault(key, []).append(r)
            protos[("a", *key)] = p
    rows = []
    for key, grp in acc.items():
        rows.append(_accuracy_row(grp, protos[("a", *key)], agg, speed))
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
    (top-1 for accuracy, box AP for detection, img/s for benchmarks by default): larger first for HIGHER columns,
    else smaller first."""
    def section_key(r):
        return ({BENCH_GROUP: 1, PAPER_GROUP: 2}.get(r["section"], 0), str(r["section"]))

    def value_key(r):
        col = column or ("img_s" if r["section"] == BENCH_GROUP else "box_ap" if r.get("task") == "detection"
                         else "top1")
        v = r.get(col)
        missing = v is None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return (missing, -v if col in HIGHER else v, "")
        return (missing, 0, "" if v is None else str(v))

    return sorted(rows, key=lambda r: (section_key(r), value_key(r), r["model"], r.get("run_id") or 0))
