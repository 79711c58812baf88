"""The Mask R-CNN recipes' learning-rate steps (multistep scheduler): the lr each epoch trains with, as the trainer
builds the schedule, for the 1x (steps at 8 and 11 of 12) and 3x (27 and 33 of 36) recipes."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from vmbench.recipe import build_run_spec
from vmbench.engine.train import Trainer


def _lr_per_epoch(recipe: str, **sets) -> tuple[float, list[float]]:
    spec, _ = build_run_spec("test_resnet", "shapes-det", recipe, sets=sets, flags=dict(img_size=64),
                             device="cpu", task="detection")
    trainer = Trainer(spec)
    trainer.setup()
    opt, sched = trainer.optimizer, trainer.scheduler
    lrs = [opt.param_groups[0]["lr"]]  # epoch 0 trains with the schedule's value at t = 0
    for e in range(1, spec.epochs):
        sched.step(e)  # what Trainer.epochs() calls after epoch e: the lr of the next one
        lrs.append(opt.param_groups[0]["lr"])
    return spec.lr, lrs


def test_1x_recipe_steps_at_8_and_11():
    base, lrs = _lr_per_epoch("coco_maskrcnn_1x")
    assert base == pytest.approx(1e-4) and len(lrs) == 12
    assert lrs[:8] == pytest.approx([base] * 8)
    assert lrs[8:11] == pytest.approx([base * 0.1] * 3)
    assert lrs[11] == pytest.approx(base * 0.01)


def test_3x_recipe_steps_at_27_and_33():
    base, lrs = _lr_per_epoch("coco_maskrcnn_3x")
    assert len(lrs) == 36
    assert lrs[:27] == pytest.approx([base] * 27)
    assert lrs[27:33] == pytest.approx([base * 0.1] * 6)
    assert lrs[33:] == pytest.approx([base * 0.01] * 3)


def test_multistep_warmup_keeps_the_milestones_absolute():
    base, lrs = _lr_per_epoch("coco_maskrcnn_1x", warmup_epochs=2, epochs=6, decay_milestones=[4])
    assert lrs[0] < lrs[1] < base and lrs[2:4] == pytest.approx([base] * 2)
    assert lrs[4:] == pytest.approx([base * 0.1] * 2)


@pytest.mark.parametrize("sets, message", [
    (["scheduler='multistep'"], "decay_milestones must be given"),
    (["scheduler='multistep'", "decay_milestones=[8, 3]"], "decay_milestones must be increasing"),
    (["decay_milestones=[0]"], "decay_milestones must be increasing epochs > 0"),
    (["decay_milestones=8"], "decay_milestones must be list[int]"),
])
def test_bad_milestones_are_refused(tmp_path, sets, message):
    from vmbench.cli import main

    db = tmp_path / "x.db"
    args = ["run", "test_resnet", "shapes-det", "--task", "detection", "--db", str(db)]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not db.exists()
