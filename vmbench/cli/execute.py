"""Commands that execute work in this process: `run`, `resume`, `eval`, `bench`."""
from __future__ import annotations

import contextlib

import click

from ..config import DETECTION_BENCH_CLASSES, TASKS, parse_img_size
from ._common import (DEVICES, PRECISIONS, SCAN_BACKENDS, _console, _json_out, _run_errors, _text, _user_error,
                      db_option, default_data_root, json_option, main)
from .options import WORKERS, batch_size_option, build_spec, img_size_option, run_options


@main.command()
@click.argument("model")
@click.argument("dataset")
@run_options
@db_option
@json_option
def run(model, dataset, db, as_json, **opts):
    """Train MODEL on DATASET with a recipe, evaluate it, benchmark it; record everything.

    The first Ctrl-C or SIGTERM stops after the current optimizer step, saves a checkpoint (when the run keeps
    them) and records the run as interrupted, to go on with `vmbench resume RUN_ID`; a second one stops at once.
    With --gpus N all N processes stop after the same step.
    """
    with _cheap_checks():
        spec, resolved = build_spec(model, dataset, **opts)  # the model name is checked here, without torch
        _check_dataset(spec.dataset, spec.data_root)
    from ..scheduler.local import execute_run

    with _run_errors("run", as_json):
        run_id, results = execute_run(spec, db, console=_console(stderr=True), show_progress=True, recipe=resolved)
    if as_json:
        _json_out({"id": run_id, "status": "completed", **results})
    else:
        _print_summary(run_id, spec.model, spec.dataset, results)


@main.command()
@click.argument("run_id", type=int)
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="The checkpoint root the run's folder (named by its uuid) is in now, when it moved "
                   "(default: the folder recorded on the run).")
@db_option
@json_option
def resume(run_id, checkpoint_dir, db, as_json):
    """Continue a failed or interrupted train run from its last good checkpoint, into the same run.

    The run is claimed atomically: a second `resume` of the same run is refused while the first runs."""
    from ..scheduler.local import execute_resume

    with _run_errors("run", as_json):
        run_id, results = execute_resume(run_id, db, console=_console(stderr=True), show_progress=True,
                                         checkpoint_dir=checkpoint_dir)
    if as_json:
        _json_out({"id": run_id, "status": "completed", **results})
    else:
        _print_summary(run_id, results.get("model"), results.get("dataset"), results)


@main.command("eval")
@click.argument("model")
@click.argument("dataset")
@click.option("--weights", type=click.Path(dir_okay=False), required=True,
              help="The weights: a vmbench checkpoint (best.pt, last.pt), an official VMamba release, a timm/HF "
                   ".pth/.bin state dict or a .safetensors file. Loaded strictly.")
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True,
              help="detection: a detector checkpoint written by `run --task detection` on shapes-det, coco or a "
                   "COCO-format folder: COCO box and mask AP (--img-size: the shorter side).")
@click.option("--ema", is_flag=True, help="Evaluate the file's EMA weights instead of the model's.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Read the file with torch.load(weights_only=False): only for files you trust (they can run code).")
@img_size_option(help="Input resolution (default: a vmbench checkpoint's own, else the dataset's).")
@click.option("--val-resize", type=int, default=None,
              help="Resize the shorter side to this, then center-crop --img-size (image datasets; default: a vmbench "
                   "checkpoint's own, else the model's crop_pct).")
@batch_size_option(default=64)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--scan-backend", type=click.Choice(SCAN_BACKENDS), default="auto", show_default=True)
@click.option("--channels-last", is_flag=True, help="Model and inputs in channels_last memory format.")
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Where named datasets (imagenet, …) are looked up.")
@click.option("--workers", type=WORKERS, default="auto", show_default=True,
              help="DataLoader worker processes, or auto (see `vmbench run --help`).")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave unreadable images out (counted as bad_images) instead of stopping at the first.")
