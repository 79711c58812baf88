"""`vmbench sweep` and `vmbench queue add|ls|cancel|retry|prune`: the grid, specs queued once, the arguments each
item runs with resolve to the planned spec, refusals leave the database byte-identical, `queue ls` never imports
torch."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.cli.options import build_spec
from vmbench.scheduler.queue import spec_hash, spec_identity
from vmbench.scheduler.sweep import grid_axes, split_top

from dbfiles import db_digest

OPTS = ["--epochs", "1", "--device", "cpu", "--img-size", "32", "--max-train-batches", "2"]


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_split_and_grid():
    assert split_top("1e-3,5e-4") == ["1e-3", "5e-4"]
    assert split_top("[1,2],[3]") == ["[1,2]", "[3]"]
    assert split_top("'a,b',\"c\"") == ["'a,b'", '"c"']
    assert grid_axes(["lr=1e-3,5e-4", "ema=true"]) == [["lr=1e-3", "lr=5e-4"], ["ema=true"]]
    for bad in ("lr", "=1", "lr=1,,2"):
        with pytest.raises(ValueError):
            grid_axes([bad])


def test_sweep_grid_is_queued_once_and_reruns_add_only_what_is_missing(tmp_path):
    db = str(tmp_path / "q.db")
    base = ["sweep", "test_resnet", "resnet18", "--datasets", "shapes", "--set", "lr=1e-3,5e-4",
            "--set", "drop_path_rate=0.0,0.1", *OPTS, "--db", db, "--json"]
    dry = json.loads(_invoke(*base, "--seeds", "0,1", "--dry-run").output)
    assert dry["planned"] == 16 and dry["added"] == 0 and dry["dry_run"]
    import os
    assert not os.path.exists(db)  # a dry run writes nothing
    first = json.loads(_invoke(*base, "--seeds", "0,1").output)
    assert first["planned"] == first["added"] == 16
    assert len({r["spec_hash"] for r in first["runs"]}) == 16
    again = json.loads(_invoke(*base, "--seeds", "0,1,2").output)
    assert again["planned"] == 24 and again["added"] == 8
    assert [r["id"] for r in again["runs"] if not r["added"]] == list(range(1, 17))
    rows = json.loads(_invoke("queue", "ls", "--db", db, "--json").output)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"queued"}
    # the arguments each item will run with resolve to the spec that was planned
    run_cmd = main.commands["run"]
    for row in rows[:5] + rows[-3:]:
        ctx = run_cmd.make_context("run", list(row["args"]))
        params = dict(ctx.params)
        model, dataset = params.pop("model"), params.pop("dataset")
        params.pop("db"), params.pop("as_json")
        spec, _ = build_spec(model, dataset, **params)
        assert spec_hash("train", spec_identity(spec)) == row["spec_hash"]
    seeds = [r["args"][r["args"].index("--seed") + 1] for r in rows]
    assert seeds.count("2") == 8


def test_table_output_and_queue_add(tmp_path):
    db = str(tmp_path / "q.db")
    out = _invoke("sweep", "test_resnet", "--datasets", "shapes,[red]x", "--seeds", "3", *OPTS, "--db", db,
                  "--dry-run")
    assert "2 runs planned (dry run" in out.output and "[red]x" in out.output  # data printed as text
    out = _invoke("queue", "add", "test_resnet", "shapes", *OPTS, "--seed", "3", "--db", db, "--json")
    assert json.loads(out.output) == {"id": 1, "added": True}
    out = _invoke("sweep", "test_resnet", "--datasets", "shapes", "--seeds", "3", *OPTS, "--db", db)
    assert "0 queued now, 1 already on the queue" in out.output


@pytest.mark.parametrize("args, message", [
    (["sweep", "no_such_model", "--datasets", "shapes"], "no_such_model"),
    (["sweep", "test_resnet", "--datasets", "shapes", "--set", "lr=abc"], "lr"),
    (["sweep", "test_resnet", "--datasets", "shapes", "--seeds", "1,x"], "--seeds"),
    (["sweep", "test_resnet", "--datasets", ","], "--datasets"),
    (["sweep", "test_resnet", "--datasets", "shapes", "--set", "epochs=0"], "epochs"),
    (["queue", "add", "no_such_model", "shapes"], "no_such_model"),
    (["queue", "cancel", "99"], "no queue item 99"),
    (["queue", "retry", "1"], "only failed or cancelled"),
    (["queue", "prune"], "--done"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, args, message):
    db = str(tmp_path / "q.db")
    assert _invoke("queue", "add", "test_resnet", "shapes", *OPTS, "--db", db).exit_code == 0
    before = db_digest(db)
    out = CliRunner().invoke(main, [*args, "--db", db])
    assert out.exit_code == 2, out.output
    assert out.stderr.startswith("error:") and len(out.stderr.splitlines()) == 1 and message in out.stderr
    assert db_digest(db) == before


def test_cancel_retry_prune_and_ls_without_torch(tmp_path):
    db = str(tmp_path / "q.db")
    _invoke("sweep", "test_resnet", "--datasets", "shapes", "--seeds", "0,1,2", *OPTS, "--db", db)
    assert "cancelled (was queued)" in _invoke("queue", "cancel", "2", "--db", db).output
    assert "queued again" in _invoke("queue", "retry", "2", "--db", db).output
    _invoke("queue", "cancel", "3", "--db", db)
    assert "deleted 1 queue items" in _invoke("queue", "prune", "--cancelled", "--db", db).output
    code = ("import sys; from vmbench.cli import main\n"
            "try:\n    main(['queue', 'ls', '--db', sys.argv[1], '--status', 'queued', '--json'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'queue ls imported torch'\n")
    out = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [1, 2]
    empty = subprocess.run([sys.executable, "-m", "vmbench.cli", "queue", "ls", "--db", str(tmp_path / "none.db")],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no database" in empty.stderr
