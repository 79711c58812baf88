"""How the scheduler starts child `vmbench` processes (they die with their parent) and how a worker names itself;
shared by the worker and its executors."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1


def cli_argv(*args: str) -> list[str]:
    """The command line of a `vmbench` child process run by this interpreter."""
    return [sys.executable, "-m", "vmbench.cli", *args]


def die_with_parent(sig: int = signal.SIGTERM, ignore: tuple[int, ...] = ()):
    """A `preexec_fn` for subprocess.Popen: the child gets `sig` when the process that started it dies, even by
    SIGKILL (Linux; elsewhere nothing is set), and ignores the signals in `ignore` (kept across exec). A vmbench run
    stops at a step boundary on SIGTERM."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        for s in ignore:
            signal.signal(s, signal.SIG_IGN)
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def worker_name() -> str:
    """`host:pid`, how a worker is recorded on the claims and attempts it makes."""
    return f"{socket.gethostname()}:{os.getpid()}"
