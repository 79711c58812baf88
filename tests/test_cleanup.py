"""`vmbench rm` and `vmbench gc`: what goes (rows, checkpoint files, bytes), what stays (best.pt, logs, files
that are not vmbench's, running runs), dry runs and confirmation. Runs are made through the Store; a running
run is a real live process."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from dbfiles import db_digest
from vmbench.cli import main
from vmbench.store import Store

SIZES = {"last.pt": 3000, "last.prev.pt": 2000, "best.pt": 1000, "run.log": 10}


def _run(store: Store, root, status="completed", model="convnext_t", ended_days_ago=0, files=SIZES, pid=None):
    rid = store.create_run("train", model, "shapes", {})
    folder = root / "runs" / str(rid)
    folder.mkdir(parents=True)
    for name, size in files.items():
        (folder / name).write_bytes(b"x" * size)
    store.log_metrics(rid, {"val_top1": 50.0}, epoch=1)
    if status != "running":
        store.finish_run(rid, status, {"top1": 50.0})
    store.update_run(rid, checkpoint_dir=str(folder), **({"pid": pid} if pid else {}))
    if ended_days_ago:
        from vmbench.store.schema import utcnow

        store.update_run(rid, ended_at=utcnow() - dt.timedelta(days=ended_days_ago))
    return rid, folder


def _cli(args, db, input=None):
    return CliRunner().invoke(main, [*args, "--db", str(db)], input=input)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "x.db"
    Store(str(path)).close()
    return path


def test_rm_dry_run_lists_bytes_and_deletes_nothing(tmp_path, db):
    with Store(str(db)) as s:
        rid, folder = _run(s, tmp_path)
    before = db_digest(db)
    r = _cli(["rm", str(rid), "--dry-run", "--json"], db)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["dry_run"] and out["bytes"] == sum(SIZES.values()) and out["runs"] == 1 and out["files"] == 4
    r = _cli(["rm", str(rid), "--dry-run"], db)
    assert r.exit_code == 0 and "would delete" in r.stderr and "5.9 KiB" in r.stderr
    assert db_digest(db) == before and sorted(os.listdir(folder)) == sorted(SIZES)


def test_rm_deletes_rows_and_folder_keeps_others(tmp_path, db):
    with Store(str(db)) as s:
        a, fa = _run(s, tmp_path)
        b, fb = _run(s, tmp_path)
        s.update_run(b, parent_id=a)  # b resumed from a: b stays, its link is cleared
    r = _cli(["rm", str(a), "--yes"], db)
    assert r.exit_code == 0, r.output
    assert "deleted 4 file(s), 5.9 KiB, 1 run(s)" in r.stdout
    with Store(str(db)) as s:
        assert s.get_run(a) is None and s.get_run(b).parent_id is None and s.get_run(b).results
        import sqlalchemy as sa

        with s.engine.connect() as c:  # metrics and results cascaded
            assert c.execute(sa.text("select count(*) from metrics where run_id = :r"), {"r": a}).scalar() == 0
            assert c.execute(sa.text("select count(*) from results where run_id = :r"), {"r": a}).scalar() == 0
    assert not fa.exists() and sorted(os.listdir(fb)) == sorted(SIZES)


def test_rm_checkpoints_only_keeps_run_and_log(tmp_path, db):
    with Store(str(db)) as s:
        rid, folder = _run(s, tmp_path)
    r = _cli(["rm", str(rid), "--checkpoints-only", "--yes", "--json"], db)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bytes"] == 6000
    assert os.listdir(folder) == ["run.log"]
    with Store(str(db)) as s:
        assert s.get_run(rid).status == "completed"


def test_rm_never_deletes_foreign_files_or_recurses(tmp_path, db):
    with Store(str(db)) as s:
        rid, folder = _run(s, tmp_path)
    (folder / "notes.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.pt").write_bytes(b"x")
    r = _cli(["rm", str(rid), "--yes"], db)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(folder)) == ["notes.txt", "sub"] and (folder / "sub" / "deep.pt").exists()


@pytest.mark.parametrize("args", [["rm", "999", "--yes"], ["rm", "RUNNING", "--yes"],
                                  ["rm", "RUNNING", "--checkpoints-only", "--yes"], ["rm", "1"],
                                  ["gc", "--older-than", "soon", "--yes"]])
def test_refusals_exit_2_and_change_nothing(tmp_path, db, args):
    with Store(str(db)) as s:
        done, _ = _run(s, tmp_path)
        live, live_dir = _run(s, tmp_path, status="running")  # this test's own process: alive
    args = [str(live) if a == "RUNNING" else a for a in args]
    before = db_digest(db)
    r = _cli(args, db)  # CliRunner's stdin is not a terminal: no --yes is refused too
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert db_digest(db) == before and sorted(os.listdir(live_dir)) == sorted(SIZES)


def test_gc_keeps_best_logs_running_and_interrupted(tmp_path, db):
    # A running run owned by a real, live process (it created the row), and one whose process is gone.
    code = textwrap.dedent(f"""
        import sys
        from vmbench.store import Store
        s = Store({str(db)!r}); print(s.create_run("train", "vmamba_t", "shapes", {{}}), flush=True); s.close()
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        live = int(proc.stdout.readline())
        with Store(str(db)) as s:
            folder = tmp_path / "live"
            folder.mkdir()
            for name, size in SIZES.items():
                (folder / name).write_bytes(b"x" * size)
            s.update_run(live, checkpoint_dir=str(folder))
            done, fd = _run(s, tmp_path)
            failed, ff = _run(s, tmp_path, status="failed")
            inter, fi = _run(s, tmp_path, status="interrupted")
        r = _cli(["gc", "--dry-run", "--json"], db)
        assert [i["run_id"] for i in json.loads(r.stdout)["items"]] == [done, failed]
        r = _cli(["gc", "--yes"], db)
        assert r.exit_code == 0, r.output
        assert "deleted 4 file(s), 9.8 KiB" in r.stdout  # last.pt + last.prev.pt of two runs
        assert sorted(os.listdir(fd)) == sorted(os.listdir(ff)) == ["best.pt", "run.log"]
        assert sorted(os.listdir(fi)) == sorted(os.listdir(folder)) == sorted(SIZES)
        r = _cli(["gc", "--status", "interrupted", "--no-keep-best", "--yes"], db)
        assert r.exit_code == 0 and os.listdir(fi) == ["run.log"]
        assert sorted(os.listdir(folder)) == sorted(SIZES)  # the live run: never
    finally:
        proc.communicate("", timeout=60)
    # The process is gone now: its run counts as interrupted and can be collected when named.
    r = _cli(["gc", "--status", "interrupted", "--yes", "--json"], db)
    assert r.exit_code == 0 and json.loads(r.stdout)["files"] == 2 and sorted(os.listdir(folder)) == ["best.pt",
                                                                                                        "run.log"]


def test_gc_older_than(tmp_path, db):
    with Store(str(db)) as s:
        old, fo = _run(s, tmp_path, ended_days_ago=40)
        new, fn = _run(s, tmp_path, ended_days_ago=2)
    r = _cli(["gc", "--older-than", "30d", "--yes"], db)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(fo)) == ["best.pt", "run.log"] and sorted(os.listdir(fn)) == sorted(SIZES)
    r = _cli(["gc", "--yes"], db)
    assert r.exit_code == 0 and sorted(os.listdir(fn)) == ["best.pt", "run.log"]
    r = _cli(["gc", "--yes"], db)
    assert r.exit_code == 0 and "nothing to delete" in r.stderr


def test_confirmation_prompt(tmp_path, db, monkeypatch):
    with Store(str(db)) as s:
        rid, folder = _run(s, tmp_path)
    from vmbench.cli import maintenance

    monkeypatch.setattr(maintenance, "_interactive", lambda: True)  # as if typed at a terminal
    r = _cli(["rm", str(rid)], db, input="n\n")
    assert r.exit_code == 1 and "nothing deleted" in r.stderr and folder.exists()
    r = _cli(["rm", str(rid)], db, input="y\n")
    assert r.exit_code == 0 and not folder.exists()
