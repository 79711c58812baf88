"""PNG figures (matplotlib, imported only here and only when a figure is drawn) from `compare` rows and per-epoch
metrics. Entry point: `draw(kind, rows, curves, path)` -> whether a figure was drawn; KINDS names them:

- accuracy-throughput: top-1 vs inference img/s, marker area ∝ params (the VMamba paper's scatter);
- resolution: img/s and peak memory vs input resolution, one line per (model, device, precision, mode, batch);
- curves: validation top-1 (and train loss) per epoch of several runs;
- precision: img/s per model, one bar per precision and mode.
"""
from __future__ import annotations

from pathlib import Path

from .aggregate import BENCH_GROUP

KINDS = ("accuracy-throughput", "resolution", "curves", "precision")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("figures need matplotlib: pip install 'vmbench[plots]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _acc_throughput(ax, rows: list[dict]) -> bool:
    pts = [r for r in rows if r["section"] != BENCH_GROUP and r.get("top1") is not None and r.get("img_s")]
    for ds in sorted({r["dataset"] for r in pts}):
        sub = [r for r in pts if r["dataset"] == ds]
        sizes = [max(20.0, 8.0 * (r.get("params_m") or 3.0)) for r in sub]
        ax.scatter([r["img_s"] for r in sub], [r["top1"] for r in sub], s=sizes, alpha=0.6, label=str(ds))
        for r in sub:
            ax.annotate(str(r["model"]), (r["img_s"], r["top1"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("inference img/s (the run's own device, precision and batch)")
    ax.set_ylabel("top-1 %")
    ax.set_title("accuracy vs throughput (marker area ∝ params)")
    if pts:
        ax.legend(fontsize=7, title="dataset")
    return bool(pts)


def _series_label(r: dict, *keys: str) -> str:
    return " ".join(str(r.get(k)) for k in keys if r.get(k) not in (None, ""))


def _resolution(axes, rows: list[dict]) -> bool:
    bench = [r for r in rows if r["section"] == BENCH_GROUP and isinstance(r.get("res"), int) and r.get("img_s")]
    lines: dict[str, list[dict]] = {}
    for r in bench:
        lines.setdefault(_series_label(r, "model", "device", "precision", "mode") + f" b{r.get('batch')}",
                         []).append(r)
    ax_speed, ax_mem = axes
    for label, pts in sorted(lines.items()):
        pts.sort(key=lambda r: r["res"])
        ax_speed.plot([r["res"] for r in pts], [r["img_s"] for r in pts], marker="o", label=label)
        _line(ax_mem, [(r["res"], r.get("peak_mem_mb") or r.get("mem_delta_mb")) for r in pts], label, "o")
    ax_speed.set_xlabel("resolution")
    ax_speed.set_ylabel("img/s")
    ax_speed.set_title("throughput vs resolution")
    ax_mem.set_xlabel("resolution")
    ax_mem.set_ylabel("peak MB (CUDA / RSS; RSS growth on CPU)")
    ax_mem.set_title("memory vs resolution")
    if lines:
        ax_speed.legend(fontsize=6)
    return bool(lines)


def _line(ax, points: list[tuple], label: str, marker: str) -> bool:
    """Plot the (x, y) points whose y is known; whether there was any."""
    points = [p for p in points if p[1] is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    return bool(points)


def _curves(axes, curves: dict[str, list[dict]]) -> bool:
    ax_acc, ax_loss = axes
    drawn = False
    for label, pts in curves.items():
        ep = [p for p in pts if p.get("epoch") is not None]
        drawn |= _line(ax_acc, [(p["epoch"], p.get("val_top1")) for p in ep], label, ".")
        drawn |= _line(ax_loss, [(p["epoch"], p.get("train_loss")) for p in ep], label, ".")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("val top-1 %")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_acc.set_title("training curves")
    if drawn:
        ax_acc.legend(fontsize=6)
    return drawn


def _precision(ax, rows: list[dict]) -> bool:
    bench = [r for r in rows if r["section"] == BENCH_GROUP and r.get("img_s")]
    models = sorted({r["model"] for r in bench})
    ways = sorted({_series_label(r, "precision", "mode") + f" b{r.get('batch')} {r.get('res')}²" for r in bench})
    width = 0.8 / max(1, len(ways))
    for i, way in enumerate(ways):
        xs, ys = [], []
        for j, m in enumerate(models):
            vals = [r["img_s"] for r in bench if r["model"] == m
                    and _series_label(r, "precision", "mode") + f" b{r.get('batch')} {r.get('res')}²" == way]
            if vals:
                xs.append(j + i * width)
                ys.append(max(vals))
        ax.bar(xs, ys, width=width, label=way)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, rotation=30, fontsize=7)
    ax.set_ylabel("img/s")
    ax.set_title("speed by precision and mode")
    if ways:
        ax.legend(fontsize=6)
    return bool(bench)


def draw(kind: str, rows: list[dict], curves: dict[str, list[dict]], path: Path) -> bool:
    """Draw figure `kind` into the PNG `path`; False (and no file) when the rows hold nothing to draw."""
    assert kind in KINDS, kind
    plt = _pyplot()
    two = kind in ("resolution", "curves")
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(11 if two else 7, 4.5))
    try:
        ok = {"accuracy-throughput": lambda: _acc_throughput(axes, rows), "resolution": lambda: _resolution(axes, rows),
              "curves": lambda: _curves(axes, curves), "precision": lambda: _precision(axes, rows)}[kind]()
        if ok:
            fig.tight_layout()
            fig.savefig(path, format="png", dpi=110)
        return ok
    finally:
        plt.close(fig)


def curves_of(engine, run_ids: list[int], labels: dict[int, str] | None = None) -> dict[str, list[dict]]:
    """Per-epoch val top-1 / train loss of runs, keyed by a legend label ("run 3 vmamba_t shapes")."""
    from . import queries

    with engine.connect() as conn:
        per_run = queries.metric_rows(conn, run_ids, ("val_top1", "train_loss"))
    labels = labels or {}
    return {labels.get(rid, f"run {rid}"): pts for rid, pts in per_run.items() if pts}


def plot_files(engine, flt, kinds: list[str], out_dir: Path, run_ids: list[int] = (), agg: str = "mean",
               stem: str = "") -> list[Path]:
    """Draw `kinds` from the runs of `flt` into `out_dir/<stem><kind>.png`; the curves are those of `run_ids`, or
    of the representative train runs of the compare rows (at most 12). Returns the files written."""
    from .compare import compare_report

    rows = compare_report(engine, flt, agg=agg)
    if not run_ids:
        run_ids = [r["run_id"] for r in rows if r.get("kind") == "train" and r.get("run_id")][:12]
    labels = {r["run_id"]: f"run {r['run_id']} {r['model']} {r['dataset']}" for r in rows if r.get("run_id")}
    curves = curves_of(engine, list(run_ids), labels) if "curves" in kinds else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        path = out_dir / f"{stem}{kind}.png"
        if draw(kind, rows, curves, path):
            written.append(path)
    return written
