"""The options of `vmbench run`, shared by every command that describes a training run (`run`, and the
commands that plan runs for later). `run_options` applies them all; `build_spec` turns their values into a RunSpec.

One vocabulary across commands: `--batch-size` (alias `--batch`), `--img-size` (alias `--res`), `--json`; the
other spelling of each is accepted everywhere (BATCH_SIZE / IMG_SIZE below are what `eval` and `bench` use)."""
from __future__ import annotations

import click

from ..config import DEVICES, SCAN_BACKENDS, default_data_root

def batch_size_option(default=None, help="Batch size."):
    return click.option("--batch-size", "--batch", "batch_size", type=int, default=default,
                        show_default=default is not None, help=help)


def img_size_option(default=None, help="Input resolution."):
    return click.option("--img-size", "--res", "img_size", type=int, default=default,
                        show_default=default is not None, help=help)


class _Workers(click.ParamType):
    """`--workers`: a number >= 0, or `auto` (None: vmbench.data.resolve_workers chooses)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0:
            self.fail(f"{value!r} is not a number >= 0 or 'auto'", param, ctx)
        return n


WORKERS = _Workers()

RUN_OPTIONS = [
    click.option("--task", type=click.Choice(["classification", "detection"]), default="classification",
                 show_default=True,
                 help="detection: Mask R-CNN over the backbone's feature pyramid on shapes-det, coco or a COCO-format "
                      "folder; box and mask AP per epoch (--set det_head='light': a narrow detector for CPUs)."),
    click.option("--recipe", default="smoke", show_default=True,
                 help="Training recipe: a built-in name (smoke, imagenet_vmamba, fgvc) or a path to a .toml file."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override one recipe key (repeatable); VALUE is a TOML literal, e.g. --set optimizer='sgd' "
                      "--set ema=true. Explicit flags override --set."),
    click.option("--epochs", type=int, default=None, help="Training epochs (default: the recipe's)."),
    click.option("--batch-size", "--batch", "batch_size", type=int, default=None,
                 help="Batch size per step, per process with --gpus (default: the recipe's)."),
    click.option("--lr", type=float, default=None,
                 help="Peak learning rate (default: the recipe's; scaled by the batch when it sets lr_base_batch)."),
    click.option("--img-size", "--res", "img_size", type=int, default=None,
                 help="Input resolution (default: the recipe's, else the dataset's)."),
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
    click.option("--amp/--no-amp", default=None, help="Autocast on CUDA (bf16; fp16 with --set amp_dtype='fp16'); "
                 "default: the recipe's."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--scan-backend", type=click.Choice(SCAN_BACKENDS), default="auto", show_default=True,
                 help="VMamba selective-scan backend; the resolved one is recorded on the run."),
    click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
                 help="Where named datasets (imagenet, …) are looked up."),
    click.option("--workers", type=WORKERS, default="auto", show_default=True,
                 help="DataLoader worker processes per GPU process, or auto: up to 8 on CUDA (one per core of the "
                      "process's share), 0 on the CPU for the generated sets."),
    click.option("--weights", type=click.Path(dir_okay=False), default=None,
                 help="Continue from this file, loaded strictly: every key and shape must match, classifier included "
                      "(same classes). Any format --init reads."),
    click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
                 help="Fine-tune from this file: official VMamba release, timm/HF .pth/.bin/.safetensors, or a vmbench "
                      "checkpoint. The classifier head is re-created for the dataset's classes, size-dependent weights "
                      "are adapted to --img-size, and the keys that did not load are reported."),
    click.option("--pretrained", is_flag=True,
                 help="Fine-tune from timm's pretrained weights, only if already in the local Hugging Face / torch hub "
                      "cache (never downloads)."),
    click.option("--trust-checkpoint", is_flag=True,
                 help="Read --weights/--init with torch.load(weights_only=False): only for files you trust (they can "
                      "run code)."),
    click.option("--compile/--no-compile", "compile_", default=None,
                 help="torch.compile the model (default: the recipe's); recorded on the run."),
    click.option("--channels-last/--no-channels-last", default=None,
                 help="Model and inputs in channels_last memory format (default: the recipe's)."),
    click.option("--cuda-graph", "cuda_graph", is_flag=True,
                 help="Capture the whole training step (forward, loss, backward, clipping, AdamW/SGD step) once as a "
                      "CUDA graph after 3 eager warm-up steps and replay it for every batch; recorded on the run, and "
                      "the final benchmark times graph replays too. Needs a GPU, one process (no --gpus N), "
                      "accum_steps 1, bf16 --amp or none (not amp_dtype fp16), classification, no --compile; every "
                      "batch has one shape (the training loader drops a last partial batch)."),
    click.option("--tensorboard", type=click.Path(file_okay=False), default=None, metavar="DIR",
                 help="Also write per-epoch metrics as TensorBoard event files to DIR/<run id>-<model> (needs the "
                      "tensorboard package)."),
    click.option("--skip-bad-images", is_flag=True,
                 help="Skip unreadable images (counted on the run as bad_images) instead of stopping at the first."),
    click.option("--max-train-batches", type=int, default=None, help="Cap batches per epoch (smoke tests)."),
    click.option("--max-val-batches", type=int, default=None, help="Cap validation batches."),
    click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable)."),
    click.option("--deterministic", is_flag=True,
                 help="Deterministic algorithms only (slower); a resumed run then matches an uninterrupted one."),
    click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None, envvar="VMBENCH_CHECKPOINTS",
                 show_envvar=True, metavar="DIR",
                 help="Checkpoint root: each train run keeps its checkpoints and run.log in DIR/<run uuid>/ "
                      "(default: runs/ beside a SQLite database file; required for a server database)."),
    click.option("--gpus", type=int, default=1, show_default=True, metavar="N",
                 help="Data-parallel processes launched through torchrun (DDP), one per GPU; --batch-size is per "
                      "process and lr_base_batch scaling uses the total batch. With --device cpu: N gloo processes "
                      "on the CPU (for testing).")
]


def run_options(f):
    """Decorate a command with every option of `vmbench run` (MODEL and DATASET arguments not included)."""
    for option in reversed(RUN_OPTIONS):
        f = option(f)
    return f


def build_spec(model, dataset, task, recipe, sets, epochs, batch_size, lr, img_size, device, amp, seed, scan_backend,
               data_root, workers, weights, init, pretrained, trust_checkpoint, compile_, channels_last, tensorboard,
               skip_bad_images, max_train_batches, max_val_batches, tags, deterministic, gpus, checkpoint_dir=None,
               cuda_graph=False):
    """(RunSpec, resolved recipe) from the values of `run_options`; ValueError names a bad value."""
    from ..recipe import build_run_spec, parse_set

    flags = dict(epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size, amp=amp, compile=compile_,
                 channels_last=channels_last)
    return build_run_spec(
        model, dataset, recipe, parse_set(sets), flags, device=device, seed=seed, scan_backend=scan_backend,
        data_root=data_root, num_workers=workers, weights=weights, init=init, pretrained=pretrained,
        trust_checkpoint=trust_checkpoint, tensorboard=tensorboard, skip_bad_images=skip_bad_images,
        max_train_batches=max_train_batches, max_val_batches=max_val_batches, tags=list(tags),
        deterministic=deterministic, world_size=gpus, checkpoint_root=checkpoint_dir, task=task,
        cuda_graph=cuda_graph)
