"""The sweep planner: models × datasets × seeds × a grid of `--set KEY=V1,V2` overrides, each point a
`vmbench run` command line and its resolved RunSpec (so a bad value is refused before anything is queued).
Entry point: `plan_sweep`; `options_argv` turns Click option values back into command-line arguments."""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click


@dataclass
class PlannedRun:
    model: str
    dataset: str
    seed: int
    sets: list[str]  # KEY=VALUE, one per grid axis plus the fixed ones
    args: list[str]  # the arguments of `vmbench run MODEL DATASET` after MODEL DATASET
    item: dict[str, Any]  # the queue item (vmbench.scheduler.queue.train_item)


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets, braces and quotes: "lr=1e-3,5e-4" → ["lr=1e-3", "5e-4"];
    "x=[1,2],[3]" keeps the TOML arrays whole."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def grid_axes(sets: Sequence[str]) -> list[list[str]]:
    """`--set KEY=V1,V2` options → one axis per option: [["KEY=V1", "KEY=V2"], …]. ValueError names a bad one."""
    axes = []
    for s in sets:
        key, eq, values = s.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {s!r}: expected KEY=VALUE[,VALUE…]")
        vals = [v for v in split_top(values)]
        if any(v == "" for v in vals):
            raise ValueError(f"--set {s!r}: an empty value in the list")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return axes


def parse_list(name: str, text: str, kind=str) -> list:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{name} {text!r}: expected a comma-separated list")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise ValueError(f"{name} {text!r}: expected a comma-separated list of {kind.__name__}s") from None


def options_argv(params: Sequence[click.Parameter], values: Mapping[str, Any], skip: set[str] = frozenset()
                 ) -> list[str]:
    """Command-line arguments that reproduce `values` (the parsed values of `params`); options at their default
    or unset are left out."""
    argv: list[str] = []
    for p in params:
        if not isinstance(p, click.Option) or p.name not in values or p.name in skip:
            continue
        v = values[p.name]
        if v is None or v == () or (p.is_flag and not p.secondary_opts and v is False):
            continue
        if p.is_flag:
            if p.secondary_opts:
                argv.append(p.opts[0] if v else p.secondary_opts[0])
            elif v != p.flag_value and v is not True:
                continue
            else:
                argv.append(p.opts[0])
            continue
        if not callable(p.default) and v == p.default:
            continue
        for one in (v if p.multiple else [v]):
            argv += [p.opts[0], str(one)]
    return argv


def plan_sweep(models: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], set_axes: list[list[str]],
               base_argv: list[str], build) -> list[PlannedRun]:
    """Every point of the grid, in order (model, dataset, seed, then the --set axes). `build(model, dataset,
    seed, sets)` returns the resolved RunSpec (ValueError for a bad combination: nothing is planned then)."""
    from .queue import train_item

    plan = []
    for model, dataset, seed, combo in itertools.product(models, datasets, seeds,
                                                          itertools.product(*set_axes) if set_axes else [()]):
        sets = list(combo)
        spec = build(model, dataset, seed, sets)
        args = [*base_argv, "--seed", str(seed)]
        for s in sets:
            args += ["--set", s]
        plan.append(PlannedRun(model, dataset, seed, sets, args, train_item(model, dataset, args, spec)))
    return plan
