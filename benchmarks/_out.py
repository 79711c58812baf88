"""Where the GPU scripts leave their results: the folder $OUT (set on the device machine), when it is set."""
from __future__ import annotations

import json
import os
from typing import Any


def save(name: str, text: str | None = None, data: Any = None) -> None:
    """Write `text` to $OUT/<name>.md and `data` to $OUT/<name>.json (either may be None); without $OUT, nothing."""
    out = os.environ.get("OUT")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    if text is not None:
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    if data is not None:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1, default=str)
