"""`vmbench report --html DIR`: one self-contained page (inline CSS and JS, figures as data: URIs) that opens
offline: the compare tables (sortable by a click on a header), the figures, and the runs' details.
Entry point: `write_html(engine, flt, out_dir, agg)` -> the index.html written. Every value is HTML-escaped."""
from __future__ import annotations

import base64
import datetime as dt
import html
import os
import tempfile
from pathlib import Path

from . import listing, plots, tables
from .compare import compare_report

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 2em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th.asc::after{content:" ▲"} th.desc::after{content:" ▼"}
td.text{text-align:left} td.best{font-weight:bold;color:#060}
div.wrap{overflow-x:auto;max-width:100%}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
details{margin:0.3em 0} pre{background:#f8f8f8;padding:0.5em;overflow:auto}
"""
_JS = """
function cellValue(td){var t=td.getAttribute('data-v');if(t===null)t=td.textContent;
  var n=parseFloat(t);return (t!==''&&!isNaN(n)&&/^[-+0-9.eE]+$/.test(t.trim()))?n:t.toLowerCase();}
function sortTable(th){var table=th.closest('table'),tbody=table.tBodies[0];
  var idx=Array.prototype.indexOf.call(th.parentNode.children,th);
  var asc=!th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children,function(h){h.classList.remove('asc','desc');});
  th.classList.add(asc?'asc':'desc');
  var rows=Array.prototype.slice.call(tbody.rows);
  rows.sort(function(a,b){var x=cellValue(a.cells[idx]),y=cellValue(b.cells[idx]);
    var ex=(x==='—'||x===''),ey=(y==='—'||y==='');if(ex!==ey)return ex?1:-1;
    if(typeof x==='number'&&typeof y==='number')return asc?x-y:y-x;
    x=String(x);y=String(y);return asc?x.localeCompare(y):y.localeCompare(x);});
  rows.forEach(function(r){tbody.appendChild(r);});}
document.addEventListener('DOMContentLoaded',function(){
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click',function(){sortTable(th);});});});
"""

e = html.escape


def _table(section: str, grp: list[dict]) -> str:
    cols, cells = tables.shown_cells(section, grp)
    out = [f"<h3>{e(tables.section_title(section))}</h3>", '<div class="wrap"><table class="sortable"><thead><tr>']
    out += [f"<th>{e(tables.COLUMNS[c][0])}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for r, texts in zip(grp, cells):
        out.append("<tr>")
        for c, text in zip(cols, texts):
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = ("best" if c in r.get("best", ()) else "") + ("" if num else " text")
            data = f' data-v="{e(repr(float(v)))}"' if num else ""
            out.append(f'<td class="{cls.strip()}"{data}>{e(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _runs_section(run_rows: list[dict]) -> str:
    head = ["id", "kind", "model", "dataset", "status", "seed", "tags", "recipe", "epochs", "img_size", "device",
            "started_at"]
    out = ['<h2>runs</h2><div class="wrap"><table class="sortable" id="runs"><thead><tr>']
    out += [f"<th>{e(h)}</th>" for h in head + ["top-1 %", "img/s"]]
    out.append("</tr></thead><tbody>")
    for r in run_rows:
        cells = [r.get(h) for h in head] + [r["results"].get("top1"), r["results"].get("img_s")]
        tds = []
        for v in cells:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = "—" if v in (None, []) else ",".join(map(str, v)) if isinstance(v, list) else \
                f"{v:.4g}" if isinstance(v, float) else str(v)
            tds.append(f'<td{"" if num else " class=text"}{f" data-v={e(repr(float(v)))}" if num else ""}>'
                       f"{e(text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table></div>")
    for r in run_rows:
        if r.get("error"):
            out.append(f"<details><summary>run {r['id']} failed</summary><pre>{e(r['error'])}</pre></details>")
    return "".join(out)


def build_page(rows: list[dict], run_rows: list[dict], images: dict[str, bytes], title: str) -> str:
    sections: dict[str, list[dict]] = {}
    for r in rows:
        sections.setdefault(r["section"], []).append(r)
    parts = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
             f"<title>{e(title)}</title><style>{_CSS}</style><script>{_JS}</script></head><body>",
             f"<h1>{e(title)}</h1><p>generated {e(dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))}"
             " — click a column header to sort.</p><h2>compare</h2>"]
    parts += [_table(s, g) for s, g in sections.items()] or ["<p>no completed runs match</p>"]
    if images:
        parts.append("<h2>figures</h2>")
        for name, png in images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(name)}</figcaption></figure>")
    parts.append(_runs_section(run_rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(engine, flt, out_dir: Path, agg: str = "mean", title: str = "vmbench report") -> Path:
    """Write `out_dir/index.html` (temp file, fsync, rename); the figures are drawn in a temporary folder and
    embedded. Reads the store only."""
    import copy

    rows = compare_report(engine, copy.deepcopy(flt), agg=agg)
    run_flt = copy.deepcopy(flt)
    run_flt.limit = run_flt.limit or 500
    run_rows = listing.list_runs(engine, run_flt)
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in plots.plot_files(engine, copy.deepcopy(flt), list(plots.KINDS), Path(tmp), agg=agg):
            images[path.stem] = path.read_bytes()
    page = build_page(rows, run_rows, images, title)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "index.html"
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".index.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, target)
    return target
