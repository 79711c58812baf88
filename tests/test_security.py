"""Security audit (docs/SECURITY.md), one test per rule: SQL only through bound parameters, no path built from
user text escapes its folder, weights read with weights_only unless --trust-checkpoint, no shell."""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.store import Store

SRC = Path(__file__).resolve().parents[1] / "vmbench"
SQL_CALLS = {"text", "exec_driver_sql", "execute", "executescript"}
SQL = "x'); DROP TABLE runs; --"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            yield name, node


def _sources():
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(SRC.rglob("*.py")) if "kernels" not in p.parts]


def test_sql_is_never_built_from_strings():
    """Every raw SQL string passed to text() / execute() / exec_driver_sql() is a literal (values go in as bound
    parameters); an f-string or concatenation is allowed only when it interpolates module constants (PRAGMA)."""
    offenders = []
    for path, tree in _sources():
        for name, call in _calls(tree):
            if name not in SQL_CALLS or not call.args:
                continue
            arg = call.args[0]
            if isinstance(arg, ast.JoinedStr):
                names = [n.id for v in arg.values if isinstance(v, ast.FormattedValue) for n in ast.walk(v.value)
                         if isinstance(n, ast.Name)]
                if not all(n.isupper() for n in names):  # only CONSTANTS may be interpolated
                    offenders.append(f"{path.name}:{call.lineno}")
            elif isinstance(arg, (ast.BinOp, ast.Call)) and name in ("text", "exec_driver_sql", "executescript"):
                offenders.append(f"{path.name}:{call.lineno}")
    assert not offenders, offenders


def test_no_shell():
    offenders = []
    for path, tree in _sources():
        for name, call in _calls(tree):
            if name in ("system", "popen") and isinstance(call.func, ast.Attribute) and \
                    getattr(call.func.value, "id", "") == "os":
                offenders.append(f"{path.name}:{call.lineno} os.{name}")
            for kw in call.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    offenders.append(f"{path.name}:{call.lineno} shell=")
    assert not offenders, offenders


def test_sql_in_tags_and_filters_is_data(tmp_path):
    """Quotes and SQL in tags are stored verbatim; in a filter they match nothing and drop nothing."""
    db = tmp_path / "x.db"
    with Store(str(db)) as s:
        rid = s.create_run("bench", "convnext_t", None, {"note": SQL}, tags=[SQL, 'say "hi"', "[bold]x[/bold]"])
        s.finish_run(rid, "completed", {"img_s": 1.0, "note": SQL})
    r = CliRunner().invoke(main, ["runs", "--db", str(db), "--model", "x' OR '1'='1", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = CliRunner().invoke(main, ["show", str(rid), "--db", str(db), "--json"])
    assert r.exit_code == 0 and SQL in json.loads(r.stdout)["tags"]
    with Store(str(db)) as s:
        assert s.count_runs() == 1 and s.get_run(rid).tags[0] == SQL


def test_model_name_cannot_leave_the_tensorboard_folder(tmp_path):
    """A timm name takes a `.tag`; a tag with a path in it ("resnet18./../../x") was accepted as a model name
    and put in the TensorBoard folder's path (DIR/<id>-<model>), outside DIR. Now it is not a model name."""
    from vmbench.models import UnknownModelError, check_model_name, resolve_model_name

    for bad in ("resnet18./../../x", "resnet18/../x", "../resnet18", "resnet18.a1_in1k/../../x", "a b"):
        with pytest.raises(UnknownModelError):
            resolve_model_name(bad)
        with pytest.raises(UnknownModelError):
            check_model_name(bad)
    assert resolve_model_name("resnet50.a1_in1k") == "resnet50.a1_in1k"  # a real tag still works
    tb = tmp_path / "tb" / "inner"
    tb.mkdir(parents=True)
    r = CliRunner().invoke(main, ["run", "resnet18./../../escaped", "shapes", "--tensorboard", str(tb),
                                  "--db", str(tmp_path / "x.db")])
    assert r.exit_code == 2 and "unknown model" in r.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "x.db").exists()


def test_dataset_split_names_stay_in_their_folder():
    """The split tag of `cub200:split-…` becomes a file name: only the canonical numeric form is accepted."""
    from vmbench.data import DataError, get_dataset_info

    for bad in ("cub200:split-val0.1-seed0/../../x", "cub200:split-../../etc", "cub200:split-val0.1-seed0\0"):
        with pytest.raises(DataError):
            get_dataset_info(bad, "/nonexistent-root")


def test_gc_follows_no_symlink_and_spares_other_files(tmp_path):
    """A checkpoint folder (from the database) is only emptied of vmbench's own file names, never through a
    symlink, never recursively."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "weights.pt").write_bytes(b"keep")
    folder = tmp_path / "runs" / "1"
    folder.mkdir(parents=True)
    (folder / "last.pt").symlink_to(outside / "weights.pt")
    (folder / "my_model.pt").write_bytes(b"mine")
    (folder / "last.prev.pt").write_bytes(b"x" * 10)
    db = tmp_path / "x.db"
    with Store(str(db)) as s:
        rid = s.create_run("train", "convnext_t", "shapes", {})
        s.finish_run(rid, "completed", {})
        s.update_run(rid, checkpoint_dir=str(folder))
    r = CliRunner().invoke(main, ["rm", str(rid), "--yes", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert (outside / "weights.pt").read_bytes() == b"keep" and (folder / "my_model.pt").exists()
    assert (folder / "last.pt").is_symlink() and not (folder / "last.prev.pt").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_load_without_running_code_unless_trusted(tmp_path):
    """A .pth that runs code when unpickled is refused (exit 2, nothing run, nothing written) unless
    --trust-checkpoint says the file is trusted."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f, protocol=2)
    db = tmp_path / "x.db"
    Store(str(db)).close()
    before = (db.read_bytes(), os.path.exists(str(db) + "-wal"))
    r = CliRunner().invoke(main, ["eval", "test_resnet", "shapes", "--weights", str(evil), "--device", "cpu",
                                  "--db", str(db)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.output
    assert not marker.exists() and (db.read_bytes(), os.path.exists(str(db) + "-wal")) == before
    r = CliRunner().invoke(main, ["eval", "test_resnet", "shapes", "--weights", str(evil), "--device", "cpu",
                                  "--trust-checkpoint", "--db", str(db)])
    assert marker.exists()  # the user vouched for the file: it was unpickled in full (and is not a state dict)
    assert r.exit_code == 2


def test_loads_in_source_pass_weights_only():
    """Every torch.load in vmbench passes weights_only explicitly (True, or the caller's trust flag)."""
    offenders = []
    for path, tree in _sources():
        for name, call in _calls(tree):
            on_torch = isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch"
            if name == "load" and on_torch:
                kw = {k.arg: k.value for k in call.keywords}
                if "weights_only" not in kw:
                    offenders.append(f"{path.name}:{call.lineno}")
    assert not offenders, offenders
    text = (SRC / "weights.py").read_text()
    assert re.search(r"weights_only=False", text) and "trust" in text