@click.option("--max-val-batches", type=int, default=None, help="Cap validation batches.")
@click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable).")
@db_option
@json_option
def eval_(model, dataset, weights, task, ema, trust_checkpoint, img_size, val_resize, batch_size, device, amp,
          scan_backend, channels_last, data_root, workers, skip_bad_images, max_val_batches, tags, db, as_json):
    """Evaluate a weights file on DATASET's validation split (top-1, top-5, loss; with --task detection box and
    mask AP); recorded as an eval run."""
    from ..config import EvalSpec

    with _cheap_checks():
        _check_model(model)
        _check_task(_check_dataset(dataset, data_root), task, "evaluate")
    from ..scheduler.local import execute_eval

    with _run_errors("eval run"):
        spec = EvalSpec(model=model, dataset=dataset, weights=weights, ema=ema, trust_checkpoint=trust_checkpoint,
                        img_size=img_size, val_resize=val_resize, batch_size=batch_size, device=device, amp=amp,
                        scan_backend=scan_backend, channels_last=channels_last, data_root=data_root,
                        num_workers=workers, skip_bad_images=skip_bad_images, max_val_batches=max_val_batches,
                        tags=list(tags), task=task)
        run_id, results = execute_eval(spec, db, console=_console(stderr=True), show_progress=not as_json)
    if as_json:
        _json_out({"id": run_id, "status": "completed", **results})
    else:
        _print_summary(run_id, results["model"], results["dataset"], results)


@contextlib.contextmanager
def _cheap_checks():
    """Validation that needs neither torch nor the database (not even SQLAlchemy): a ValueError is one line,
    exit 2, at once."""
    try:
        yield
    except ValueError as e:
        _user_error(str(e))


def _check_model(model: str) -> None:
    """A clearly unknown model name fails here (ValueError), before anything imports torch."""
    from ..models import check_model_name

    check_model_name(model)


def _check_dataset(dataset: str, data_root: str | None):
    """A missing or malformed dataset fails here (ValueError), before anything imports torch: folders and
    metadata files only, no image is read. Returns its DatasetInfo."""
    from ..data import get_dataset_info

    return get_dataset_info(dataset, data_root)


def _check_task(info, task: str, verb: str) -> None:
    """A detection dataset needs --task detection and only it (ValueError otherwise), before torch is imported."""
    from ..data import task_mismatch

    why = task_mismatch(info, task, verb)
    if why:
        raise ValueError(why)


def _print_summary(run_id: int | None, model: str, dataset: str, results: dict) -> None:
    from rich.table import Table

    title = f"run {run_id}: {model} on {dataset}" if run_id else f"{model}: {dataset}"
    t = Table(title=_text(title), title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    fmt = {"top1": "{:.2f} %", "top5": "{:.2f} %", "params_m": "{:.2f} M", "gflops": "{:.3f}", "img_s": "{:.1f}",
           "peak_mem_mb": "{:.0f} MB", "train_time_s": "{:.1f} s", "latency_ms": "{:.2f} ms",
           "first_call_s": "{:.2f} s"}
    for key, value in results.items():
        if isinstance(value, list) and key.startswith("init_"):  # keys a fine-tuning load left out
            t.add_row(_text(key), _text(f"{len(value)}: {', '.join(map(str, value[:8]))}"
                                        f"{' …' if len(value) > 8 else ''}" if value else "none"))
            continue
        if value is None or isinstance(value, (dict, list)) or key in ("latencies_ms", "load_warning"):
            continue
        if isinstance(value, float):
            shown = fmt.get(key, "{:.4g}").format(value)
        else:
            shown = fmt.get(key, "{}").format(value) if not isinstance(value, bool) else str(value)
        t.add_row(_text(key), _text(shown))
    _console().print(t)


@main.command()
@click.argument("model", required=False)
@click.option("--suite", type=click.Choice(["paper"]), default=None,
              help="Instead of one MODEL: the paper suite (VMamba vs Swin/ConvNeXt/Res2Net, see benchmarks/models.py); "
                   "--batch-size, --img-size (leaves the resolution sweep out), --precision (instead of each "
                   "section's own) and --channels-last apply to every section; --compile / --cuda-graph run only "
                   "the compile / CUDA-graph section.")
@click.option("--img-size", "--res", "img_size", default=None, metavar="N|HxW",
              help="Input resolution: N (N x N), or HxW (height x width) with --task detection, e.g. 800x1333.  "
                   "[default: 224; detection 800x1333]")
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True,
              help="detection: Mask R-CNN (torchvision, 80 classes, random weights) over MODEL's feature pyramid: "
                   "detector img/s and peak memory at --img-size, params, backbone + FPN GFLOPs.")
@batch_size_option(help="Batch size.  [default: 128; detection 2]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--scan-backend", type=click.Choice(SCAN_BACKENDS), default="auto", show_default=True)
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed warm-up iterations.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed repeats (median is reported).")
@click.option("--channels-last", is_flag=True, help="Run the model in channels_last memory format.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model first.")
@click.option("--cuda-graph", is_flag=True,
              help="Capture the forward once into a CUDA graph and time its replays: the GPU's time without the "
                   "eager host overhead (CUDA only).")
