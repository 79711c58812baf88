"""Recipes: built-in ones validate; --recipe / --set / flag precedence; user mistakes (exit 2, DB untouched);
the resolved recipe is stored and shown; a CPU run with SGD + step schedule + EMA + mixup + accumulation."""
import json

import pytest
from click.testing import CliRunner

from vmbench.cli import main
from vmbench.recipe import RECIPE_KEYS, build_run_spec, list_recipes, load_recipe, parse_set, resolve_recipe
from vmbench.store import Store

from dbfiles import db_digest


TINY = ["--device", "cpu", "--img-size", "32", "--batch-size", "8", "--max-train-batches", "2",
        "--max-val-batches", "1"]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.parametrize("name", ["smoke", "imagenet_vmamba", "fgvc"])
def test_builtin_recipes_validate(name):
    assert name in list_recipes()
    load_recipe(name)
    spec, r = build_run_spec("vmamba_t", "shapes", name)
    assert r.name == name and set(r.values) == set(RECIPE_KEYS)


def test_builtin_recipe_values():
    spec, _ = build_run_spec("vmamba_t", "imagenet", "imagenet_vmamba")
    assert (spec.epochs, spec.warmup_epochs, spec.batch_size * spec.accum_steps, spec.lr) == (300, 20, 1024, 1e-3)
    assert spec.betas == [0.9, 0.999] and spec.ema and spec.drop_path_rate == 0.2
    assert (spec.mixup, spec.cutmix, spec.random_erasing) == (0.8, 1.0, 0.25)
    assert spec.rand_augment == "rand-m9-mstd0.5-inc1" and spec.label_smoothing == 0.1
    assert build_run_spec("vmamba_b", "imagenet", "imagenet_vmamba")[0].drop_path_rate == 0.5
    spec, _ = build_run_spec("resnet50", "cub200", "fgvc")
    assert (spec.optimizer, spec.nesterov, spec.momentum, spec.lr, spec.weight_decay) == ("sgd", True, 0.9, 0.005, 1e-4)
    assert (spec.scheduler, spec.decay_epochs, spec.decay_rate, spec.batch_size, spec.epochs) == ("step", 20, 0.5, 16, 120)
    assert (spec.img_size, spec.train_resize, spec.val_resize) == (448, 512, 512)


def test_smoke_unchanged():
    spec, _ = build_run_spec("vmamba_t", "shapes")
    assert (spec.epochs, spec.batch_size, spec.img_size, spec.lr, spec.warmup_epochs, spec.clip_grad) == \
        (2, 32, 32, 2e-4, 0.2, 5.0)
    assert (spec.optimizer, spec.scheduler, spec.ema, spec.mixup, spec.accum_steps) == ("adamw", "cosine", False, 0, 1)
    assert spec.checkpoints is False  # minutes-long runs keep no checkpoints
    assert build_run_spec("x", "fake")[0].batch_size == 8
    assert build_run_spec("vmamba_t", "shapes", recipe="fgvc")[0].checkpoints is True


def test_precedence_flag_over_set_over_recipe():
    r = resolve_recipe("smoke", "vmamba_t", "shapes", parse_set(["lr=0.5", "epochs=7", "optimizer=sgd"]),
                       dict(lr=0.25, epochs=None))
    assert (r.values["lr"], r.values["epochs"], r.values["optimizer"]) == (0.25, 7, "sgd")
    assert r.values["weight_decay"] == 0.05 and r.values["ema_decay"] == 0.9999  # recipe, then defaults
    assert parse_set(["betas=[0.9, 0.95]", "rand_augment=''"]) == {"betas": [0.9, 0.95], "rand_augment": ""}


def test_recipe_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('epochs = 3\noptimizer = "sgd"\n[datasets.shapes]\nbatch_size = 4\n')
    spec, r = build_run_spec("m", "shapes", str(p))
    assert (r.name, r.source, spec.epochs, spec.optimizer, spec.batch_size) == ("mine", str(p), 3, "sgd", 4)


def test_dataset_section_follows_aliases_and_splits(tmp_path):
    p = tmp_path / "ft.toml"
    p.write_text('[datasets.stanford_cars]\nbatch_size = 12\n[datasets.cub200]\nbatch_size = 20\n')
    assert resolve_recipe(str(p), "m", "cars").values["batch_size"] == 12
    assert resolve_recipe(str(p), "m", "cub200:split-val0.1-seed0").values["batch_size"] == 20


