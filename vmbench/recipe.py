"""Recipes: named sets of training settings (built-in TOML files under vmbench/recipes/, or a path), checked key
by key against RunSpec's field types, resolved for one model and dataset with `--set` values and flags on top, and
turned into a RunSpec (`build_run_spec`, the entry point). Errors are one line naming the key and where it came
from. Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .config import RunSpec


# Keys a recipe (and `vmbench run --set`) may give: the RunSpec fields that define the training (and how it
# executes: compile, channels_last). The others (device, seed, data root, workers, batch caps, weights, tags,
# TensorBoard folder, …) describe one run and are flags only.
RECIPE_KEYS = (
    "epochs", "batch_size", "accum_steps", "lr", "lr_base_batch", "optimizer", "momentum", "nesterov", "betas",
    "weight_decay", "scheduler", "warmup_epochs", "min_lr_ratio", "warmup_lr_ratio", "decay_epochs", "decay_rate",
    "decay_milestones",
    "label_smoothing", "drop_path_rate", "clip_grad", "checkpoints", "amp", "amp_dtype", "ema", "ema_decay", "mixup", "cutmix",
    "mixup_prob", "mixup_switch_prob", "img_size", "train_resize", "val_resize", "hflip", "rand_augment",
    "random_erasing", "compile", "channels_last", "max_size", "train_sizes",
    "det_head",
)
# Tables a recipe may hold besides plain keys.
RECIPE_TABLES = ("datasets", "drop_path_by_model")
DEFAULT_RECIPE = "smoke"


@dataclass
class Recipe:
    """A resolved recipe: its name, where it came from, and the value of every RECIPE_KEYS key for one run."""

    name: str
    source: str
    values: dict


def _recipe_file(name_or_path: str) -> tuple[str, str, str]:
    """(name, source, TOML text) of a built-in recipe name or a path to a .toml file."""
    from importlib import resources

    p = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or os.sep in name_or_path or "/" in name_or_path:
        if not p.is_file():
            raise ValueError(f"recipe file not found: {name_or_path}")
        return p.stem, str(p), p.read_text()
    res = resources.files("vmbench.recipes").joinpath(f"{name_or_path}.toml")
    if not res.is_file():
        raise ValueError(f"unknown recipe {name_or_path!r} (built-in: {', '.join(list_recipes())}; "
                         "or give a path to a .toml file)")
    return name_or_path, f"recipes/{name_or_path}.toml", res.read_text()


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    from importlib import resources

    return sorted(f.name[:-5] for f in resources.files("vmbench.recipes").iterdir() if f.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> dict:
    """A recipe (built-in name or .toml path) as a dict, keys and tables checked (ValueError names the key)."""
    import tomllib

    _, source, text = _recipe_file(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"recipe {source}: not valid TOML: {e}") from None
    for key, value in data.items():
        if key in RECIPE_TABLES:
            if not isinstance(value, dict):
                raise ValueError(f"recipe {source}: {key} must be a table")
            continue
        _check_value(key, value, source)
    for ds, section in data.get("datasets", {}).items():
        if not isinstance(section, dict):
            raise ValueError(f"recipe {source}: datasets.{ds} must be a table")
        for key, value in section.items():
            _check_value(key, value, source, prefix=f"datasets.{ds}.")
    for model, value in data.get("drop_path_by_model", {}).items():
        _check_value("drop_path_rate", value, source, shown=f"drop_path_by_model.{model}")
    return data


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(RunSpec)}


def _check_value(key: str, value, source: str, prefix: str = "", shown: str | None = None):
    """`value` converted to the type of RunSpec field `key`; ValueError (one line, key and source) otherwise."""
    shown = shown or prefix + key
    if key not in RECIPE_KEYS:
        hint = " (a run setting: use its command-line flag)" if key in _field_types() else ""
        raise ValueError(f"recipe {source}: unknown key {shown!r}{hint}")
    typ = _field_types()[key]
    optional = typ.endswith("| None")
    base = typ.replace("| None", "").strip()
    bad = ValueError(f"recipe {source}: {shown} must be {base}{' (or empty)' if optional else ''}, got {value!r}")
    if optional and value == "":
        return None
    if base == "bool":
        if not isinstance(value, bool):
            raise bad
    elif base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif base == "str":
        if not isinstance(value, str):
            raise bad
    elif base == "list[float]":
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
            raise bad
        value = [float(v) for v in value]
    elif base == "list[int]":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad
    else:  # pragma: no cover - a new RECIPE_KEYS field needs a case here
        raise AssertionError(f"no type check for {key}: {typ}")
    return value


def parse_set(items) -> dict:
    """`--set key=value` items as a dict; values are TOML literals (a bare word is taken as a string)."""
    import tomllib

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            out[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw.strip()
    return out


def resolve_recipe(name_or_path: str, model: str, dataset: str, sets: dict | None = None,
                   flags: dict | None = None) -> Recipe:
    """The recipe's values for MODEL on DATASET. Precedence, lowest first: RunSpec defaults, the recipe's top
    level, its `drop_path_by_model` entry for the model, its `datasets.<dataset>` section, `sets` (--set),
    `flags` (explicit command-line flags). Raises ValueError naming the key and the recipe file."""
    name, source, _ = _recipe_file(name_or_path)
    data = load_recipe(name_or_path)
    merged: dict = {}
    for key, value in data.items():
        if key not in RECIPE_TABLES:
            merged[key] = _check_value(key, value, source)
    by_model = {k.lower(): v for k, v in data.get("drop_path_by_model", {}).items()}
    from vmbench.models import list_models

    key = model.strip().lower().replace("-", "_")
    names = [model.lower(), key]
    names += [e.name for e in list_models() if key in {e.name, *e.aliases, e.timm_name}]
    for n in names:
        if n in by_model:
            merged["drop_path_rate"] = float(by_model[n])
            break
    from vmbench.data import dataset_family

    sections = data.get("datasets", {})
    ds = dataset if dataset in sections else dataset_family(dataset)  # `cars`, `cub200:split-…` use their family's
    for key, value in sections.get(ds, {}).items():
        merged[key] = _check_value(key, value, source, prefix=f"datasets.{ds}.")
    for key, value in (sets or {}).items():
        merged[key] = _check_value(key, value, f"{source} (--set)")
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(RunSpec) if f.name in RECIPE_KEYS}
    return Recipe(name=name, source=source, values={k: merged.get(k, defaults[k]) for k in RECIPE_KEYS})


def build_run_spec(model: str, dataset: str, recipe: str = DEFAULT_RECIPE, sets: dict | None = None,
                   flags: dict | None = None, **run_settings) -> tuple[RunSpec, Recipe]:
    """RunSpec from a recipe (see resolve_recipe) plus run settings (device, seed, …). A bad value raises
    ValueError naming the field and the recipe file."""
    from vmbench.models import check_model_name

    check_model_name(model)  # a clear typo fails here, before anything imports torch
    r = resolve_recipe(recipe, model, dataset, sets, flags)
    try:
        spec = RunSpec(model=model, dataset=dataset, **r.values, **run_settings)
    except ValueError as e:
        raise ValueError(_blame(str(e), r.source, sets or {}, flags or {}, run_settings)) from None
    return spec, r


# The command-line flag of each RunSpec field that has one (`vmbench run`), for messages that blame a flag.
FLAG_OF = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "img_size": "--img-size",
           "amp": "--amp", "compile": "--compile", "channels_last": "--channels-last", "device": "--device",
           "seed": "--seed", "scan_backend": "--scan-backend", "data_root": "--data-root", "num_workers": "--workers",
           "weights": "--weights", "init": "--init", "tensorboard": "--tensorboard",
           "max_train_batches": "--max-train-batches", "max_val_batches": "--max-val-batches", "world_size": "--gpus",
           "cuda_graph": "--cuda-graph"}


def _blame(message: str, source: str, sets: dict, flags: dict, run_settings: dict) -> str:
    """A RunSpec error (`<field> must be …`) told as the user wrote it: a flag's bad value names the flag
    (`--epochs must be > 0, got -1`), a --set value says so, and only a value from the recipe names the file."""
    field_name, _, rest = message.partition(" ")
    if flags.get(field_name) is not None or field_name in run_settings:
        return f"{FLAG_OF.get(field_name, '--' + field_name.replace('_', '-'))} {rest}"
    if field_name in sets:
        return f"--set {field_name}: {message}"
    if field_name in RECIPE_KEYS:
        return f"{message} (recipe {source})"
    return message