@click.option("--no-store", is_flag=True, help="Do not record the result in the database.")
@click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable).")
@db_option
@json_option
def bench(model, suite, img_size, task, batch_size, precision, device, scan_backend, warmup, repeats, channels_last,
          compile_, cuda_graph, no_store, tags, db, as_json):
    """Params, GFLOPs, inference img/s and peak memory of MODEL (its Mask R-CNN with --task detection), or a suite.

    A measurement taken while other work loads the machine (1-minute load average above half a process per
    CPU) is flagged with a warning; the load average is recorded on the run either way.
    """
    from ..config import BenchSpec

    if (model is None) == (suite is None):
        _user_error("give either a MODEL or --suite paper")
    with _cheap_checks():
        size = parse_img_size(img_size)
        if size is not None and size[1] is not None and task != "detection":
            raise ValueError(f"--img-size {img_size}: an H x W size applies to --task detection; a classification "
                             "benchmark takes one size N")
    if suite:
        if task == "detection":
            _user_error("--suite paper benchmarks classification; give a MODEL for --task detection")
        _bench_suite(size and size[0], batch_size, precision, device, scan_backend, warmup, repeats, channels_last,
                     compile_, cuda_graph, no_store, tags, db, as_json)
        return
    detection = task == "detection"
    res, res_w = size if size is not None else ((800, 1333) if detection else (224, None))
    batch = (2 if detection else 128) if batch_size is None else batch_size
    with _cheap_checks():
        _check_model(model)
        spec = BenchSpec(model=model, res=res, batch=batch, precision=precision, device=device,
                         scan_backend=scan_backend, warmup=warmup, repeats=repeats, channels_last=channels_last,
                         compile=compile_, cuda_graph=cuda_graph, tags=list(tags), task=task,
                         res_w=res_w if detection else None,
                         **({"num_classes": DETECTION_BENCH_CLASSES} if detection else {}))
    from ..scheduler.local import execute_bench

    with _run_errors("bench run"):
        run_id, results = execute_bench(spec, None if no_store else db, console=_console(stderr=True),
                                        show_progress=not as_json)
    if results.get("load_warning"):
        click.echo(f"warning: {results['load_warning']}", err=True)
    if as_json:
        _json_out({"id": run_id, **results})
    else:
        shown = f"{spec.hw[0]}x{spec.hw[1]}" if detection else f"{res}²"
        _print_summary(run_id, model, f"{'Mask R-CNN, ' if detection else ''}{shown} × {batch}, {precision}", results)


def _bench_suite(img_size, batch_size, precision, device, scan_backend, warmup, repeats, channels_last, compile_,
                 cuda_graph, no_store, tags, db, as_json) -> None:
    """`bench --suite paper`: the flags the user gave shape every section (or are refused, exit 2)."""
    from ..engine.suite import SECTIONS

    source = click.get_current_context().get_parameter_source("precision")
    precision_given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
    if compile_ and cuda_graph:
        _user_error("--compile and --cuda-graph do not combine: give one (the compile or the CUDA-graph section)")
    if cuda_graph and device == "cpu":
        _user_error("--cuda-graph needs --device cuda (or auto on a machine with a GPU)")
    for name, value in (("--batch-size", batch_size), ("--img-size", img_size), ("--repeats", repeats)):
        if value is not None and value <= 0:
            _user_error(f"{name} must be > 0, got {value}")
    if warmup < 0:
        _user_error(f"--warmup must be >= 0, got {warmup}")
    sections = ("compile",) if compile_ else ("graph",) if cuda_graph else SECTIONS
    from ..scheduler.local import execute_suite

    with _run_errors("suite"):
        rows, markdown = execute_suite(
            None if no_store else db, device=device, scan_backend=scan_backend,
            batch=128 if batch_size is None else batch_size,
            warmup=warmup, repeats=repeats, tags=list(tags), console=_console(stderr=True),
            show_progress=not as_json, sections=sections, res=img_size,
            precision=precision if precision_given else None, channels_last=channels_last)
    busy = [r for r in rows if r.get("load_warning")]
    if busy:  # the busiest measurement speaks for the others
        worst = max(busy, key=lambda r: r.get("load_avg_1m") or 0.0)
        click.echo(f"warning: {len(busy)} of {len(rows)} measurements: {worst['load_warning']}", err=True)
    if as_json:
        _json_out(rows)
    else:
        click.echo(markdown)
