"""vmbench command line. Thin Click commands: parse, call one function, print.

Heavy modules (torch, timm, the engine) are imported inside the commands that
need them, so `vmbench --help`, `vmbench compare`, `vmbench show` and
`vmbench runs` start fast and never import torch.
"""
from __future__ import annotations

import contextlib
import json
import sys

import click

from .config import DEVICES, PRECISIONS, SCAN_BACKENDS, default_data_root, default_db_path

EXIT_USER_ERROR = 2


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (pipes, tests): wide enough that leaderboard columns are never cut.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def _user_error(message: str) -> None:
    """One line on stderr, exit code 2."""
    click.echo(f"error: {str(message).splitlines()[0] if str(message) else 'invalid input'}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _json_out(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@contextlib.contextmanager
def _run_errors(what: str):
    """How `run` and `bench` end when something goes wrong: a recorded run that failed (exit 1, or 2 when a
    user mistake surfaced mid-run), Ctrl-C (130, recorded as interrupted), or a user mistake found before
    anything was written (one line, exit 2)."""
    from .scheduler.local import RunFailed, RunInterrupted

    try:
        yield
    except RunFailed as e:
        click.echo(f"error: {what} {e.run_id} failed: {e}", err=True)
        sys.exit(EXIT_USER_ERROR if e.user_error else 1)
    except KeyboardInterrupt as e:
        detail = f": {e}" if isinstance(e, RunInterrupted) else ""
        click.echo(f"interrupted; the {what} is recorded as interrupted{detail}", err=True)
        sys.exit(130)
    except ValueError as e:
        _user_error(str(e))


@contextlib.contextmanager
def _reading(db: str):
    """The store opened read-only (never created); a missing or unusable database is a user error."""
    from .store import Store

    try:
        store = Store(db, create=False)
    except ValueError as e:
        _user_error(str(e))
    try:
        yield store
    finally:
        store.close()


db_option = click.option("--db", default=default_db_path, show_default="$VMBENCH_DB or ./experiments.db",
                         help="Results database: a file path or a SQLAlchemy URL.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vmbench")
def main() -> None:
    """Train, evaluate and benchmark vision backbones (VMamba, Swin, ConvNeXt, Res2Net, …); results in SQL."""


@main.command()
@click.argument("model")
@click.argument("dataset")
@click.option("--recipe", default="smoke", show_default=True,
              help="Training recipe: a built-in name (smoke, imagenet_vmamba, fgvc) or a path to a .toml file.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one recipe key (repeatable); VALUE is a TOML literal, e.g. --set optimizer='sgd' "
                   "--set ema=true. Explicit flags override --set.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default: the recipe's).")
@click.option("--batch-size", type=int, default=None,
              help="Batch size per step, per process with --gpus (default: the recipe's).")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate (default: the recipe's; scaled by the batch when it sets lr_base_batch).")
@click.option("--img-size", type=int, default=None, help="Input resolution (default: the recipe's, else the dataset's).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--amp/--no-amp", default=None, help="Autocast on CUDA (bf16; fp16 with --set amp_dtype='fp16'); "
              "default: the recipe's.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scan-backend", type=click.Choice(SCAN_BACKENDS), default="auto", show_default=True,
              help="VMamba selective-scan backend; the resolved one is recorded on the run.")
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Where named datasets (imagenet, …) are looked up.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Continue from this file, loaded strictly: every key and shape must match, classifier included "
                   "(same classes). Any format --init reads.")
@click.option("--init", "init", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune from this file: official VMamba release, timm/HF .pth/.bin/.safetensors, or a vmbench "
                   "checkpoint. The classifier head is re-created for the dataset's classes, size-dependent weights "
                   "are adapted to --img-size, and the keys that did not load are reported.")
@click.option("--pretrained", is_flag=True,
              help="Fine-tune from timm's pretrained weights, only if already in the local Hugging Face / torch hub "
                   "cache (never downloads).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Read --weights/--init with torch.load(weights_only=False): only for files you trust (they can "
                   "run code).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the model (default: the recipe's); recorded on the run.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Model and inputs in channels_last memory format (default: the recipe's).")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write per-epoch metrics as TensorBoard event files to DIR/<run id>-<model> (needs the "
                   "tensorboard package).")
@click.option("--skip-bad-images", is_flag=True,
              help="Skip unreadable images (counted on the run as bad_images) instead of stopping at the first.")
@click.option("--max-train-batches", type=int, default=None, help="Cap batches per epoch (smoke tests).")
@click.option("--max-val-batches", type=int, default=None, help="Cap validation batches.")
@click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable).")
@click.option("--deterministic", is_flag=True,
              help="Deterministic algorithms only (slower); a resumed run then matches an uninterrupted one.")
