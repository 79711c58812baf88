"""Starting weights for `vmbench run` (--init, --weights, --pretrained from the local cache only) and the run options
--compile, --channels-last, --tensorboard; vmbench.weights' adaptation of heads and size-dependent weights."""
import hashlib
import json
import sys

import pytest
import torch
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.config import RunSpec
from vmbench.engine.train import Trainer
from vmbench.store import Store
from vmbench.weights import load_finetune, load_strict, read_weights

from dbfiles import db_digest

TINY = ["--epochs", "1", "--max-train-batches", "2", "--max-val-batches", "1", "--img-size", "32", "--batch-size", "8",
        "--device", "cpu"]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _resnet_file(path, num_classes=1000, wrap="model"):
    """A test_resnet state dict with `num_classes` outputs, saved like the official releases (under "model")."""
    import timm

    torch.manual_seed(1)
    sd = timm.create_model("test_resnet", num_classes=num_classes).state_dict()
    torch.save({wrap: sd, "epoch": 300} if wrap else sd, path)
    return sd


def test_init_recreates_the_head_and_records_the_file(tmp_path):
    path = tmp_path / "imagenet.pth"
    sd = _resnet_file(path)
    db = tmp_path / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", "--init", str(path), *TINY, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["init_missing"] == ["fc.weight", "fc.bias"] and out["init_unexpected"] == []
    assert out["init_mismatched"] == ["fc.weight: file (1000, 96) vs model (10, 96)",
                                      "fc.bias: file (1000,) vs model (10,)"]
    assert out["init_loaded"] == len(sd) - 2
    run = Store(str(db)).get_run(out["id"])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert run.params["init"] == str(path) and run.params["init_sha256"] == sha
    assert run.params["init_path"] == str(path.resolve()) and run.params["init_mode"] == "finetune"
    assert run.params["init_entry"] == "model" and run.params["init_format"] == "torch"
    stored = {x.key: x.text for x in run.results}
    assert json.loads(stored["init_missing"]) == ["fc.weight", "fc.bias"]
    # The summary table lists them.
    r = _invoke(["run", "test_resnet", "shapes", "--init", str(path), *TINY, "--db", str(db)])
    assert r.exit_code == 0 and "init_missing" in r.stdout and "fc.weight, fc.bias" in r.stdout


def test_init_loads_the_backbone_weights(tmp_path):
    path = tmp_path / "w.pth"
    sd = _resnet_file(path, wrap=None)
    tr = Trainer(RunSpec(model="test_resnet", dataset="shapes", img_size=32, device="cpu", init=str(path)))
    tr.setup()
    own = tr.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (10, 96)


