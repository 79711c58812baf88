"""`vmbench doctor`: is this machine ready? One line per check, ✓ or ✗ with the fix; exit 1 when one fails.

Checks: python / torch / triton / timm versions; CUDA and the GPU; the Triton kernels (selective scan,
cross-scan, LayerNorm) against their plain-torch twins at small shapes on the actual device — on a CUDA GPU
compiled, without one through Triton's CPU interpreter (TRITON_INTERPRET=1, in a child process, as the tests
run them), and the line says which ran; the database reachable and at the current schema; the data roots found;
free disk where checkpoints go. Entry point: `run_checks(db, data_root)` -> [Check]; `render`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MIN_FREE_GB = 5.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix or None}


def _versions() -> list[Check]:
    out = [Check("python", sys.version_info >= (3, 10), sys.version.split()[0], "vmbench needs Python ≥ 3.10")]
    for mod, fix in (("torch", "pip install torch (CUDA wheels from pytorch.org for a GPU)"),
                     ("triton", "pip install triton (ships with Linux torch wheels)"),
                     ("timm", "pip install timm")):
        try:
            version = __import__(mod).__version__
            out.append(Check(mod, True, version))
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            out.append(Check(mod, False, f"not importable: {type(e).__name__}: {e}".splitlines()[0], fix))
    return out


def _cuda() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("cuda", True, f"no CUDA GPU visible (torch {torch.__version__}, built for CUDA "
                                   f"{torch.version.cuda}); runs use the CPU")
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cap = torch.cuda.get_device_capability(0)
    return Check("cuda", True, f"CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)} "
                               f"(sm_{cap[0]}{cap[1]})")


# Runs in a child process (so TRITON_INTERPRET can be set before triton is imported): prints one JSON line.
_SELFTEST = r"""
import json, sys, torch
from vmbench.kernels import cross_scan, cross_scan_ref, layer_norm, layer_norm_ref, selective_scan, selective_scan_ref
dev = sys.argv[1]
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g).to(dev)
out = {}
def err(a, b):
    return float((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-6))
try:
    b, k, d, n, L = 1, 4, 8, 4, 16
    u, dt = r(b, k * d, L), r(b, k * d, L)
    A, B, C = -torch.rand(k * d, n, generator=g).to(dev) - 0.1, r(b, k, n, L), r(b, k, n, L)
    D, bias = r(k * d), r(k * d)
    out["selective_scan"] = err(selective_scan(u, dt, A, B, C, D, bias, backend="triton"),
                                selective_scan_ref(u, dt, A, B, C, D, bias))
    x = r(2, 4, 5, 8)
    out["cross_scan"] = err(cross_scan(x, backend="triton"), cross_scan_ref(x))
    x, w, bb = r(6, 32), r(32), r(32)
    out["layer_norm"] = err(layer_norm(x, w, bb, backend="triton"), layer_norm_ref(x, w, bb))
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
print(json.dumps(out))
"""
_TOL = 1e-4  # fp32 kernels vs fp32 twins at these sizes: rounding-level differences only


def _kernels(timeout: float) -> Check:
    import torch

    gpu = torch.cuda.is_available()
    env = dict(os.environ)
    how = "compiled for the GPU"
    if not gpu:
        env["TRITON_INTERPRET"] = "1"
        how = "Triton's CPU interpreter (no GPU here; `auto` uses the plain-torch twins on the CPU)"
    fix = "pytest tests/test_selective_scan.py tests/test_cross_scan.py tests/test_layer_norm.py -x for details"
    try:
        p = subprocess.run([sys.executable, "-c", _SELFTEST, "cuda" if gpu else "cpu"], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Check("kernels", False, f"self-test ({how}) did not finish in {timeout:.0f} s", fix)
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("kernels", False, f"self-test ({how}) crashed: {tail}", fix)
    if "error" in res:
        return Check("kernels", False, f"self-test ({how}): {res.pop('error')}", fix)
    bad = {k: v for k, v in res.items() if not v <= _TOL}
    detail = ", ".join(f"{k} rel. err {v:.1e}" for k, v in res.items()) + f" vs the torch twins; {how}"
    return Check("kernels", not bad, detail, fix if bad else "")


def _database(db: str) -> Check:
    import sqlalchemy as sa

    from ..store.db import StoreError, make_engine
    from ..store.migrations import MIGRATIONS, applied_migrations

    try:
        engine = make_engine(db, create=False)
    except StoreError as e:
        missing = "no database at" in str(e)
        return Check("database", missing, str(e) + ("; it is created by the first `vmbench run`" if missing else ""),
                     "" if missing else "check --db / $VMBENCH_DB")
    try:
        with engine.connect() as conn:
            done = set(applied_migrations(conn))
            n = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()
    finally:
        engine.dispose()
    pending = [name for name, _ in MIGRATIONS if name not in done]
    unknown = sorted(done - {name for name, _ in MIGRATIONS})
    if unknown:
        return Check("database", False, f"{db}: written by a newer vmbench (migrations {', '.join(unknown)})",
                     "upgrade vmbench")
    if pending:
        return Check("database", False, f"{db}: {n} runs; schema behind ({', '.join(pending)} pending)",
                     "any writing command (vmbench run / bench) migrates it")
    return Check("database", True, f"{db}: {n} runs, schema current ({len(done)} migrations)")


def _data(data_root: str | None) -> Check:
    if not data_root:
        return Check("data", True, "no data root set: built-in datasets only (shapes, fake)",)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        return Check("data", False, f"data root {root} is not a folder", "set --data-root / $VMBENCH_DATA")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    return Check("data", True, f"data root {root}: {', '.join(found[:12]) or 'empty'}"
                 + (", …" if len(found) > 12 else ""))


def _disk(db: str) -> Check:
    from ..store.pending import checkpoint_root

    root = checkpoint_root(db)
    if root is None:
        return Check("disk", True, "server database: no checkpoint folder beside it")
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**30
    ok = free >= MIN_FREE_GB
    return Check("disk", ok, f"{free:.1f} GB free for checkpoints in {root}",
                 "" if ok else f"free space (≥ {MIN_FREE_GB:.0f} GB) or put the database elsewhere (--db)")


def run_checks(db: str, data_root: str | None, kernel_timeout: float = 300.0) -> list[Check]:
    checks = _versions()
    if all(c.ok for c in checks if c.name == "torch"):
        checks.append(_cuda())
        checks.append(_kernels(kernel_timeout))
    checks += [_database(db), _data(data_root), _disk(db)]
    return checks


def render(checks: list[Check], console) -> None:
    from rich.text import Text

    for c in checks:
        line = Text("✓ " if c.ok else "✗ ", style="green" if c.ok else "bold red")
        line.append(f"{c.name}: ", style="bold")
        line.append(c.detail)
        if c.fix and not c.ok:
            line.append(f" — fix: {c.fix}")
        console.print(line)