@click.option("--gpus", type=int, default=1, show_default=True, metavar="N",
              help="Data-parallel processes launched through torchrun (DDP), one per GPU; --batch-size is per "
                   "process and lr_base_batch scaling uses the total batch. With --device cpu: N gloo processes "
                   "on the CPU (for testing).")
@db_option
@json_option
def run(model, dataset, recipe, sets, epochs, batch_size, lr, img_size, device, amp, seed, scan_backend, data_root,
        workers, weights, init, pretrained, trust_checkpoint, compile_, channels_last, tensorboard, skip_bad_images,
        max_train_batches, max_val_batches, tags, deterministic, gpus, db, as_json):
    """Train MODEL on DATASET with a recipe, evaluate it, benchmark it; record everything.

    The first Ctrl-C or SIGTERM stops after the current optimizer step, saves a checkpoint (when the run keeps
    them) and records the run as interrupted, to go on with `vmbench resume RUN_ID`; a second one stops at once.
    With --gpus N all N processes stop after the same step.
    """
    from .config import build_run_spec, parse_set
    from .scheduler.local import execute_run

    flags = dict(epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size, amp=amp, compile=compile_,
                 channels_last=channels_last)
    with _run_errors("run"):
        spec, resolved = build_run_spec(
            model, dataset, recipe, parse_set(sets), flags, device=device, seed=seed, scan_backend=scan_backend,
            data_root=data_root, num_workers=workers, weights=weights, init=init, pretrained=pretrained,
            trust_checkpoint=trust_checkpoint, tensorboard=tensorboard, skip_bad_images=skip_bad_images,
            max_train_batches=max_train_batches,
            max_val_batches=max_val_batches, tags=list(tags), deterministic=deterministic, world_size=gpus)
        run_id, results = execute_run(spec, db, console=_console(stderr=True), show_progress=True, recipe=resolved)
    if as_json:
        _json_out({"id": run_id, "status": "completed", **results})
    else:
        _print_summary(run_id, spec.model, spec.dataset, results)


@main.command()
@click.argument("run_id", type=int)
@db_option
@json_option
def resume(run_id, db, as_json):
    """Continue a failed or interrupted train run from its last good checkpoint, into the same run."""
    from .scheduler.local import execute_resume

    with _run_errors("run"):
        run_id, results = execute_resume(run_id, db, console=_console(stderr=True), show_progress=True)
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
@click.option("--ema", is_flag=True, help="Evaluate the file's EMA weights instead of the model's.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Read the file with torch.load(weights_only=False): only for files you trust (they can run code).")
@click.option("--img-size", type=int, default=None,
              help="Input resolution (default: a vmbench checkpoint's own, else the dataset's).")
