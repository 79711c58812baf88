"""Rendering `compare` rows: a rich table per section, markdown, csv, json, LaTeX. Every format carries every
column of a section (csv and json: every field of every row); text from the data is never read as markup.

Entry point: `emit(rows, fmt, console, columns)`; `COLUMNS` names what `--columns` and `--sort` accept.
"""
from __future__ import annotations

import csv
import io
import json

from ..config import DETECTION_METRICS, DETECTION_STATS
from .aggregate import BENCH_GROUP, PAPER_GROUP

FORMATS = ("table", "markdown", "csv", "json", "latex")

_SIZED_AP = {"aps": "AP_S", "apm": "AP_M", "apl": "AP_L"}  # COCO AP of small / medium / large objects
# key -> (header, number format)
COLUMNS: dict[str, tuple[str, str]] = {
    "model": ("model", "{}"), "dataset": ("dataset", "{}"), "source": ("source", "{}"),
    "trained_on": ("trained on", "{}"), "start": ("start", "{}"), "weights": ("weights", "{}"), "img_size": ("img", "{:.0f}"),
    "val_resize": ("val resize", "{:.0f}"), "train_resize": ("train resize", "{:.0f}"), "epochs": ("epochs", "{}"),
    "recipe": ("recipe", "{}"), "top1": ("top-1 %", "{:.2f}"), "top5": ("top-5 %", "{:.2f}"),
    "loss": ("val loss", "{:.4f}"), "runs": ("n", "{}"), "seeds": ("seeds", "{}"), "params_m": ("params M", "{:.1f}"),
    "gflops": ("GFLOPs", "{:.2f}"), "device": ("device", "{}"), "gpu": ("GPU", "{}"),
    "precision": ("precision", "{}"), "batch": ("batch", "{}"), "res": ("res", "{}"), "mode": ("mode", "{}"),
    "scan_backend": ("scan", "{}"), "img_s": ("img/s", "{:.1f}"), "train_img_s": ("train img/s", "{:.1f}"),
    "latency_ms": ("latency ms", "{:.2f}"), "peak_mem_mb": ("peak MB", "{:.0f}"),
    "mem_delta_mb": ("RSS growth MB", "{:.0f}"), "wall_s": ("wall s", "{:.0f}"),
    "epochs_done": ("epochs done", "{:.0f}"), "run_id": ("run", "{}"),
    **{f"{t}_{s}": (f"{t} {_SIZED_AP.get(s, s.upper())}", "{:.1f}") for t in ("box", "mask") for s in DETECTION_STATS},
}
_ACCURACY = ["model", "source", "trained_on", "start", "img_size", "val_resize", "train_resize", "epochs", "recipe", "top1",
             "top5", "loss", "runs", "seeds", "params_m", "gflops", "img_s", "train_img_s", "peak_mem_mb",
             "mem_delta_mb", "wall_s", "epochs_done", "device", "gpu", "precision", "batch", "res", "mode",
             "scan_backend", "run_id"]
_BENCH = ["model", "mode", "device", "gpu", "precision", "batch", "res", "scan_backend", "runs", "img_s",
          "latency_ms", "params_m", "gflops", "peak_mem_mb", "mem_delta_mb", "run_id"]
# A detection dataset's section: COCO box / mask AP in place of top-1 / top-5 / loss.
_DETECTION = [c for c in _ACCURACY if c not in ("top1", "top5", "loss")]
_DETECTION[_DETECTION.index("recipe") + 1:_DETECTION.index("recipe") + 1] = list(DETECTION_METRICS)
_PAPER = ["model", "dataset", "img_size", "top1", "params_m", "gflops", "source"]
_STD = ("top1", "top5", "loss", "img_s", "box_ap", "mask_ap")


def section_columns(section: str, only: list[str] | None, rows: list[dict] = ()) -> list[str]:
    """The columns of one section (`rows`: its rows; a section of detection runs shows AP instead of top-1)."""
    detection = any(r.get("task") == "detection" for r in rows)
    cols = (_BENCH if section == BENCH_GROUP else _PAPER if section == PAPER_GROUP
            else _DETECTION if detection else _ACCURACY)
    if only:
        cols = [c for c in cols if c in only or c == "model"]
    return cols


def section_title(section: str) -> str:
    if section == BENCH_GROUP:
        return "benchmarks: one row per model and way of measuring"
    if section == PAPER_GROUP:
        return "quoted from the papers (ImageNet-1K, 224²; not measured here)"
    return f"dataset: {section}"


def cell(row: dict, key: str) -> str:
    """A row's value as text: mean ± std where several runs were averaged, "—" where unknown."""
    v = row.get(key)
    if key == "top5" and v is None and row.get("top5_note"):
        return f"— ({row['top5_note']})"
    if key == "peak_mem_mb" and v is not None and row.get("peak_mem_kind"):
        return f"{v:.0f} {row['peak_mem_kind']}"
    if key == "run_id" and row.get("kind") == "eval" and v is not None:
        return f"{v} (eval)"
    if key == "source" and row.get("kind") == "eval" and row.get("weights"):
        return f"eval of {row['weights']}"
    if v is None or v == []:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    fmt = COLUMNS.get(key, ("", "{}"))[1]
    try:
        text = fmt.format(v)
    except (ValueError, TypeError):
        text = str(v)
    std = row.get(f"{key}_std") if key in _STD else None
    if std is not None:
        text += f" ± {fmt.format(std)}"
    return text


