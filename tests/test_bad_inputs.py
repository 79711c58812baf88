"""Bad inputs through the real command line: each one is refused with one line on stderr, exit code 2, and a
database byte-identical to before (sha256 of the file and its WAL). Refusals happen before training starts
(most before torch is imported). Images that are merely unusual (CMYK, 16-bit, grey) are read, converted to
RGB; broken ones stop the run with one line naming the file, or are skipped with --skip-bad-images."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dbfiles import db_digest
from vmbench.cli import main
from vmbench.store import Store

TINY = ["--epochs", "1", "--device", "cpu", "--img-size", "16", "--batch-size", "4"]


def _images(folder, n=2, size=16, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _dataset(root, classes=("a", "b"), n=2):
    for split in ("train", "val"):
        for c in classes:
            _images(root / split / c, n)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Folders and files the cases refer to by name ({good}, {empty}, …)."""
    t = tmp_path_factory.mktemp("bad")
    paths = {"good": _dataset(t / "good")}
    paths["empty"] = _dataset(t / "empty")
    (paths["empty"] / "train" / "c").mkdir()  # a class folder with no image
    (paths["empty"] / "val" / "c").mkdir()
    paths["notrain"] = t / "notrain"
    _images(paths["notrain"] / "val" / "a")
    paths["noval"] = t / "noval"
    _images(paths["noval"] / "train" / "a")
    paths["markup"] = t / "[bold]data[/bold]"  # missing, with rich markup in its name
    paths["markup_close"] = t / "x[/x]"
    recipes = {"badtoml": "epochs = = 1\n", "unknownkey": "epochs = 1\nwarmup = 2\n", "badvalue": 'epochs = "two"\n',
               "negvalue": "lr = -0.5\n", "badtable": "datasets = 3\n", "nesterov": "nesterov = true\n"}
    for name, text in recipes.items():
        paths[name] = t / f"{name}.toml"
        paths[name].write_text(text)
    paths["file"] = t / "plain.txt"
    paths["file"].write_text("not a folder")
    paths["weights"] = t / "w.pth"
    paths["weights"].write_bytes(b"\0" * 16)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def db(tmp_path):
    """A database holding one completed run (so that 'unchanged' covers rows, not just an empty schema)."""
    path = tmp_path / "x.db"
    with Store(str(path)) as s:
        rid = s.create_run("train", "convnext_t", "shapes", {"epochs": 1}, tags=["keep"])
        s.finish_run(rid, "completed", {"top1": 12.5})
    return path


