"""Model weights from files: read, adapt to a model, load strictly (evaluation) or for fine-tuning.

    w = read_weights(path)                 # Weights: state dict + sha256 + where in the file it came from
    load_strict(model, w)                  # every key and shape must match (ValueError naming a few)
    report = load_finetune(model, w)       # head re-created, size-dependent weights adapted, keys reported
    path, tag = cached_pretrained("swin_t")  # timm's pretrained file, only when already in the local cache

Files understood:

* vmbench checkpoints (`vmbench.checkpoint`): the model's weights, or its EMA with `ema=True`;
* the official VMamba release: a state dict under "model" (legacy key names converted, see
  `vmbench.models.vmamba.convert_official_state_dict`);
* timm / Hugging Face files: a bare state dict (`.pth`, `.bin`), timm's training checkpoints (under
  "state_dict" / "state_dict_ema"), and `.safetensors` files when the safetensors package is installed.

Torch files are read with `torch.load(weights_only=True)`, which never runs code from the file; a file that
needs more (a training checkpoint that pickles its argparse options, say) is refused with a hint, and read
with `weights_only=False` only when the caller trusts it (`trust=True`, `--trust-checkpoint`).

Adapting to the model: a "module." (DataParallel) or "_orig_mod." (torch.compile) prefix is stripped; VMamba
gets the official-release conversion; a timm model gets its own module's `checkpoint_filter_fn`, which maps
original-release layouts to timm's and resizes position-dependent weights (absolute position embeddings,
Swin's relative-position bias tables, patch-embedding kernels) to the model's size. VMamba has no
position-dependent weights, so its checkpoints fit any input size as they are.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Weights", "LoadReport", "read_weights", "load_strict", "load_finetune", "adapt_state_dict",
           "file_sha256", "cached_pretrained", "hf_cache_dir"]

MODEL_ENTRIES = ("model", "state_dict")  # where a wrapped file keeps its weights, in the order looked at
EMA_ENTRIES = ("ema", "model_ema", "state_dict_ema")  # where it keeps an EMA of them
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


@dataclass
class Weights:
    """A state dict read from a file, and where it came from."""

    path: str  # absolute path
    sha256: str
    format: str  # "vmbench" (our checkpoint) | "torch" (any other torch.save file) | "safetensors"
    entry: str | None  # the key the state dict was under ("model", "ema", "state_dict", …); None: the whole file
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)  # vmbench checkpoints: model_name, img_size, …

    def describe(self, prefix: str) -> dict[str, Any]:
        """{prefix}path, sha256, format, entry: what a run records about the file."""
        return {f"{prefix}path": self.path, f"{prefix}sha256": self.sha256, f"{prefix}format": self.format,
                f"{prefix}entry": self.entry}


@dataclass
class LoadReport:
    """What a fine-tuning load did: keys the model kept its own init for, and keys of the file left out."""

    loaded: int  # tensors copied into the model
    missing: list[str]  # model keys not loaded (absent from the file, or mismatched): they keep their init
    unexpected: list[str]  # file keys the model has no place for
    mismatched: list[str]  # "key: file (shape) vs model (shape)", dropped (the classifier head, typically)
    resized: list[str]  # keys the model's checkpoint filter resized to fit (position embeddings, …)

    def results(self, prefix: str = "init_") -> dict[str, Any]:
        return {f"{prefix}loaded": self.loaded, f"{prefix}missing": self.missing,
                f"{prefix}unexpected": self.unexpected, f"{prefix}mismatched": self.mismatched,
                f"{prefix}resized": self.resized}


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torch_load(path: Path, trust: bool) -> Any:
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"cannot load {path}: {_first_line(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        try:  # the classes a zip-format file pickles; a legacy-format file names one in the error
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:
            unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            shown = ", ".join(unsafe[:4]) + (", …" if len(unsafe) > 4 else "")
            raise ValueError(f"{path} pickles Python objects ({shown}) that torch.load(weights_only=True) refuses; "
                             "if you trust its source, add --trust-checkpoint (loading it can run code from "
                             "the file)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        raise ValueError(f"cannot load {path} as PyTorch weights: "
                         f"{detail.group(1).strip() if detail else _first_line(e)}") from None


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensor entries of a dict that holds at least one tensor; None otherwise."""
    if not isinstance(obj, dict):
        return None
    out = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return out or None