def test_strict_weights_still_refuse_another_head(tmp_path):
    path = tmp_path / "w.pth"
    _resnet_file(path)
    db = tmp_path / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", "--weights", str(path), *TINY, "--db", str(db)])
    assert r.exit_code == 2 and "shape mismatches: fc.weight" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--init", "{p}", "--pretrained"], "give one of --weights"),
    (["--init", "{missing}"], "--init file not found"),
    (["--init", "{pickled}"], "--trust-checkpoint"),
    (["--tensorboard", "{file}/tb"], "TensorBoard folder"),
])
def test_start_weight_mistakes_exit_2_and_write_nothing(tmp_path, args, message):
    import argparse

    path = tmp_path / "w.pth"
    _resnet_file(path)
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    (tmp_path / "file").write_text("")
    db = tmp_path / "x.db"
    Store(str(db)).close()
    before = db_digest(db)
    args = [a.format(p=path, missing=tmp_path / "nope.pth", pickled=tmp_path / "pickled.pth", file=tmp_path / "file")
            for a in args]
    r = _invoke(["run", "test_resnet", "shapes", *args, *TINY, "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert db_digest(db) == before


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_pretrained_not_cached_is_one_line_exit_2(empty_caches):
    db = empty_caches / "x.db"
    Store(str(db)).close()
    before = db_digest(db)
    r = _invoke(["run", "resnet50", "shapes", "--pretrained", *TINY, "--db", str(db)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not in the local cache" in r.stderr and "resnet50.a1_in1k" in r.stderr
    assert str(empty_caches / "hf") in r.stderr and str(empty_caches / "torch") in r.stderr
    assert "never downloads" in r.stderr and db_digest(db) == before
    r = _invoke(["run", "vmamba_t", "shapes", "--pretrained", *TINY, "--db", str(db)])
    assert r.exit_code == 2 and "no timm pretrained weights" in r.stderr and "--init" in r.stderr
    assert db_digest(db) == before


def test_pretrained_from_the_hf_cache(empty_caches):
    pytest.importorskip("safetensors")
    import timm
    from safetensors.torch import save_file

    # The layout huggingface_hub leaves behind: refs/main names the snapshot holding the files.
    repo = empty_caches / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    save_file(timm.create_model("test_resnet").state_dict(), snap / "model.safetensors")
    db = empty_caches / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", "--pretrained", *TINY, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["init_tag"] == "test_resnet.r160_in1k" and out["init_format"] == "safetensors"
    assert out["init_path"] == str(snap / "model.safetensors") and out["init_missing"] == ["fc.weight", "fc.bias"]
    assert Store(str(db)).get_run(out["id"]).params["pretrained"] is True


def test_compile_and_channels_last_are_used_and_recorded(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(model, *args, **kw):  # inductor needs a C++ toolchain and minutes on a CPU: record the call
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    db = tmp_path / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", "--compile", "--channels-last", *TINY, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["compile"] is True and out["channels_last"] is True and len(compiled) == 1
    assert compiled[0].conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    run = Store(str(db)).get_run(out["id"])
    assert run.params["compile"] is True and run.params["recipe"]["compile"] is True
    # A recipe key too: --set compile=true does the same, and the default is off.
    r = _invoke(["run", "test_resnet", "shapes", "--set", "compile=true", *TINY, "--db", str(db), "--json"])
    assert json.loads(r.stdout)["compile"] is True and len(compiled) == 2
    r = _invoke(["run", "test_resnet", "shapes", *TINY, "--db", str(db), "--json"])
    assert json.loads(r.stdout)["compile"] is False and len(compiled) == 2


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    db = tmp_path / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", *TINY, "--epochs", "2", "--tensorboard", str(tmp_path / "tb"),
                 "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.stdout)["id"]
    folder = tmp_path / "tb" / f"{run_id}-test_resnet"
    assert Store(str(db)).get_run(run_id).params["tensorboard_dir"] == str(folder)
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert {"train_loss", "val_top1", "val_loss", "lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val_top1")] == [1, 2]


def test_tensorboard_missing_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    db = tmp_path / "x.db"
    r = _invoke(["run", "test_resnet", "shapes", *TINY, "--tensorboard", str(tmp_path / "tb"), "--db", str(db)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "pip install tensorboard" in r.stderr
    assert not db.exists()


# -- vmbench.weights: official VMamba releases, size-dependent weights of timm models ------------------------------
def test_official_vmamba_release_loads_strictly_and_for_fine_tuning(tmp_path):
    from vmbench.models.vmamba import _create_vmamba

    cfg = dict(dims=16, depths=(1, 2), d_state=2, ssm_ratio=1.5, dt_rank=3)
    torch.manual_seed(0)
    src = _create_vmamba(cfg, num_classes=1000)
    legacy = {k.replace("classifier.head.", "head.").replace("classifier.norm.", "norm."): v
              for k, v in src.state_dict().items()}  # the release's top-level head/norm names
    torch.save({"model": legacy, "optimizer": {}, "epoch": 299}, tmp_path / "vssm.pth")
    w = read_weights(tmp_path / "vssm.pth")
    assert w.format == "torch" and w.entry == "model"
    same = _create_vmamba(cfg, num_classes=1000)
    load_strict(same, w)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), src.state_dict().values()))
    other = _create_vmamba(cfg, num_classes=7)
    report = load_finetune(other, w)
    assert report.missing == ["classifier.head.weight", "classifier.head.bias"] and report.unexpected == []
    assert torch.equal(other.state_dict()["classifier.norm.weight"], src.state_dict()["classifier.norm.weight"])


def test_position_embeddings_and_swin_tables_are_resized(tmp_path):
    import timm
    from timm.models.swin_transformer import SwinTransformer

    vit = timm.create_model("test_vit", num_classes=1000)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    small = timm.create_model("test_vit", num_classes=10, img_size=32)
    report = load_finetune(small, read_weights(tmp_path / "vit.pth"))
    assert report.resized == ["pos_embed"] and report.missing == ["head.weight", "head.bias"]

    kw = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    torch.save(SwinTransformer(img_size=64, window_size=4, **kw).state_dict(), tmp_path / "swin.pth")
    swin = SwinTransformer(img_size=32, window_size=2, num_classes=10, **kw)
    report = load_finetune(swin, read_weights(tmp_path / "swin.pth"))
    assert report.resized and all(k.endswith("relative_position_bias_table") for k in report.resized)
    assert report.missing == ["head.fc.weight", "head.fc.bias"] and report.unexpected == []
