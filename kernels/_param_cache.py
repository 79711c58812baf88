"""Parameters kept in a derived form (cast, padded, transposed) between calls that need no gradient.

`derived(cache, slot, params, make, *extra)` returns `make()`'s value from `cache` while it is still valid for
`params`, and rebuilds it otherwise. What "still valid" notices is listed under ParamCache. The SS2D core keeps its
scan parameters in kernel form this way, and VMamba's Linear / Conv2d keep their autocast-dtype weights, so a
plain `torch.no_grad()` call costs no cast or layout op per parameter. Entry points: ParamCache, derived,
frozen_parameters.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["ParamCache", "derived", "frozen_parameters"]


class ParamCache(dict):
    """Where `derived` keeps forms of parameters between calls that need no gradient (a plain `torch.no_grad()`
    call, `inference_mode`, an evaluation pass).

    A kept form is rebuilt when a parameter is another tensor, has other storage or another version
    (load_state_dict, an EMA update, any in-place op or foreach optimizer step), when the caller's extra key
    (x's dtype, device) changes, after any `torch.optim` optimizer step (a global step hook: a fused step moves
    no version counter), and when the owning module switches between train() and eval() (VMamba's modules
    clear their caches then). Not noticed: a write through `.data`, or an optimizer step captured in a CUDA
    graph and replayed, with no train()/eval() switch before the next call (`clear()` the cache, or run the call
    inside `frozen_parameters()`, which empties every cache it used at its end).
    Derived state: deepcopy (EMA copies of a model) and pickling give an empty cache."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return type(self), ()


_frozen = threading.local()
_GENERATION = [0]  # bumped by every torch.optim optimizer step: part of every kept form's key


def _optimizer_stepped(*_args, **_kwargs) -> None:
    _GENERATION[0] += 1


register_optimizer_step_post_hook(_optimizer_stepped)


@contextlib.contextmanager
def frozen_parameters():
    """A block in which the caller changes no parameter (an evaluation pass, a benchmark's timed loop).

    Every ParamCache used in the block is emptied when it ends, so nothing derived outlives the pass whatever
    writes the parameters next. The caches work the same outside such a block (see ParamCache); speed does not
    need it. Nested blocks share the outermost one's lifetime.
    """
    if getattr(_frozen, "caches", None) is not None:
        yield
        return
    _frozen.caches = []
    try:
        yield
    finally:
        for cache in _frozen.caches:
            cache.clear()
        _frozen.caches = None


def derived(cache: dict, slot: str, params: Sequence[torch.Tensor | None], make: Callable[[], Any],
            *extra: Any) -> Any:
    """`make()`, kept in `cache[slot]` and reused while `params` (tensors, the first not None, others maybe) are the same tensors with the
    same storage and version, no optimizer has stepped and `extra` (hashable) is the same. The caller decides
    that no gradient is needed; under torch.compile it should not call this. While a CUDA graph is being
    captured, `make()` is returned and nothing kept: the graph then re-derives from the parameters on every
    replay, so a graph replayed after the parameters changed never reads a stale form."""
    if params[0].is_cuda and torch.cuda.is_current_stream_capturing():
        return make()
    key = (*extra, _GENERATION[0], *((None, None) if t is None else (t._version, t.data_ptr()) for t in params))
    frozen = getattr(_frozen, "caches", None)
    if frozen is not None and not cache.get("_in_block"):
        frozen.append(cache)  # emptied when the block ends
        cache["_in_block"] = True
    kept = cache.get(slot)
    if kept is not None and kept[0] == key and all(a is b for a, b in zip(kept[1], params)):
        return kept[2]
    cache.pop(slot, None)  # the old tensors go before the new ones are made
    value = make()
    cache[slot] = (key, tuple(params), value)
    return value