@click.option("--val-resize", type=int, default=None,
              help="Resize the shorter side to this, then center-crop --img-size (image datasets; default: a vmbench "
                   "checkpoint's own, else the model's crop_pct).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--amp/--no-amp", default=False, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--scan-backend", type=click.Choice(SCAN_BACKENDS), default="auto", show_default=True)
@click.option("--channels-last", is_flag=True, help="Model and inputs in channels_last memory format.")
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Where named datasets (imagenet, …) are looked up.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave unreadable images out (counted as bad_images) instead of stopping at the first.")
@click.option("--max-val-batches", type=int, default=None, help="Cap validation batches.")
@click.option("--tag", "tags", multiple=True, help="Tag the run (repeatable).")
@db_option
@json_option
def eval_(model, dataset, weights, ema, trust_checkpoint, img_size, val_resize, batch_size, device, amp, scan_backend,
          channels_last, data_root, workers, skip_bad_images, max_val_batches, tags, db, as_json):
    """Evaluate a weights file on DATASET's validation split (top-1, top-5, loss); recorded as an eval run."""
    from .config import EvalSpec
    from .scheduler.local import execute_eval

    with _run_errors("eval run"):
        spec = EvalSpec(model=model, dataset=dataset, weights=weights, ema=ema, trust_checkpoint=trust_checkpoint,
                        img_size=img_size, val_resize=val_resize, batch_size=batch_size, device=device, amp=amp,
                        scan_backend=scan_backend, channels_last=channels_last, data_root=data_root,
                        num_workers=workers, skip_bad_images=skip_bad_images, max_val_batches=max_val_batches,
                        tags=list(tags))
        run_id, results = execute_eval(spec, db, console=_console(stderr=True), show_progress=not as_json)
    if as_json:
        _json_out({"id": run_id, "status": "completed", **results})
    else:
        _print_summary(run_id, results["model"], results["dataset"], results)


def _print_summary(run_id: int | None, model: str, dataset: str, results: dict) -> None:
    from rich.table import Table

    title = f"run {run_id}: {model} on {dataset}" if run_id else f"{model}: {dataset}"
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    fmt = {"top1": "{:.2f} %", "top5": "{:.2f} %", "params_m": "{:.2f} M", "gflops": "{:.3f}", "img_s": "{:.1f}",
           "peak_mem_mb": "{:.0f} MB", "train_time_s": "{:.1f} s", "latency_ms": "{:.2f} ms",
           "first_call_s": "{:.2f} s"}
    for key, value in results.items():
        if isinstance(value, list) and key.startswith("init_"):  # keys a fine-tuning load left out
            t.add_row(key, f"{len(value)}: {', '.join(map(str, value[:8]))}{' …' if len(value) > 8 else ''}"
                      if value else "none")
            continue
        if value is None or isinstance(value, (dict, list)) or key == "latencies_ms":
            continue
        if isinstance(value, float):
            shown = fmt.get(key, "{:.4g}").format(value)
        else:
            shown = fmt.get(key, "{}").format(value) if not isinstance(value, bool) else str(value)
        t.add_row(key, shown)
    _console().print(t)


@main.command()
@click.argument("model", required=False)
@click.option("--suite", type=click.Choice(["paper"]), default=None,
              help="Instead of one MODEL: the paper suite (VMamba vs Swin/ConvNeXt/Res2Net, see benchmarks/models.py).")
@click.option("--res", type=int, default=224, show_default=True, help="Input resolution.")
@click.option("--batch", type=int, default=128, show_default=True)
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
def bench(model, suite, res, batch, precision, device, scan_backend, warmup, repeats, channels_last, compile_,
          cuda_graph, no_store, tags, db, as_json):
    """Params, GFLOPs, inference img/s and peak memory of MODEL (or a whole --suite)."""
    from .config import BenchSpec
    from .scheduler.local import execute_bench, execute_suite

    if (model is None) == (suite is None):
        _user_error("give either a MODEL or --suite paper")
    if suite:
        with _run_errors("suite"):
            rows, markdown = execute_suite(None if no_store else db, device=device, scan_backend=scan_backend,
                                           batch=batch, warmup=warmup, repeats=repeats, tags=list(tags),
                                           console=_console(stderr=True), show_progress=not as_json)
        if as_json:
            _json_out(rows)
        else:
            click.echo(markdown)
        return
    with _run_errors("bench run"):
        spec = BenchSpec(model=model, res=res, batch=batch, precision=precision, device=device,
                         scan_backend=scan_backend, warmup=warmup, repeats=repeats, channels_last=channels_last,
                         compile=compile_, cuda_graph=cuda_graph, tags=list(tags))
        run_id, results = execute_bench(spec, None if no_store else db, console=_console(stderr=True),
                                        show_progress=not as_json)
    if as_json:
        _json_out({"id": run_id, **results})
    else:
        _print_summary(run_id, model, f"{res}² × {batch}, {precision}", results)


@main.command()
@json_option
def models(as_json):
    """List the model names vmbench knows (timm names are accepted too)."""
    from .models import list_models

    entries = list_models()
    if as_json:
        _json_out([e.to_dict() for e in entries])
        return
    from rich.table import Table

    t = Table(header_style="bold")
    for col in ("name", "family", "source", "params M (paper)", "GFLOPs (paper)", "description"):
        t.add_column(col)
    for e in entries:
        d = e.to_dict()
        t.add_row(d["name"], d.get("family") or "", d.get("source") or "",
                  f"{d['paper_params_m']:.1f}" if d.get("paper_params_m") else "",
                  f"{d['paper_gflops']:.1f}" if d.get("paper_gflops") else "", d.get("description") or "")
    _console().print(t)


@main.command()
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Folder holding the named datasets.")
@json_option
def datasets(data_root, as_json):
    """List datasets: which are found under the data root, and where each one is expected."""
    import os

    from .data import list_datasets

    rows = list_datasets(data_root)
    if as_json:
        _json_out(rows)
        return
    from rich.table import Table

    t = Table(header_style="bold")
    for col in ("name", "classes", "size", "found", "train / eval", "path (found, or expected)", "layout or problem"):
        t.add_column(col)
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r.get("aliases") else "")
        # Absent folder: show what belongs there; present but unusable (a missing file, no scipy): say why.
        present = r["path"] is not None and os.path.exists(r["path"])
        t.add_row(name, str(r["num_classes"]), str(r["img_size"]), "yes" if r["found"] else "no", r["protocol"],
                  r["path"] or ("(built in)" if r["kind"] in ("builtin", "synthetic") else "(no data root)"),
                  r["error"] if r["error"] and (present or r["path"] is None) else r["layout"])
    _console().print(t)


