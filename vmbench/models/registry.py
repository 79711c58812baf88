"""Model registry: names, aliases and metadata of every backbone vmbench knows.

This module must stay importable without torch or timm (the CLI lists models and
`vmbench compare` resolves names cold). The metadata tables live here and in
`zoo.PEERS` (plain data); the builders are attached lazily:

* vmbench models (VMamba) are built by one small function per variant in
  `vmbench.models.vmamba`, each decorated with `@register_model`; the decorator
  refuses names that have no metadata entry here and refuses duplicates.
* timm peers are built by `vmbench.models.zoo.create_timm_model` from the entry's
  `timm_name`. Any other timm model name is accepted as is.

`create_model` imports torch/timm only when it is called.
"""
from __future__ import annotations

import difflib
import functools
import re
from typing import Any, Callable

from ._meta import ModelEntry, UnknownModelError
from .zoo import PEERS  # plain data, no torch

__all__ = [
    "ModelEntry", "UnknownModelError", "create_model", "list_models", "model_entry",
    "resolve_model_name", "register_model", "SCAN_BACKENDS", "check_model_name", "uses_scan", "timm_defined_names",
]

SCAN_BACKENDS = ("auto", "torch", "triton")


# --------------------------------------------------------------------------- #
# VMamba metadata (our code, vmbench.models.vmamba). Paper: arXiv 2401.10166,  #
# numbers from the official release's model table (224², fvcore FLOPs).       #
# --------------------------------------------------------------------------- #
VMAMBA_ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry(
        "vmamba_t", "vmamba", "vmbench",
        "VMamba-T [s1l8]: dims 96, depths 2-2-8-2, d_state 1, ssm_ratio 1.0, no z-branch, MLP 4x",
        aliases=("vmamba_tiny", "vmamba_tiny_s1l8", "vmamba_t_s1l8"),
        paper_params_m=30.2, paper_gflops=4.9, paper_top1=82.6, default_drop_path=0.2),
    ModelEntry(
        "vmamba_s", "vmamba", "vmbench",
        "VMamba-S [s2l15]: dims 96, depths 2-2-15-2, d_state 1, ssm_ratio 2.0, no z-branch, MLP 4x",
        aliases=("vmamba_small", "vmamba_small_s2l15", "vmamba_s_s2l15"),
        paper_params_m=50.0, paper_gflops=8.7, paper_top1=83.6, default_drop_path=0.3),
    ModelEntry(
        "vmamba_b", "vmamba", "vmbench",
        "VMamba-B [s2l15]: dims 128, depths 2-2-15-2, d_state 1, ssm_ratio 2.0, no z-branch, MLP 4x",
        aliases=("vmamba_base", "vmamba_base_s2l15", "vmamba_b_s2l15"),
        paper_params_m=89.0, paper_gflops=15.4, paper_top1=83.9, default_drop_path=0.6),
    ModelEntry(
        "vmamba_s_s1l20", "vmamba", "vmbench",
        "VMamba-S [s1l20]: dims 96, depths 2-2-20-2, d_state 1, ssm_ratio 1.0, no z-branch, MLP 4x",
        aliases=("vmamba_small_s1l20",),
        paper_params_m=49.0, paper_gflops=8.6, paper_top1=83.3, default_drop_path=0.3),
    ModelEntry(
        "vmamba_b_s1l20", "vmamba", "vmbench",
        "VMamba-B [s1l20]: dims 128, depths 2-2-20-2, d_state 1, ssm_ratio 1.0, no z-branch, MLP 4x",
        aliases=("vmamba_base_s1l20",),
        paper_params_m=87.0, paper_gflops=15.2, paper_top1=83.8, default_drop_path=0.5),
    ModelEntry(
        "vmamba_t_s2l5", "vmamba", "vmbench",
        "VMamba-T [s2l5]: dims 96, depths 2-2-5-2, d_state 1, ssm_ratio 2.0, no z-branch, MLP 4x",
        aliases=("vmamba_tiny_s2l5",),
        paper_params_m=31.0, paper_gflops=4.9, paper_top1=82.5, default_drop_path=0.2),
    ModelEntry(
        "vanilla_vmamba_t", "vanilla_vmamba", "vmbench",
        "Vanilla-VMamba-T (v0): dims 96, depths 2-2-9-2, d_state 16, ssm_ratio 2.0, SiLU z-branch, no MLP",
        aliases=("vanilla_vmamba_tiny", "vmamba_v0_t"),
        paper_params_m=22.9, paper_gflops=5.6, paper_top1=82.2, default_drop_path=0.2),
    ModelEntry(
        "vanilla_vmamba_s", "vanilla_vmamba", "vmbench",
        "Vanilla-VMamba-S (v0): dims 96, depths 2-2-27-2, d_state 16, ssm_ratio 2.0, SiLU z-branch, no MLP",
        aliases=("vanilla_vmamba_small", "vmamba_v0_s"),
        paper_params_m=44.0, paper_gflops=11.2, paper_top1=83.5, default_drop_path=0.3),
    ModelEntry(
        "vanilla_vmamba_b", "vanilla_vmamba", "vmbench",
        "Vanilla-VMamba-B (v0): dims 128, depths 2-2-27-2, d_state 16, ssm_ratio 2.0, SiLU z-branch, no MLP",
        aliases=("vanilla_vmamba_base", "vmamba_v0_b"),
        paper_params_m=76.0, paper_gflops=18.0, paper_top1=83.7, default_drop_path=0.6),
)


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}  # normalised alias -> canonical name
_BUILDERS: dict[str, Callable[..., Any]] = {}