@pytest.mark.parametrize("args, needle", [
    (["--set", "bogus=1"], "bogus"),
    (["--set", "lr='fast'"], "lr"),
    (["--set", "optimizer='lion'"], "optimizer"),
    (["--set", "seed=3"], "seed"),
    (["--recipe", "nope"], "nope"),
    (["--set", "rand_augment='rand-m9'"], "rand_augment"),  # augmentation not wired into the loaders yet
])
def test_user_mistakes_exit_2_db_untouched(tmp_path, args, needle):
    db = tmp_path / "x.db"
    Store(str(db)).close()
    before = db_digest(db)
    r = CliRunner().invoke(main, ["run", "test_resnet", "shapes", *TINY, "--db", str(db), *args])
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert db_digest(db) == before


def test_unknown_key_in_recipe_file_named(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("epochs = 1\nwarmup = 2\n")
    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "test_resnet", "shapes", "--recipe", str(p), "--db", str(db)])
    assert r.exit_code == 2 and "warmup" in r.stderr and str(p) in r.stderr
    assert not db.exists()


def test_image_augmentation_refused_on_generated_data(tmp_path):
    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "test_resnet", "shapes", "--recipe", "imagenet_vmamba", *TINY,
                                  "--db", str(db)])
    assert r.exit_code == 2 and "rand_augment" in r.stderr and "image datasets only" in r.stderr
    assert not db.exists()


def test_recipe_transforms_on_an_image_folder(tmp_path):
    """fgvc's resize -> crop and imagenet_vmamba's RandAugment + random erasing build and run on real images."""
    import numpy as np
    import torch
    from PIL import Image

    from vmbench.data import Augment, build_datasets, get_dataset_info

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.random.randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(d / f"{i}.png")
    info = get_dataset_info(str(tmp_path / "imgs"))
    for aug in (Augment(train_resize=36, val_resize=36), Augment(rand_augment="rand-m9-mstd0.5-inc1",
                                                                  random_erasing=0.25, hflip=0.0)):
        train, val = build_datasets(info, img_size=32, aug=aug)
        x, y = train[0]
        v, _ = val[0]
        assert x.shape == v.shape == (3, 32, 32) and torch.isfinite(x).all() and y in (0, 1)


def test_sgd_step_ema_mixup_accum_run_stored_and_shown(tmp_path):
    db = str(tmp_path / "x.db")
    r = _invoke(["run", "test_resnet", "shapes", *TINY, "--epochs", "2", "--db", db, "--json",
                 "--set", "optimizer='sgd'", "--set", "nesterov=true", "--set", "scheduler='step'",
                 "--set", "decay_epochs=1", "--set", "decay_rate=0.5", "--set", "ema=true", "--set", "ema_decay=0.9",
                 "--set", "mixup=0.8", "--set", "cutmix=1.0", "--set", "accum_steps=2", "--set", "lr=0.01"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert 0 <= out["ema_top1"] <= 100 and 0 <= out["ema_top5"] <= 100 and out["lr_peak"] == 0.01
    run = Store(db).get_run(out["id"])
    assert run.recipe == "smoke" and run.params["recipe"]["optimizer"] == "sgd"
    assert run.params["recipe"]["accum_steps"] == 2 and run.params["recipe"]["lr"] == 0.01
    lrs = {m.epoch: m.value for m in run.metrics if m.key == "lr"}
    assert lrs == {1: pytest.approx(0.01), 2: pytest.approx(0.005)}  # step decay after epoch 1
    assert {m.key for m in run.metrics} >= {"ema_val_top1", "ema_val_top5"}
    shown = json.loads(_invoke(["show", str(out["id"]), "--db", db, "--json"]).stdout)
    assert shown["recipe"] == "smoke" and set(shown["params"]["recipe"]) == set(RECIPE_KEYS)
    text = _invoke(["show", str(out["id"]), "--db", db]).stdout
    assert "recipe smoke" in text and "mixup_switch_prob" in text


def test_trainer_optimizer_and_accumulation():
    from vmbench.engine.train import Trainer

    spec, _ = build_run_spec("test_resnet", "fake", sets=dict(optimizer="sgd", nesterov=True, accum_steps=2,
                                                               lr=0.004, lr_base_batch=8),
                             flags=dict(batch_size=8, img_size=32), device="cpu", max_train_batches=3)
    t = Trainer(spec)
    t.setup()
    g = t.optimizer.param_groups[-1]
    assert type(t.optimizer).__name__ == "SGD" and g["nesterov"] and g["momentum"] == 0.9
    assert t.lr == pytest.approx(0.008) and t.steps_per_epoch == 2  # 3 micro-batches → 2 optimizer steps
