"""`vmbench compare` over a database of seeds, protocols, evaluations and benchmarks (tests/report_db.py):
protocols never share a row, mean ± std (n), evaluations in rows of their own, trained-on kept, top-5 hidden
for ≤ 5 classes, memory kinds apart, filters / sort / columns / limit, every format, mistakes exit 2."""
import csv
import io
import json

import pytest
from click.testing import CliRunner

from dbfiles import db_digest
from report_db import MARKUP, make_db
from vmbench.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("cmp"))


def _rows(db, *args):
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", "json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _one(rows, **kw):
    found = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    assert len(found) == 1, (kw, found)
    return found[0]


def test_protocols_and_aggregation(db):
    rows = _rows(db)
    shapes = [r for r in rows if r["dataset"] == "shapes"]
    # vmamba_t at 32² (2 seeds), at 64², and the evaluation of run 1's checkpoint: three rows, never one
    vm = [r for r in shapes if r["model"] == "vmamba_t"]
    assert sorted((r["kind"], r["img_size"], r["runs"]) for r in vm) == [("eval", 32, 1), ("train", 32, 2),
                                                                           ("train", 64, 1)]
    seeds = _one(shapes, model="vmamba_t", kind="train", img_size=32)
    assert seeds["top1"] == pytest.approx(71.25) and seeds["top1_std"] == pytest.approx(1.7678, abs=1e-4)
    assert seeds["seeds"] == [0, 1] and seeds["run_ids"] == [1, 2] and seeds["wall_s"] == pytest.approx(60.5)
    assert seeds["epochs"] == 3 and seeds["recipe"] == "smoke" and seeds["epochs_done"] == 3
    # The evaluation of run 1's file has its own row; the train row keeps its speed columns, joined with the
    # benchmark runs of the same protocol (cpu, fp32, batch 8, 32², inference; and its training step).
    assert seeds["img_s"] == pytest.approx((100 + 110 + 120) / 3) and seeds["img_s_n"] == 3
    assert seeds["train_img_s"] == 40.0 and (seeds["batch"], seeds["res"], seeds["precision"]) == (8, 32, "fp32")
    # Train rows: absolute peak RSS; the joined benchmark's RSS growth is its own column.
    assert seeds["peak_mem_mb"] == 900.0 and seeds["peak_mem_kind"] == "RSS" and seeds["mem_delta_mb"] == 300.0
    ev = _one(shapes, kind="eval")
    assert ev["trained_on"] == "shapes" and ev["weights"] == "run 1" and ev["top1"] == 72.5 and ev["img_s"] is None
    # A checkpoint trained on shapes and evaluated on tiny2 is not shown as trained on tiny2; 2 classes: no top-5.
    tiny = [r for r in rows if r["dataset"] == "tiny2"]
    assert _one(tiny, kind="eval")["trained_on"] == "shapes" and _one(tiny, kind="train")["trained_on"] == "tiny2"
    assert all(r["top5"] is None and r["top5_note"] == "2 classes" for r in tiny)
    assert all(r["top5"] is not None for r in shapes)


def test_benchmark_rows_by_protocol(db):
    bench = [r for r in _rows(db) if r["kind"] == "bench"]
    assert all(r["dataset"] == "(benchmark)" and r["top1"] is None for r in bench)
    keys = [(r["model"], r["device"], r["precision"], r["batch"], r["res"], r["mode"]) for r in bench]
    assert len(keys) == len(set(keys)) == 7
    b16 = _one(bench, batch=16, res=224)
    assert b16["runs"] == 2 and b16["img_s"] == 62.0 and b16["run_ids"] == [10, 11]
    assert _one(bench, batch=1)["img_s"] == 20.0  # batch 1 and 16 never share a row
    assert b16["peak_mem_mb"] is None and b16["mem_delta_mb"] == 300.0  # CPU: RSS growth, not a peak
    gpu = _one(bench, model="vmamba_t", res=384)
    assert gpu["gpu"] == "NVIDIA H100" and gpu["peak_mem_mb"] == 9000.0 and gpu["peak_mem_kind"] == "CUDA"
    assert _one(bench, mode="train step")["img_s"] == 40.0


def test_agg_best_and_latest(db):
    best = _one(_rows(db, "--agg", "best", "--dataset", "shapes"), model="vmamba_t", kind="train", img_size=32)
    assert best["top1"] == 72.5 and best["run_id"] == 1 and best["top1_std"] is None and best["runs_in_group"] == 2
    latest = _one(_rows(db, "--agg", "latest", "--dataset", "shapes"), model="vmamba_t", kind="train", img_size=32)
    assert latest["top1"] == 70.0 and latest["run_id"] == 2


