"""`runs`, `metrics`, `show`, `diff` and `plot` over tests/report_db.py's database."""
import csv
import io
import json

import pytest
from click.testing import CliRunner

from dbfiles import db_digest
from report_db import make_db
from vmbench.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("rep"))


def _ok(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_runs_columns_filters_json(db):
    rows = json.loads(_ok("runs", "--db", db, "--json"))
    assert [r["id"] for r in rows] == list(range(16, 0, -1))
    one = next(r for r in rows if r["id"] == 1)
    assert (one["seed"], one["tags"], one["epochs"], one["img_size"], one["recipe"]) == (0, ["paper"], 3, 32, "smoke")
    assert one["results"]["top1"] == 72.5
    assert [r["id"] for r in json.loads(_ok("runs", "--db", db, "--json", "--tag", "paper"))] == [2, 1]
    assert {r["dataset"] for r in json.loads(_ok("runs", "--db", db, "--json", "--dataset", "tiny2"))} == {"tiny2"}
    assert [r["id"] for r in json.loads(_ok("runs", "--db", db, "--json", "--kind", "eval", "--limit", "1"))] == [7]
    failed = json.loads(_ok("runs", "--db", db, "--json", "--status", "failed"))
    assert [r["id"] for r in failed] == [8] and failed[0]["error"].startswith("RuntimeError: bad [/x]")
    table = _ok("runs", "--db", db, "--tag", "paper")
    for header in ("seed", "tags", "recipe", "epochs", "img"):
        assert header in table
    assert "smoke" in table and "paper" in table


def test_metrics_export(db):
    rows = list(csv.DictReader(io.StringIO(_ok("metrics", "1", "2", "--db", db))))
    assert [(r["run"], r["epoch"]) for r in rows] == [("1", "1"), ("1", "2"), ("1", "3"), ("2", "1"), ("2", "2"),
                                                     ("2", "3")]
    assert float(rows[2]["val_top1"]) == 72.5 and {"train_loss", "val_loss", "lr"} <= set(rows[0])
    js = json.loads(_ok("metrics", "1", "--db", db, "--format", "json", "--key", "val_top1"))
    assert [m["val_top1"] for m in js] == [62.5, 67.5, 72.5] and all("lr" not in m for m in js)
    before = db_digest(db)
    r = CliRunner().invoke(main, ["metrics", "1", "99", "--db", db])
    assert r.exit_code == 2 and r.output == "error: no run 99 in the database\n"
    assert db_digest(db) == before


def test_show_curves_protocol_checkpoint(db):
    out = _ok("show", "1", "--db", db)
    for part in ("curves", "val top-1 %", "62.5 → 72.5", "lr", "protocol", "image size", "checkpoint", "best.pt"):
        assert part in out, part
    assert "▁▅█" in out  # val top-1 rising over 3 epochs
    detail = json.loads(_ok("show", "1", "--db", db, "--json"))
    assert detail["checkpoint"]["files"] == {"best.pt": 1024}
    failed = _ok("show", "8", "--db", db)
    assert "failure reason" in failed and "(missing)" in failed


def test_diff(db):
    rows = json.loads(_ok("diff", "1", "2", "--db", db, "--json"))
    diffs = {(r["section"], r["key"]): (r["a"], r["b"]) for r in rows}
    assert diffs[("run", "seed")] == (0, 1) and diffs[("results", "top1")] == (72.5, 70.0)
    assert ("run", "model") not in diffs and ("environment", "torch") not in diffs  # only what differs
    env = {(r["section"], r["key"]) for r in json.loads(_ok("diff", "1", "9", "--db", db, "--json"))}
    assert ("run", "kind") in env and ("environment", "torch") in env and ("run", "git_sha") in env
    assert "run 1 vs run 2" in _ok("diff", "1", "2", "--db", db)
    r = CliRunner().invoke(main, ["diff", "1", "99", "--db", db])
    assert r.exit_code == 2 and r.output.startswith("error: no run 99")


def test_plot_pngs(db, tmp_path):
    out = _ok("plot", "all", "--db", db, "--out", tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["accuracy-throughput.png", "curves.png", "precision.png", "resolution.png"]
    assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert len(out.splitlines()) == 4
    one = tmp_path / "one"
    _ok("plot", "curves", "--db", db, "--out", one, "--run", "1", "--run", "4")
    assert [p.name for p in one.iterdir()] == ["curves.png"]
    r = CliRunner().invoke(main, ["plot", "resolution", "--db", db, "--out", tmp_path / "x", "--dataset", "shapes"])
    assert r.exit_code == 0 and "nothing to draw" in r.output  # a dataset filter leaves no benchmark rows


def test_report_commands_never_import_torch(db, tmp_path):
    """plot and report --html draw with matplotlib only; compare, runs, show, diff and metrics read the store."""
    import subprocess
    import sys

    code = ("import sys; from vmbench.cli import main\n"
            "for argv in sys.argv[1:]:\n"
            "    try:\n        main(argv.split('|'), standalone_mode=False)\n"
            "    except SystemExit as e:\n        assert not e.code, (argv, e.code)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'matplotlib' in sys.modules\n")
    cmds = [f"plot|all|--db|{db}|--out|{tmp_path}", f"report|--html|{tmp_path / 'h'}|--db|{db}",
            f"compare|--db|{db}|--format|latex", f"runs|--db|{db}", f"show|1|--db|{db}", f"diff|1|2|--db|{db}",
            f"metrics|1|--db|{db}"]
    p = subprocess.run([sys.executable, "-c", code, *cmds], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "h" / "index.html").exists()