def _add_entry(entry: ModelEntry) -> None:
    if entry.source not in ("vmbench", "timm"):
        raise ValueError(f"model {entry.name!r}: source must be 'vmbench' or 'timm', got {entry.source!r}")
    if entry.source == "timm" and not entry.timm_name:
        raise ValueError(f"model {entry.name!r}: a timm entry needs timm_name")
    key = _norm(entry.name)
    if key != entry.name:
        raise ValueError(f"model name {entry.name!r} must be lower-case snake_case")
    if key in _ENTRIES or key in _ALIASES:
        raise ValueError(f"duplicate model name {entry.name!r} in the vmbench registry")
    _ENTRIES[key] = entry
    extra = (entry.timm_name,) if entry.timm_name and entry.timm_name != entry.name else ()
    for alias in entry.aliases + extra:
        a = _norm(alias)
        if a in _ENTRIES or (a in _ALIASES and _ALIASES[a] != key):
            raise ValueError(f"alias {alias!r} of {entry.name!r} collides with another registered name")
        _ALIASES[a] = key


for _e in VMAMBA_ENTRIES + PEERS:
    _add_entry(_e)
del _e


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Attach a builder to the vmbench entry named like the function (timm-style decorator).

    The function name must have a `source="vmbench"` metadata entry in this module,
    and each name is registered once: a second, different function for the same
    name is an error (re-importing the same module is not).
    """
    name = fn.__name__
    entry = _ENTRIES.get(name)
    if entry is None or entry.source != "vmbench":
        raise ValueError(
            f"register_model: {name!r} has no vmbench metadata entry; add it to VMAMBA_ENTRIES in "
            f"vmbench/models/registry.py first")
    prev = _BUILDERS.get(name)
    if prev is not None and (prev.__module__, prev.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(
            f"duplicate model name {name!r}: already registered by {prev.__module__}.{prev.__qualname__}")
    _BUILDERS[name] = fn
    return fn


def list_models(family: str | None = None, source: str | None = None) -> list[ModelEntry]:
    """Registered entries (VMamba variants first, then timm peers), optionally filtered."""
    out = list(_ENTRIES.values())
    if family is not None:
        out = [e for e in out if e.family == family]
    if source is not None:
        out = [e for e in out if e.source == source]
    return out


_TIMM_SOURCES: list[str] | None = None


def _timm_sources() -> list[str]:
    """The text of timm's model definition files (timm/models/*.py), read without importing timm (which imports
    torch: seconds); [] where timm is not installed as plain files."""
    global _TIMM_SOURCES
    if _TIMM_SOURCES is None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("timm")
        folders = [Path(p) / "models" for p in (spec.submodule_search_locations or [])] if spec else []
        _TIMM_SOURCES = [f.read_text(errors="replace") for d in folders if d.is_dir() for f in sorted(d.glob("*.py"))]
    return _TIMM_SOURCES


def timm_defined_names() -> set[str]:
    """Architectures timm's sources register (`@register_model def NAME(`), found without importing timm."""
    pattern = re.compile(r"@register_model\s*\ndef\s+(\w+)\s*\(")
    return {n for text in _timm_sources() for n in pattern.findall(text)}


@functools.lru_cache(maxsize=256)
def _timm_maybe(name: str) -> bool:
    """False only when timm clearly has no model `name`: its architecture (the part before a `.tag`) appears
    nowhere in timm's model sources. Cheap: no torch or timm import."""
    sources = _timm_sources()
    if not sources:
        return True  # cannot tell without importing timm
    arch = name.split(".", 1)[0]
    if not re.fullmatch(r"\w+", arch):
        return False
    word = re.compile(rf"\b{re.escape(arch)}\b")
    return any(word.search(text) for text in sources)