SQL = "x'); DROP TABLE runs; --"
CASES = {
    "unknown model": ["run", "no_such_model", "shapes"],
    "model typo": ["run", "convnext_tny", "shapes"],
    "SQL as model name": ["run", SQL, "shapes"],
    "unknown dataset": ["run", "convnext_t", "no_such_dataset"],
    "missing path": ["run", "convnext_t", "./no/such/folder"],
    "a file as dataset": ["run", "convnext_t", "{file}"],
    "empty class folder": ["run", "convnext_t", "{empty}"],
    "no train folder": ["run", "convnext_t", "{notrain}"],
    "no val folder": ["run", "convnext_t", "{noval}"],
    "[markup] in a path": ["run", "convnext_t", "{markup}"],
    "[/x] in a path": ["run", "convnext_t", "{markup_close}"],
    "named dataset without data root": ["run", "convnext_t", "imagenet", "--data-root", "/nonexistent"],
    "bad fake:N": ["run", "convnext_t", "fake:lots"],
    "bad split name": ["run", "convnext_t", "cifar10:split-val0.1-seed0", "--data-root", "{good}"],
    "epochs 0": ["run", "convnext_t", "shapes", "--epochs", "0"],
    "epochs -1": ["run", "convnext_t", "shapes", "--epochs", "-1"],
    "batch 0": ["run", "convnext_t", "shapes", "--batch-size", "0"],
    "batch 0 (alias)": ["run", "convnext_t", "shapes", "--batch", "0"],
    "img size 0 (alias)": ["run", "convnext_t", "shapes", "--res", "0"],
    "lr -1": ["run", "convnext_t", "shapes", "--lr", "-1"],
    "workers -1": ["run", "convnext_t", "shapes", "--workers", "-1"],
    "gpus 0": ["run", "convnext_t", "shapes", "--gpus", "0"],
    "--set epochs=0": ["run", "convnext_t", "shapes", "--set", "epochs=0"],
    "--set unknown key": ["run", "convnext_t", "shapes", "--set", "bogus=1"],
    "--set wrong type": ["run", "convnext_t", "shapes", "--set", "lr='fast'"],
    "--set run setting": ["run", "convnext_t", "shapes", "--set", "seed=3"],
    "--set without =": ["run", "convnext_t", "shapes", "--set", "epochs"],
    "--set nan": ["run", "convnext_t", "shapes", "--set", "lr=nan"],
    "--set inf": ["run", "convnext_t", "shapes", "--set", "weight_decay=inf"],
    "unknown recipe": ["run", "convnext_t", "shapes", "--recipe", "nope"],
    "missing recipe file": ["run", "convnext_t", "shapes", "--recipe", "./nope.toml"],
    "recipe not TOML": ["run", "convnext_t", "shapes", "--recipe", "{badtoml}"],
    "recipe unknown key": ["run", "convnext_t", "shapes", "--recipe", "{unknownkey}"],
    "recipe wrong type": ["run", "convnext_t", "shapes", "--recipe", "{badvalue}"],
    "recipe bad value": ["run", "convnext_t", "shapes", "--recipe", "{negvalue}"],
    "recipe table not a table": ["run", "convnext_t", "shapes", "--recipe", "{badtable}"],
    "recipe nesterov with adamw": ["run", "convnext_t", "shapes", "--recipe", "{nesterov}"],
    "missing weights": ["run", "convnext_t", "shapes", "--weights", "/nonexistent.pth"],
    "weights and init": ["run", "convnext_t", "shapes", "--weights", "{weights}", "--init", "{weights}"],
    "cuda without a GPU": ["run", "convnext_t", "shapes", "--device", "cuda"],
    "triton on the CPU": ["run", "vmamba_t", "shapes", "--scan-backend", "triton", "--device", "cpu"],
    "tensorboard dir is a file": ["run", "convnext_t", "shapes", "--tensorboard", "{file}", *TINY],
    "quotes and SQL in tags": ["run", "no_such_model", "shapes", "--tag", SQL, "--tag", 'say "hi"'],
    "bench unknown model": ["bench", "no_such_model"],
    "bench batch 0": ["bench", "convnext_t", "--batch", "0"],
    "bench no model": ["bench"],
    "suite --cuda-graph on cpu": ["bench", "--suite", "paper", "--cuda-graph", "--device", "cpu"],
    "suite --compile --cuda-graph": ["bench", "--suite", "paper", "--compile", "--cuda-graph"],
    "suite batch 0": ["bench", "--suite", "paper", "--batch-size", "0"],
    "eval missing weights": ["eval", "convnext_t", "shapes", "--weights", "/nonexistent.pth"],
    "eval unknown model": ["eval", "no_such_model", "shapes", "--weights", "{weights}"],
    "eval unknown dataset": ["eval", "convnext_t", "no_such_dataset", "--weights", "{weights}"],
    "resume unknown run": ["resume", "999"],
    "resume a completed run": ["resume", "1"],
    "show unknown run": ["show", "999"],
    "rm unknown run": ["rm", "999", "--yes"],
    "gc bad age": ["gc", "--older-than", "a while"],
}


def _fill(args, data):
    return [data[a[1:-1]] if a.startswith("{") and a.endswith("}") else a for a in args]


