"""Detection: COCOeval on hand-made ground truth, every backbone's pyramid at odd sizes, shapes-det targets."""
from __future__ import annotations

import math

import pytest
import torch

from vmbench.data import ShapesDetDataset
from vmbench.engine.detection import DETECTION_METRICS, build_detector, coco_metrics
from vmbench.models import create_model
from vmbench.models.features import feature_backbone, size_free_kwargs


def _gt():
    ds = ShapesDetDataset("val", 6, 64)
    return ds, ds.coco_gt()


def _perfect(ds):
    from vmbench.engine.detection import _rle

    out = []
    for i in range(len(ds)):
        _, t = ds[i]
        for j in range(t["labels"].shape[0]):
            x1, y1, x2, y2 = t["boxes"][j].tolist()
            out.append(dict(image_id=i, category_id=int(t["labels"][j]), bbox=[x1, y1, x2 - x1, y2 - y1], score=1.0,
                            segmentation=_rle(t["masks"][j].numpy())))
    return out


def test_cocoeval_perfect_and_none():
    ds, gt = _gt()
    ids = list(range(len(ds)))
    perfect = coco_metrics(gt, _perfect(ds), ids)
    assert perfect["box_ap"] == pytest.approx(100.0) and perfect["mask_ap"] == pytest.approx(100.0)
    assert perfect["box_ap50"] == pytest.approx(100.0) and perfect["box_ap75"] == pytest.approx(100.0)
    none = coco_metrics(gt, [], ids)
    assert set(none) == set(DETECTION_METRICS) and all(v == 0.0 for v in none.values())
    wrong = [dict(r, category_id=r["category_id"] % 10 + 1) for r in _perfect(ds)]  # every class wrong
    assert coco_metrics(gt, wrong, ids)["box_ap"] == 0.0


def test_shapes_det_targets():
    ds = ShapesDetDataset("train", 4, (48, 80), hflip=False)
    img, t = ds[3]
    assert img.shape == (3, 48, 80) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    k = t["labels"].shape[0]
    assert 1 <= k <= 3 and t["masks"].shape == (k, 48, 80) and t["boxes"].shape == (k, 4)
    assert bool((t["labels"] >= 1).all() and (t["labels"] <= 10).all())
    for j in range(k):  # the box is the mask's extent
        ys, xs = torch.nonzero(t["masks"][j], as_tuple=True)
        assert t["boxes"][j].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    again = ShapesDetDataset("train", 4, (48, 80))[3]
    assert torch.equal(again[0], img) and torch.equal(again[1]["masks"], t["masks"])  # deterministic


@pytest.mark.parametrize("name", ["vmamba_t", "swin_t", "convnext_t", "res2net50", "resnet50"])
def test_pyramid_at_odd_sizes(name):
    model = create_model(name, num_classes=0, scan_backend="torch", **size_free_kwargs(name))
    body = feature_backbone(model)
    with torch.no_grad():
        feats = body(torch.randn(1, 3, 97, 131))
    assert [f.shape[1] for f in feats] == body.out_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(math.ceil(97 / 32) * 32 // s, math.ceil(131 / 32) * 32 // s)
                                                     for s in (4, 8, 16, 32)]


def test_detector_trains_and_predicts_at_odd_size():
    det = build_detector(create_model("resnet18", num_classes=0), 10, min_size=61, max_size=97)
    ds = ShapesDetDataset("train", 2, (61, 83))
    images, targets = zip(*[ds[i] for i in range(2)])
    losses = det(list(images), list(targets))
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    det.eval()
    with torch.no_grad():
        out = det([images[0]])
    assert out[0]["boxes"].shape[1] == 4 and out[0]["masks"].shape[-2:] == (61, 83)


def test_task_and_dataset_must_match(tmp_path):
    from click.testing import CliRunner

    from vmbench.cli import main

    db = tmp_path / "x.db"
    r = CliRunner().invoke(main, ["run", "resnet18", "shapes", "--task", "detection", "--db", str(db)])
    assert r.exit_code == 2 and "has no boxes" in r.output
    r = CliRunner().invoke(main, ["run", "resnet18", "shapes-det", "--db", str(db)])
    assert r.exit_code == 2 and "run it with --task detection" in r.output


def test_flops_at_any_height_and_width():
    from vmbench.engine.flops import count_flops

    model = create_model("resnet18", num_classes=0)
    square, _ = count_flops(model, 64)
    wide, _ = count_flops(model, (64, 128))
    assert 1.9 < wide / square < 2.1  # a convnet's FLOPs grow with the pixel count
