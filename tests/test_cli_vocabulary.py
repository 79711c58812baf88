"""The command line's shared vocabulary and honest output: one spelling per idea across commands (old ones kept
as aliases), data printed as text (never as rich markup), `bench --suite` doing what its flags say and titling
its tables with it, and a benchmark on a busy machine flagged with its load average."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.store import Store

FAST_BENCH = ["--device", "cpu", "--warmup", "0", "--repeats", "1"]


def _invoke(args):
    return CliRunner().invoke(main, args)


def test_models_description_markup_is_shown_as_typed():
    r = _invoke(["models"])
    assert r.exit_code == 0 and "VMamba-T [s1l8]" in r.stdout and "VMamba-B [s2l15]" in r.stdout


def test_datasets_path_with_markup_is_shown_as_typed():
    import shutil
    import tempfile

    short = tempfile.mkdtemp(dir="/tmp")  # short enough that the table does not wrap the path
    try:
        root = f"{short}/[bold]d"
        r = _invoke(["datasets", "--data-root", root])
        assert r.exit_code == 0, r.output
        assert r.stdout.count(f"{root}/") >= 7  # each named dataset's expected path, as typed
    finally:
        shutil.rmtree(short)


@pytest.mark.parametrize("command", [["run", "--help"], ["eval", "--help"], ["bench", "--help"]])
def test_batch_and_resolution_have_one_name_and_an_alias(command):
    r = _invoke(command)
    assert "--batch-size, --batch" in r.stdout and "--img-size, --res" in r.stdout


def test_bench_takes_either_spelling_and_compare_takes_json(tmp_path):
    db = str(tmp_path / "x.db")
    a = _invoke(["bench", "test_resnet", "--batch", "2", "--res", "16", *FAST_BENCH, "--db", db, "--json"])
    b = _invoke(["bench", "test_resnet", "--batch-size", "2", "--img-size", "16", *FAST_BENCH, "--db", db, "--json"])
    assert a.exit_code == b.exit_code == 0, (a.output, b.output)
    for r in (a, b):
        out = json.loads(r.stdout)
        assert out["batch"] == 2 and out["res"] == 16 and out["scan_backend"] is None
    assert _invoke(["compare", "--json", "--db", db]).stdout == _invoke(["compare", "--format", "json",
                                                                          "--db", db]).stdout


def test_busy_machine_is_flagged_and_recorded(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 30.0, 20.0))
    db = str(tmp_path / "x.db")
    r = _invoke(["bench", "test_resnet", "--batch", "1", "--res", "16", *FAST_BENCH, "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    assert "warning: the machine was busy while measuring (load average 40.00" in r.stderr
    out = json.loads(r.stdout)
    assert out["load_avg_1m"] == 40.0 and out["cpu_count"] >= 1
    with Store(db) as s:
        results = {x.key: x.value if x.text is None else x.text for x in s.get_run(out["id"]).results}
    assert results["load_avg_1m"] == 40.0 and "busy" in results["load_warning"]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    r = _invoke(["bench", "test_resnet", "--batch", "1", "--res", "16", *FAST_BENCH, "--no-store", "--json"])
    assert "warning" not in r.stderr and "load_warning" not in json.loads(r.stdout)


def test_run_suite_applies_res_precision_channels_last_and_titles_them():
    from vmbench.engine.suite import run_suite, to_markdown

    rows = run_suite(["test_resnet"], ["infer", "train", "res"], device="cpu", batch=2, warmup=0, repeats=1,
                     res=16, precision="fp32", channels_last=True)
    assert {r["section"] for r in rows} == {"infer", "train"}  # a given resolution leaves the sweep out
    assert all(r["res"] == 16 and r["batch"] == 2 and r["precision"] == "fp32" and r["channels_last"]
               for r in rows) and not any(r.get("error") for r in rows)
    md = to_markdown(rows)
    assert "### Inference, fp32, batch 2, 16², channels-last" in md
    assert "### Training fwd+bwd, no optimizer, fp32, batch 2, 16², channels-last" in md
    assert "128" not in md and "224" not in md


def test_bench_suite_flags_reach_the_suite(monkeypatch, tmp_path):
    import vmbench.engine.suite as suite

    monkeypatch.setattr(suite, "PAPER_MODELS", ("test_resnet",))
    monkeypatch.setattr(suite, "SECTIONS", ("infer", "train", "res"))  # the CPU-friendly ones
    db = str(tmp_path / "x.db")
    r = _invoke(["bench", "--suite", "paper", "--batch-size", "2", "--img-size", "16", "--precision", "fp32",
                 "--channels-last", *FAST_BENCH, "--db", db])
    assert r.exit_code == 0, r.output
    assert "### Inference, fp32, batch 2, 16², channels-last" in r.stdout and "batch 128" not in r.stdout
    with Store(db) as s:
        runs = s.list_runs()
    assert len(runs) == 2 and all(x.params["batch"] == 2 and x.params["res"] == 16 and x.params["channels_last"]
                                  for x in runs)