@main.group("data")
def data_group() -> None:
    """Prepare local datasets (alternative splits)."""


@data_group.command("split")
@click.argument("dataset")
@click.option("--val-frac", type=float, default=0.1, show_default=True,
              help="Fraction of each class's training images that goes to validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random draw.")
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Folder holding the named datasets.")
@json_option
def data_split(dataset, val_frac, seed, data_root, as_json):
    """Write a stratified train/val split of DATASET's official training images (cub200).

    Each class sends round(val_frac × its training images) to validation (at least 1, and keeps at least 1);
    the same --val-frac and --seed always give the same split. The official test images are left out. The
    file goes to <dataset folder>/vmbench_splits/val<frac>-seed<seed>.txt (e.g.
    $VMBENCH_DATA/CUB_200_2011/vmbench_splits/val0.1-seed0.txt; written atomically, same format as
    train_test_split.txt: 1 = train, 0 = val). Train on it and evaluate on its validation part with:

    \b
        vmbench data split cub200 --val-frac 0.1 --seed 0
        vmbench run vmamba_t cub200:split-val0.1-seed0 --recipe fgvc
    """
    from .data import DataError, make_split

    try:
        out = make_split(dataset, data_root, val_frac, seed)
    except DataError as e:
        _user_error(str(e))
    if as_json:
        _json_out(out)
    else:
        click.echo(f"wrote {out['path']}: {out['train']} train / {out['val']} val images over {out['classes']} "
                   f"classes; use it as dataset {out['dataset']}")


@main.command()
@click.argument("run_id", type=int)
@db_option
@json_option
def show(run_id, db, as_json):
    """Show one run: parameters, environment, per-epoch metrics, results."""
    from .report.show import render_run, run_detail

    with _reading(db) as store:
        run = store.get_run(run_id)
        if run is None:
            _user_error(f"no run {run_id} in {db}")
        detail = run_detail(run)
    if as_json:
        _json_out(detail)
    else:
        render_run(detail, _console())


@main.command()
@click.option("--status", type=click.Choice(["running", "completed", "failed", "interrupted", "diverged"]))
@click.option("--model", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@db_option
@json_option
def runs(status, model, limit, db, as_json):
    """List recorded runs, newest first (a dead `running` run shows as interrupted)."""
    from .report.show import render_runs
    from .store import run_summary

    with _reading(db) as store:
        rows = [run_summary(r) for r in store.list_runs(status=status, model=model, limit=limit)]
    if as_json:
        _json_out(rows)
    else:
        render_runs(rows, _console())


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--no-bench", is_flag=True, help="Leave out benchmark-only runs.")
@db_option
def compare(fmt, dataset, no_bench, db):
    """Leaderboard: best completed run per model and dataset, side by side."""
    from .report import leaderboard as lb

    with _reading(db) as store:
        rows = lb.leaderboard(store.list_runs(), dataset=dataset, include_bench=not no_bench)
    if fmt == "json":
        click.echo(lb.to_json(rows))
    elif fmt == "csv":
        click.echo(lb.to_csv(rows), nl=False)
    elif fmt == "markdown":
        click.echo(lb.to_markdown(rows), nl=False)
    elif not rows:
        click.echo("no completed runs yet", err=True)
    else:
        lb.render_table(rows, _console())


if __name__ == "__main__":
    main()