def _timm_has(name: str) -> bool:
    if not _timm_maybe(name):
        return False
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a hard dependency
        return False
    return bool(timm.is_model(name))


# What a model name may look like: a timm architecture, optionally `.pretrained_tag` (e.g. resnet50.a1_in1k).
# Names end up in paths (TensorBoard folders) and tables: nothing else (`/`, `..`, spaces) is a model name.
_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_]+)?")


def check_model_name(name: str) -> None:
    """Raise UnknownModelError when `name` is clearly not a model: neither registered here nor mentioned in
    timm's model sources. Never imports torch or timm, so a command refuses a typo at once; a name timm may
    know is checked for real when the model is built."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    key = _norm(name)
    if _NAME.fullmatch(name.strip()) and (key in _ENTRIES or key in _ALIASES or
                                          any(_timm_maybe(c) for c in dict.fromkeys((name.strip(), key)))):
        return
    raise _unknown(name)


def uses_scan(name: str) -> bool:
    """Whether model `name` runs the selective scan (VMamba families), so that a scan backend means something
    on its runs. Cheap: registry metadata only."""
    entry = _ENTRIES.get(_ALIASES.get(_norm(name), _norm(name))) if isinstance(name, str) else None
    return entry is not None and entry.family in ("vmamba", "vanilla_vmamba")


def _unknown(name: str) -> UnknownModelError:
    pool = list(_ENTRIES) + list(_ALIASES)
    close = difflib.get_close_matches(_norm(name), pool, n=4, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name, sorted(timm_defined_names()), n=4, cutoff=0.6)
    # Map aliases to canonical names, keep order, drop duplicates.
    seen: list[str] = []
    for c in close:
        c = _ALIASES.get(c, c)
        if c not in seen:
            seen.append(c)
    hint = f"; did you mean {', '.join(seen)}?" if seen else ""
    return UnknownModelError(
        f"unknown model {name!r}{hint} (`vmbench models` lists vmbench's; any timm model name is accepted too)")


def resolve_model_name(name: str) -> str:
    """Canonical vmbench name for a name or alias; a timm model name is returned as is.

    Raises UnknownModelError (a ValueError, one-line message with close matches) otherwise.
    Only unregistered names cost a timm import.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    if not _NAME.fullmatch(name.strip()):
        raise _unknown(name)
    key = _norm(name)
    if key in _ENTRIES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    for candidate in dict.fromkeys((name.strip(), key)):  # as given, then lower-case snake_case
        if _timm_has(candidate):
            return candidate
    raise _unknown(name)


def model_entry(name: str) -> ModelEntry:
    """Metadata for a name or alias; unregistered timm models get a generic entry."""
    canonical = resolve_model_name(name)
    entry = _ENTRIES.get(canonical)
    if entry is not None:
        return entry
    return ModelEntry(canonical, "timm", "timm", f"timm model {canonical}", timm_name=canonical)


def create_model(
    name: str,
    num_classes: int = 1000,
    scan_backend: str = "auto",
    drop_path_rate: float | None = None,
    img_size: int | None = None,
    **kw: Any,
):
    """Build a backbone by name or alias (random init; nothing is downloaded).

    Args:
        name: a registered name / alias (`list_models()`) or any timm model name.
        num_classes: classifier outputs.
        scan_backend: "auto" | "torch" | "triton" for VMamba's SS2D (ignored by other models).
        drop_path_rate: stochastic depth; None keeps the variant's default.
        img_size: input size for models that need it at build time (Swin, DeiT);
            VMamba and CNNs accept any size and ignore it.
        **kw: passed to the builder (e.g. `in_chans`).
    """
    if scan_backend not in SCAN_BACKENDS:
        raise ValueError(f"scan_backend must be one of {', '.join(SCAN_BACKENDS)}; got {scan_backend!r}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
    if drop_path_rate is not None and not (0.0 <= drop_path_rate < 1.0):
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if img_size is not None and (not isinstance(img_size, int) or img_size <= 0):
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    entry = model_entry(name)
    if entry.source == "vmbench":
        from . import vmamba  # noqa: F401  (registers the builders)

        builder = _BUILDERS.get(entry.name)
        assert builder is not None, f"vmbench model {entry.name} has metadata but no registered builder"
        return builder(num_classes=num_classes, scan_backend=scan_backend, drop_path_rate=drop_path_rate, **kw)
    from .zoo import create_timm_model

    return create_timm_model(entry.timm_name, num_classes=num_classes, drop_path_rate=drop_path_rate,
                             img_size=img_size, **kw)
