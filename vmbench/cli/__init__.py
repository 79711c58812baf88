"""vmbench command line. Thin Click commands: parse, validate cheaply, call one function, print.

`main` (in `_common`) is the group; each module here registers the commands of one area on it. Heavy modules
(torch, timm, the engine) are imported inside the commands that need them, so `vmbench --help`, `compare`,
`show` and `runs` start fast and never import torch.
"""
from . import catalog, execute, inspect, maintenance, queue, report  # noqa: F401  (each registers its commands on `main`)
from ._common import EXIT_USER_ERROR, main

__all__ = ["main", "EXIT_USER_ERROR"]