def test_filters_sort_columns_limit(db):
    assert {(r["model"], r["runs"]) for r in _rows(db, "--tag", "paper")} == {("vmamba_t", 2)}
    assert {r["model"] for r in _rows(db, "--model", "convnext_t")} == {"convnext_t"}
    assert _rows(db, "--since", "2999-01-01") == []
    assert all(r["kind"] != "bench" for r in _rows(db, "--recipe", "smoke"))
    failed = _rows(db, "--status", "failed")
    assert [(r["model"], r["dataset"]) for r in failed] == [("swin_t", "shapes")]
    bench = [r for r in _rows(db, "--sort", "batch") if r["kind"] == "bench"]
    assert [r["batch"] for r in bench] == sorted(r["batch"] for r in bench)
    shapes = [r for r in _rows(db, "--dataset", "shapes", "--sort", "img_s") if r["img_s"] is not None]
    assert [r["img_s"] for r in shapes] == sorted((r["img_s"] for r in shapes), reverse=True)
    limited = _rows(db, "--limit", "1")
    assert sorted(r["section"] for r in limited) == ["(benchmark)", "shapes", "tiny2"]
    slim = _rows(db, "--columns", "top1,img_s")
    assert all(set(r) <= {"model", "dataset", "section", "kind", "top1", "top1_std", "img_s", "img_s_std"}
               for r in slim)


def test_paper_rows_are_quoted_apart(db):
    rows = _rows(db, "--paper")
    paper = [r for r in rows if r["kind"] == "paper"]
    assert {r["model"] for r in paper} == {"vmamba_t", "convnext_t", "swin_t"}
    assert all(r["quoted"] and r["section"] == "(paper, quoted)" and r["runs"] == 0 for r in paper)
    assert _one(paper, model="vmamba_t")["top1"] == 82.6
    measured = [r for r in rows if r["kind"] != "paper"]
    assert all(not r.get("quoted") for r in measured)


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "latex"])
def test_every_format_has_every_protocol_column(db, fmt):
    r = CliRunner().invoke(main, ["compare", "--db", db, "--format", fmt, "--paper"])
    assert r.exit_code == 0, r.output
    out = r.output
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert {"res", "precision", "batch", "mode", "device", "gpu", "img_size", "trained_on", "top1_std",
                "peak_mem_kind", "mem_delta_mb", "quoted"} <= set(rows[0])
        return
    for header in ("res", "precision", "batch", "mode", "trained on", "img/s", "peak MB", "RSS growth MB",
                   "quoted from the papers"):
        assert header in out, (fmt, header)
    assert "71.25 ± 1.77" in out.replace("$\\pm$", "±")
    assert "— (2 classes)" in out.replace("---", "—")
    if fmt == "markdown":
        assert "**71.25 ± 1.77**" not in out and "**80.00**" in out  # best top-1 of the section in bold
    if fmt == "latex":
        assert "\\begin{tabular}" in out and "vmamba\\_t" in out and "\\textbf{80.00}" in out


def test_mistakes_exit_2_and_leave_the_database_alone(db):
    before = db_digest(db)
    for args in (["--dataset", "nosuch"], ["--model", "nosuch"], ["--sort", "nosuch"], ["--columns", "top1,bad"],
                 ["--since", "yesterday-ish"], ["--recipe", "nosuch"]):
        r = CliRunner().invoke(main, ["compare", "--db", db, *args])
        assert r.exit_code == 2, (args, r.output)
        assert r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
    assert db_digest(db) == before


def test_data_is_never_markup(db):
    """Errors and paths that look like rich markup ([/x] closes nothing) print as they are, in every command."""
    for args in (["show", "8"], ["runs"], ["compare", "--status", "failed"], ["diff", "8", "1"]):
        r = CliRunner().invoke(main, [*args, "--db", db])
        assert r.exit_code == 0, (args, r.output)
    r = CliRunner().invoke(main, ["show", "8", "--db", db])
    assert MARKUP in r.output  # the failure reason, verbatim
    assert "[/red]" in r.output  # the checkpoint folder's name too


@pytest.mark.parametrize("color", [False, True])
def test_a_table_that_fits_prints_as_rich_pads_it(db, color):
    """A table that fits the console has its cells padded and justified by vmbench (report.tables): the text
    is what rich prints when it pads and justifies every cell itself, bold green where a value is best."""
    import re

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from vmbench.report import queries, tables
    from vmbench.report.compare import compare_report
    from vmbench.store.db import make_engine

    rows = compare_report(make_engine(db, create=False, readonly=True), queries.RunFilter())

    def console():
        return Console(file=io.StringIO(), width=1000, force_terminal=color, color_system="truecolor" if color else None)

    ours = console()
    tables.render_table(rows, ours)
    theirs = console()
    for section, grp in tables._sections(rows):
        cols, cells = tables.shown_cells(section, grp)
        t = Table(title=Text(tables.section_title(section)), title_justify="left", header_style="bold")
        for c in cols:
            t.add_column(Text(tables.COLUMNS[c][0]), justify="left" if tables.COLUMNS[c][1] == "{}" else "right",
                         no_wrap=True)
        for r, row in zip(grp, cells):
            t.add_row(*[Text(v, style="bold green" if c in r.get("best", ()) else "") for c, v in zip(cols, row)])
        theirs.print(t)
    for n in sorted({r["speed_note"] for r in rows if r.get("speed_note")}):
        theirs.print(Text(f"note: {n}"))
    plain = re.compile(r"\x1b\[[0-9;]*m")
    a, b = ours.file.getvalue(), theirs.file.getvalue()
    assert plain.sub("", a) == plain.sub("", b) and "│" in a
    if color:  # the best values' style (the header's codes group differently: the same bold)
        assert a.count("\x1b[1;32m") == b.count("\x1b[1;32m") > 0