@pytest.mark.parametrize("case", list(CASES))
def test_refused_one_line_exit_2_db_unchanged(case, data, db, monkeypatch):
    import torch

    if "cuda" in CASES[case] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.delenv("VMBENCH_DATA", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _fill(CASES[case], data)
    before = db_digest(db)
    r = CliRunner().invoke(main, [*args, "--db", str(db)])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert db_digest(db) == before


def test_messages_name_the_culprit(data, db):
    def err(*args):
        return CliRunner().invoke(main, [*args, "--db", str(db)]).stderr

    assert err("run", "convnext_t", "shapes", "--epochs", "-1") == "error: --epochs must be > 0, got -1\n"
    assert "--set epochs" in err("run", "convnext_t", "shapes", "--set", "epochs=0")
    assert data["negvalue"] in err("run", "convnext_t", "shapes", "--recipe", data["negvalue"])
    assert "[bold]data[/bold]" in err("run", "convnext_t", data["markup"])  # shown as typed, not as markup
    assert "did you mean convnext_t" in err("run", "convnext_tny", "shapes")
    assert err("bench", "convnext_t", "--batch", "0") == "error: --batch-size must be > 0, got 0\n"
    assert err("eval", "convnext_t", "shapes", "--weights", data["weights"], "--res", "-3") == \
        "error: --img-size must be > 0, got -3\n"


def test_refused_before_torch_is_imported(data, tmp_path):
    """The cheap checks (model name, dataset folders, flag values) run without importing torch (nor SQLAlchemy):
    a typo is refused in well under a second instead of the 5 s a torch + timm import takes."""
    code = ("import sys\nfrom vmbench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print(e.code, 'torch' in sys.modules, 'sqlalchemy' in sys.modules, file=sys.stderr)\n")
    for args in (["run", "no_such_model", "shapes"], ["run", "convnext_t", data["empty"]],
                 ["run", "convnext_t", "shapes", "--epochs", "-1"], ["eval", "nosuch", "shapes", "--weights",
                                                                    data["weights"]], ["bench", "nosuch"]):
        p = subprocess.run([sys.executable, "-c", code, *args, "--db", str(tmp_path / "x.db")], capture_output=True,
                           text=True, timeout=120)
        assert p.stderr.splitlines()[-1] == "2 False False", (args, p.stderr)
    assert not (tmp_path / "x.db").exists()


# -- the database itself -----------------------------------------------------------------------------------------
def _newer_schema(path):
    with Store(str(path)) as s:
        rid = s.create_run("bench", "convnext_t", None, {})
        s.finish_run(rid, "completed", {"img_s": 1.0})
        with s.engine.begin() as c:
            import sqlalchemy as sa

            c.execute(sa.text("insert into schema_migrations (name, applied_at) values (:n, :t)"),
                      {"n": "9999_from_the_future", "t": "2030-01-01 00:00:00"})


@pytest.mark.parametrize("kind", ["folder", "garbage", "newer schema", "read-only"])
def test_database_paths(tmp_path, kind):
    path = tmp_path / "x.db"
    if kind == "folder":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "newer schema":
        _newer_schema(path)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes read-only files")
        Store(str(path)).close()
        path.chmod(0o444)
    before = db_digest(path) if path.is_file() else sorted(os.listdir(path))
    for args in (["run", "convnext_t", "shapes", *TINY], ["bench", "convnext_t", "--batch", "1", "--res", "16"],
                 *([["runs"], ["show", "1"]] if kind != "newer schema" else [])):
        r = CliRunner().invoke(main, [*args, "--db", str(path)])
        assert r.exit_code == 2, (kind, args, r.output)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert (db_digest(path) if path.is_file() else sorted(os.listdir(path))) == before


# -- images -------------------------------------------------------------------------------------------------------
def _odd_images_dataset(root):
    """Every class has ordinary images plus the unusual ones, in val (every val image is read)."""
    _dataset(root, n=4)
    Image.new("CMYK", (16, 16), (10, 200, 30, 40)).save(root / "val" / "a" / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(root / "val" / "a" / "grey16.png")
    Image.new("L", (16, 16), 128).save(root / "val" / "b" / "grey.png")
    Image.new("LA", (16, 16), (90, 255)).save(root / "val" / "b" / "grey_alpha.png")
    (root / "val" / "b" / "README.txt").write_text("not an image: ignored by its extension")
    return root


def test_cmyk_16bit_grey_images_are_read_as_rgb(tmp_path):
    from vmbench.data._common import _load_image

    root = _odd_images_dataset(tmp_path / "odd")
    for name, expect in (("a/cmyk.jpg", None), ("a/grey16.png", 40000 >> 8), ("b/grey.png", 128),
                         ("b/grey_alpha.png", 90)):
        img = _load_image(root / "val" / name)
        assert img.mode == "RGB" and img.size == (16, 16)
        if expect is not None:  # a 16-bit grey image is scaled, not clipped to white
            assert np.asarray(img).mean() == pytest.approx(expect, abs=1)
    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "test_resnet", str(root), *TINY, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    with Store(str(db)) as s:
        run = s.list_runs()[0]
        assert run.status == "completed" and run.scan_backend is None


@pytest.mark.parametrize("broken", ["truncated", "not an image"])
def test_broken_image_stops_with_one_line_or_is_skipped(tmp_path, broken):
    root = _dataset(tmp_path / "d", n=4)
    bad = root / "val" / "a" / ("t.jpg" if broken == "truncated" else "x.png")
    if broken == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.jpg")
        data = (tmp_path / "t.jpg").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_text("hello")
    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "test_resnet", str(root), *TINY, "--db", str(db)])
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run 1 failed: ") and str(bad) in last and "--skip-bad-images" in last, last
    with Store(str(db)) as s:
        assert s.get_run(1).status == "failed" and str(bad) in s.get_run(1).error
    r = CliRunner().invoke(main, ["run", "test_resnet", str(root), *TINY, "--db", str(db), "--skip-bad-images",
                                  "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.stdout)["bad_images"] == 1