def _sections(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["section"], []).append(r)
    return list(out.items())


def to_markdown(rows: list[dict], only: list[str] | None = None) -> str:
    parts = []
    for section, grp in _sections(rows):
        cols = section_columns(section, only, grp)
        lines = [f"**{section_title(section)}**", "", "| " + " | ".join(COLUMNS[c][0] for c in cols) + " |",
                 "|" + "---|" * len(cols)]
        for r in grp:
            cells = []
            for c in cols:
                text = cell(r, c).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
                cells.append(f"**{text}**" if c in r.get("best", ()) else text)
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "²": r"$^2$",
          "—": "---"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(rows: list[dict], only: list[str] | None = None) -> str:
    """One booktabs tabular per section (\\usepackage{booktabs}); best values in bold."""
    parts = []
    for section, grp in _sections(rows):
        cols = section_columns(section, only, grp)
        lines = [f"% {latex_escape(section_title(section))}", r"\begin{tabular}{" + "l" * len(cols) + "}",
                 r"\toprule", " & ".join(latex_escape(COLUMNS[c][0]) for c in cols) + r" \\", r"\midrule"]
        for r in grp:
            cells = []
            for c in cols:
                text = latex_escape(cell(r, c))
                cells.append(r"\textbf{" + text + "}" if c in r.get("best", ()) else text)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _fields(rows: list[dict], only: list[str] | None) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        for k in r:
            keys[k] = None
    fields = list(keys)
    if only:
        keep = {"model", "dataset", "section", "kind", *only, *(f"{c}_std" for c in only)}
        fields = [k for k in fields if k in keep]
    return fields


def to_csv(rows: list[dict], only: list[str] | None = None) -> str:
    buf = io.StringIO()
    fields = _fields(rows, only)
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (";".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


def to_json(rows: list[dict], only: list[str] | None = None) -> str:
    fields = _fields(rows, only)
    return json.dumps([{k: r.get(k) for k in fields} for r in rows], indent=2, default=str)


def shown_cells(section: str, grp: list[dict], only: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(columns, each row's cell texts) of a section as the table and the HTML page show it: a column with no value
    in any row is left out (model always; every column of `only`)."""
    cols = section_columns(section, only, grp)
    cells = [[cell(r, c) for c in cols] for r in grp]
    keep = [i for i, c in enumerate(cols) if c == "model" or only or any(row[i] != "—" for row in cells)]
    return [cols[i] for i in keep], [[row[i] for i in keep] for row in cells]


def _cell_text(value: str, style: str, width: int, right: bool):
    """A cell of a table that fits: `value` (in `style`) justified to `width` cells, one unstyled space each side."""
    from rich.cells import cell_len
    from rich.text import Text

    fill = " " * (width - cell_len(value))
    before = " " + fill if right else " "
    text = Text(before + value + (" " if right else fill + " "))
    if style:
        text.stylize(style, len(before), len(before) + len(value))
    return text


def render_table(rows: list[dict], console, only: list[str] | None = None) -> None:
    """Rich tables, one per section; the best value of each column in bold green. A column with no value in any
    row of a section is left out of that section's table (the other formats keep it). Where a table fits the
    console, vmbench sizes, justifies and pads its cells (the longest cell sets a column's width), which spares rich
    measuring and padding every cell; the text is the same."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    for section, grp in _sections(rows):
        cols, cells = shown_cells(section, grp, only)
        heads = [COLUMNS[c][0] for c in cols]
        widths = [max(cell_len(h), *(cell_len(row[i]) for row in cells)) for i, h in enumerate(heads)]
        fits = sum(w + 3 for w in widths) + 1 <= console.width  # a cell's padding and its border
        # A table that fits gets its cells padded and justified as text (one space each side, as rich pads):
        # the same output, without rich measuring, justifying and padding every cell.
        t = Table(title=Text(section_title(section)), title_justify="left", header_style="bold",
                  padding=0 if fits else (0, 1))
        right = [COLUMNS[c][1] != "{}" for c in cols]
        for c, h, w, rj in zip(cols, heads, widths, right):
            t.add_column(_cell_text(h, "", w, rj) if fits else Text(h), justify="right" if rj and not fits else "left",
                         no_wrap=fits or c == "model", width=w + 2 if fits else None)
        for r, row in zip(grp, cells):
            best = r.get("best", ())
            styles = ["bold green" if c in best else "" for c in cols]
            t.add_row(*[_cell_text(v, st, w, rj) if fits else Text(v, style=st)
                        for v, st, w, rj in zip(row, styles, widths, right)])
        console.print(t)
    notes = sorted({r["speed_note"] for r in rows if r.get("speed_note")})
    for n in notes:
        console.print(Text(f"note: {n}"))


def emit(rows: list[dict], fmt: str, console, only: list[str] | None = None) -> str | None:
    """The text of `rows` in `fmt` (None for "table", which prints to `console` itself; other formats take None)."""
    assert fmt in FORMATS, fmt
    if fmt == "table":
        render_table(rows, console, only)
        return None
    return {"markdown": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex}[fmt](rows, only)