def read_weights(path, *, ema: bool = False, trust: bool = False) -> Weights:
    """The state dict in `path` (see the module docstring for the formats), with the file's sha256.

    `ema` picks the file's EMA weights (ValueError when it has none). Raises ValueError with a one-line
    message for a missing, unreadable or refused file, or one that holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"weights file not found: {path}")
    p = p.resolve()
    meta: dict[str, Any] = {}
    if p.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise ValueError(f"{p} is a .safetensors file: install the safetensors package to read it")
        from safetensors.torch import load_file

        if ema:
            raise ValueError(f"{p}: a .safetensors file holds one state dict, no EMA entry")
        try:
            sd = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors' own error type differs between versions
            raise ValueError(f"cannot load {p} as safetensors: {_first_line(e)}") from None
        return Weights(str(p), file_sha256(p), "safetensors", None, dict(sd))

    obj = _torch_load(p, trust)
    from .checkpoint import FORMAT

    entries = EMA_ENTRIES if ema else MODEL_ENTRIES
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        fmt = "vmbench"
        meta = {k: obj.get(k) for k in ("model_name", "dataset", "epochs_done", "step", "img_size", "val_resize",
                                        "num_classes")}
    else:
        fmt = "torch"
    entry, sd = None, None
    if isinstance(obj, dict):
        for key in entries:
            if isinstance(obj.get(key), dict):
                entry, sd = key, _tensors(obj[key])
                break
    if ema and entry is None:
        raise ValueError(f"{p} has no EMA weights (looked for {', '.join(EMA_ENTRIES)})")
    if entry is None and fmt == "torch":
        sd = _tensors(obj)  # a bare state dict
    if sd is None:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        where = f"under {entry!r}" if entry else f"bare, or under {' / '.join(repr(k) for k in MODEL_ENTRIES)}"
        raise ValueError(f"{p}: expected a state dict ({where}); found {keys}")
    return Weights(str(p), file_sha256(p), fmt, entry, sd, meta)


def _strip_prefixes(model: torch.nn.Module, sd: dict) -> dict:
    own = model.state_dict().keys()
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in own):
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return sd


def adapt_state_dict(model: torch.nn.Module, weights: Weights) -> tuple[dict, list[str]]:
    """(state dict mapped onto `model`'s names and sizes, keys whose shape the mapping changed).

    See the module docstring; a timm checkpoint filter that fails raises ValueError naming the file.
    """
    sd = _strip_prefixes(model, dict(weights.state_dict))
    before = {k: tuple(v.shape) for k, v in sd.items()}
    from .models.vmamba import VSSM, convert_official_state_dict

    if isinstance(model, VSSM):
        sd = convert_official_state_dict(model, sd)
    elif type(model).__module__.startswith("timm."):
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                sd = dict(filter_fn(sd, model))
            except Exception as e:
                raise ValueError(f"cannot adapt {weights.path} to {type(model).__name__} "
                                 f"({type(model).__module__}.checkpoint_filter_fn): {_first_line(e)}") from None
    resized = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and k in before and tuple(v.shape) != before[k]]
    return sd, resized


def _compare(model: torch.nn.Module, sd: dict) -> tuple[list[str], list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def _few(xs: list[str], n: int = 5) -> str:
    return ", ".join(xs[:n]) + (f" (+{len(xs) - n} more)" if len(xs) > n else "")


def load_strict(model: torch.nn.Module, weights: Weights) -> None:
    """Load `weights` into `model` (in place); any missing or unexpected key or shape mismatch raises
    ValueError naming a few of them."""
    sd, _ = adapt_state_dict(model, weights)
    missing, unexpected, mismatched = _compare(model, sd)
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing: {_few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_few(unexpected)}" if unexpected else "",
                 f"{len(mismatched)} shape mismatches: {_few(mismatched)}" if mismatched else ""]
        raise ValueError(f"weights in {weights.path} do not match {type(model).__name__}: "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True)


def load_finetune(model: torch.nn.Module, weights: Weights) -> LoadReport:
    """Load what fits of `weights` into `model` (in place) to fine-tune it.

    Tensors whose shape differs from the model's after adaptation are left out (the classifier head, when the
    dataset's classes differ, is then the model's fresh one); missing and unexpected keys are reported, not
    fatal. A file of which nothing fits raises ValueError.
    """
    sd, resized = adapt_state_dict(model, weights)
    missing, unexpected, mismatched = _compare(model, sd)
    own = model.state_dict()
    kept = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not kept:
        raise ValueError(f"no weights in {weights.path} fit {type(model).__name__} "
                         f"({len(unexpected)} unexpected keys, e.g. {_few(unexpected, 3)}; "
                         f"{len(mismatched)} shape mismatches)")
    model.load_state_dict(kept, strict=False)
    missing = missing + [m.split(":", 1)[0] for m in mismatched]  # a dropped tensor keeps the model's init
    return LoadReport(loaded=len(kept), missing=missing, unexpected=unexpected, mismatched=mismatched,
                      resized=resized)


# -- timm pretrained weights, from the local cache only ----------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as huggingface_hub reads it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_pretrained(model_name: str) -> tuple[str, str]:
    """(path, timm name with tag) of timm's pretrained weights for `model_name`, found in the local Hugging Face
    hub cache or torch hub cache. Nothing is downloaded: when they are not there, or the model has no timm
    pretrained weights (vmbench's own VMamba), ValueError says so and where it looked."""
    from .models import model_entry

    entry = model_entry(model_name)
    if entry.source == "vmbench":
        raise ValueError(f"{entry.name} is vmbench's own VMamba and has no timm pretrained weights; pass the "
                         "official VMamba release checkpoint with --init PATH")
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(entry.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm has no pretrained weights for {entry.timm_name}")
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    if cfg.file and Path(cfg.file).expanduser().is_file():
        return str(Path(cfg.file).expanduser().resolve()), tagged
    looked = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if importlib.util.find_spec("safetensors") is None:
            names = [n for n in names if not n.endswith(".safetensors")] or names
        cache = hf_cache_dir()
        from huggingface_hub import try_to_load_from_cache

        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=str(cache), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return found, tagged
        looked.append(f"{repo} ({' / '.join(names)}) in the Hugging Face cache {cache}")
    if cfg.url:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        name = os.path.basename(cfg.url.split("?", 1)[0])
        if (hub / name).is_file():
            return str((hub / name).resolve()), tagged
        looked.append(f"{name} in the torch hub cache {hub}")
    raise ValueError(f"pretrained weights for {entry.name} ({tagged}) are not in the local cache: looked for "
                     f"{' and '.join(looked)}; vmbench never downloads: fetch them first (e.g. "
                     f"`huggingface-cli download {cfg.hf_hub_id or tagged}`) or pass a file with --init PATH")
