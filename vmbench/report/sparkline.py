"""Unicode sparklines of a series (for `vmbench show`): `sparkline([1, 3, 2])` -> "▁█▅". Missing values are
spaces; a flat series is a flat line."""
from __future__ import annotations

import math
from collections.abc import Sequence

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 60) -> str:
    vals = [v if v is not None and math.isfinite(v) else None for v in values]
    if len(vals) > width:  # keep every k-th point, always the last
        step = len(vals) / width
        vals = [vals[min(len(vals) - 1, int(round((i + 1) * step)) - 1)] for i in range(width)]
    known = [v for v in vals if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = hi - lo
    return "".join(" " if v is None else BARS[0 if span == 0 else min(len(BARS) - 1, int((v - lo) / span * len(BARS)))]
                   for v in vals)
