"""Image transforms: a recipe's augmentation (Augment), timm's train / eval transforms resolved from the model's
pretrained cfg, and the evaluation settings recorded on a run (eval_transform_info)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ._common import GENERATED, IMAGENET_MEAN, IMAGENET_STD, DataError, DatasetInfo

@dataclass(frozen=True)
class Augment:
    """A recipe's image transforms; they apply to image-file datasets (ImageFolder, CIFAR).

    rand_augment: timm RandAugment spec (e.g. "rand-m9-mstd0.5-inc1") or None; random_erasing: probability;
    hflip: horizontal-flip probability; train_resize / val_resize: resize the shorter side to this, then
    random-crop (train) / center-crop (val) the input size — the fine-grained protocol (512 -> 448).
    Without a resize, training uses timm's random-resized crop and evaluation the model's crop_pct.
    """

    rand_augment: str | None = None
    random_erasing: float = 0.0
    hflip: float = 0.5
    train_resize: int | None = None
    val_resize: int | None = None

    def changed(self) -> list[str]:
        """Names of the fields that differ from the defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


def _eval_settings(img_size: int, model_cfg: dict | None, aug: Augment) -> dict:
    """The evaluation preprocessing for an image dataset: the model's pretrained cfg (timm's resolve_data_config)
    with the recipe's val_resize, if any, in place of crop_pct. See eval_transform_info."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, pretrained_cfg=dict(model_cfg or {}))
    if aug.val_resize:
        crop_pct, crop_mode, resize = img_size / aug.val_resize, "center", int(aug.val_resize)
    else:
        crop_pct, crop_mode = float(cfg["crop_pct"]), cfg.get("crop_mode") or "center"
        resize = math.floor(img_size / crop_pct)
    return dict(input_size=[int(v) for v in cfg["input_size"]], interpolation=str(cfg["interpolation"]),
                crop_pct=float(crop_pct), crop_mode=crop_mode, resize=resize,
                mean=[float(v) for v in cfg["mean"]], std=[float(v) for v in cfg["std"]])


def eval_transform_info(info: DatasetInfo, img_size: int | None = None, model_cfg: dict | None = None,
                        aug: Augment = Augment()) -> dict:
    """The evaluation preprocessing that build_loaders / build_datasets apply for the same arguments, JSON-able,
    to record on the result:

        {input_size: [3, H, W], interpolation: "bicubic" | "bilinear" | …, crop_pct: float,
         crop_mode: "center" | "squash" | "border", resize: int (edge size before the crop: the shorter side in
         "center" mode; floor(H / crop_pct), or the recipe's val_resize), mean: [3 floats], std: [3 floats]}

    interpolation, crop_pct and mean/std come from the model's pretrained cfg (timm defaults without one); the
    recipe's val_resize replaces crop_pct (crop_pct = H / val_resize). Generated datasets (shapes, fake) are
    tensors with no resize or crop: those keys are None; mean/std are ImageNet's for shapes, None for fake.
    """
    size = int(img_size or info.img_size)
    if info.kind in GENERATED:
        stats = info.kind == "builtin"
        return dict(input_size=[3, size, size], interpolation=None, crop_pct=None, crop_mode=None, resize=None,
                    mean=list(IMAGENET_MEAN) if stats else None, std=list(IMAGENET_STD) if stats else None)
    return _eval_settings(size, model_cfg, aug)


def _timm_transforms(img_size: int, model_cfg: dict | None, aug: Augment = Augment()):
    """(train, eval) transforms: PIL image → (3, img_size, img_size) float32, normalised."""
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    ev = _eval_settings(img_size, model_cfg, aug)
    common = dict(input_size=tuple(ev["input_size"]), interpolation=ev["interpolation"], mean=ev["mean"],
                  std=ev["std"])
    if aug.train_resize:
        from timm.data import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        steps = [T.Resize(aug.train_resize), T.RandomCrop(img_size), T.RandomHorizontalFlip(aug.hflip)]
        if aug.rand_augment:
            img_mean = tuple(round(255 * m) for m in ev["mean"])
            steps.append(rand_augment_transform(aug.rand_augment, {"img_mean": img_mean}))
        steps += [T.ToTensor(), T.Normalize(ev["mean"], ev["std"])]
        if aug.random_erasing > 0:
            steps.append(RandomErasing(aug.random_erasing, mode="pixel", device="cpu"))
        train_tf = T.Compose(steps)
    else:
        train_tf = create_transform(**common, is_training=True, hflip=aug.hflip, auto_augment=aug.rand_augment,
                                    re_prob=aug.random_erasing)
    if aug.val_resize:
        val_tf = T.Compose([T.Resize(aug.val_resize, interpolation=str_to_interp_mode(ev["interpolation"])),
                            T.CenterCrop(img_size), T.ToTensor(), T.Normalize(ev["mean"], ev["std"])])
    else:
        val_tf = create_transform(**common, crop_pct=ev["crop_pct"], crop_mode=ev["crop_mode"], is_training=False)
    return train_tf, val_tf


def check_augment(info: DatasetInfo, aug: Augment) -> None:
    """Generated tensor datasets (shapes, fake) take no image transforms: refuse a recipe that sets them."""
    changed = aug.changed()
    if changed and info.kind in GENERATED:
        raise DataError(f"{info.name} is generated tensors; image augmentation ({', '.join(changed)}) applies to "
                        f"image datasets only (reset it with --set, e.g. --set {changed[0]}=...)")
