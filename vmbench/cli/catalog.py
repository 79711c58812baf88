"""Commands that describe what vmbench knows: `models`, `datasets`, and `data split` (prepare a split)."""
from __future__ import annotations

import click

from ._common import _console, _json_out, _text, _user_error, default_data_root, json_option, main


@main.command()
@json_option
def models(as_json):
    """List the model names vmbench knows (timm names are accepted too)."""
    from ..models import list_models

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
        t.add_row(*map(_text, (d["name"], d.get("family"), d.get("source"),
                               f"{d['paper_params_m']:.1f}" if d.get("paper_params_m") else "",
                               f"{d['paper_gflops']:.1f}" if d.get("paper_gflops") else "", d.get("description"))))
    _console().print(t)


@main.command()
@click.option("--data-root", default=default_data_root, show_default="$VMBENCH_DATA",
              help="Folder holding the named datasets.")
@json_option
def datasets(data_root, as_json):
    """List datasets: which are found under the data root, and where each one is expected."""
    import os

    from ..data import list_datasets

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
        t.add_row(*map(_text, (
            name, r["num_classes"], r["img_size"], "yes" if r["found"] else "no", r["protocol"],
            r["path"] or ("(built in)" if r["kind"] in ("builtin", "synthetic") else "(no data root)"),
            r["error"] if r["error"] and (present or r["path"] is None) else r["layout"])))
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
    from ..data import DataError, make_split

    try:
        out = make_split(dataset, data_root, val_frac, seed)
    except DataError as e:
        _user_error(str(e))
    if as_json:
        _json_out(out)
    else:
        click.echo(f"wrote {out['path']}: {out['train']} train / {out['val']} val images over {out['classes']} "
                   f"classes; use it as dataset {out['dataset']}")


