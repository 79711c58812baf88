"""How long `vmbench compare` and `vmbench runs` take on a large database (CPU only, no GPU needed).

Builds (once, cached by path) a SQLite database of 10 000 completed runs — train runs of 10 models on 4 datasets
over several seeds, evaluations and benchmarks, each with vmbench's real params / results keys — and 300 epochs of
metrics per run (3 000 000 metric rows), then times each command as a whole fresh process (`python -m vmbench.cli
...`, output to /dev/null) several times and prints min / median / max wall seconds and the load average.

    python3 benchmarks/report_speed.py [--db /tmp/vmbench-10k.db] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["vmamba_t", "vmamba_s", "vmamba_b", "swin_t", "swin_s", "convnext_t", "convnext_s", "res2net50",
          "deit_s", "resnet50"]
DATASETS = ["shapes", "cub200", "cifar100", "flowers102"]
N_RUNS, EPOCHS = 10_000, 300


def build(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from vmbench.store import Store
    from vmbench.store.tables import NUM_RESULTS, TEXT_RESULTS, run_results_rows, settings_columns

    Store(str(path)).close()  # the schema, through the migrations
    rng = random.Random(0)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    recipe = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 20, "scheduler": "cosine",
              "ema": True, "mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1, "rand_augment": "rand-m9-mstd0.5-inc1",
              "random_erasing": 0.25, "drop_path_rate": 0.2}
    runs, results, metrics = [], [], []
    for rid in range(1, N_RUNS + 1):
        model = MODELS[rid % len(MODELS)]
        kind = "bench" if rid % 10 == 0 else "eval" if rid % 10 == 5 else "train"
        dataset = None if kind == "bench" else DATASETS[(rid // 10) % len(DATASETS)]
        started = f"2026-{1 + rid % 12:02d}-{1 + rid % 28:02d} 10:00:00.000000"
        if kind == "bench":
            params = {"model": model, "res": [224, 384][rid % 2], "batch": [1, 16, 128][rid % 3],
                      "precision": ["fp32", "amp_bf16"][rid % 2], "device": "cuda", "warmup": 3, "repeats": 5,
                      "compile": False, "cuda_graph": False, "channels_last": False, "tags": []}
            res = {"img_s": rng.uniform(500, 3000), "latency_ms": rng.uniform(5, 50), "params_m": 30.0,
                   "gflops": 4.9, "peak_mem_mb": rng.uniform(1000, 9000), "peak_mem_source": "cuda_max_allocated",
                   "gpu_name": "NVIDIA H100", "precision": params["precision"], "res": params["res"],
                   "batch": params["batch"]}
        else:
            params = {"model": model, "dataset": dataset, "epochs": EPOCHS, "batch_size": 128, "img_size": 224,
                      "seed": rid % 3, "amp": True, "amp_dtype": "bf16", "recipe": recipe,
                      "recipe_source": "recipes/imagenet_vmamba.toml", **recipe}
            if kind == "eval":
                params = {"model": model, "dataset": dataset, "weights_path": f"/ckpt/{rid - 4}/best.pt",
                          "img_size": 224, "batch_size": 64}
            res = {"top1": rng.uniform(50, 90), "top5": rng.uniform(80, 99), "val_loss": rng.uniform(0.5, 2),
                   "params_m": 30.0, "gflops": 4.9, "num_classes": 100, "img_size": 224}
            if kind == "train":
                res.update(img_s=rng.uniform(500, 3000), bench_batch=128, peak_mem_mb=rng.uniform(1000, 9000),
                           peak_mem_source="cuda_max_allocated", train_time_s=rng.uniform(1e4, 1e5),
                           epochs_done=EPOCHS, gpu_name="NVIDIA H100", train_loss=1.0, latency_ms=40.0)
        env = {"torch": "2.14.1", "triton": "3.5.0", "timm": "1.0", "cuda": "12.8", "gpu": "NVIDIA H100"}
        runs.append((rid, kind, model, dataset, "imagenet_vmamba" if kind == "train" else None, json.dumps(params),
                     "completed", 1, "bench-host", "cuda", "triton", started, started, started, json.dumps(env),
                     rid % 3 if kind == "train" else None, json.dumps(["sweep"] if rid % 7 == 0 else []),
                     f"/ckpt/{rid}" if kind == "train" else None, *settings_columns(params).values()))
        for k, v in res.items():
            results.append((rid, k, v, None) if isinstance(v, (int, float)) else (rid, k, None, v))
        for e in range(EPOCHS):
            metrics.append((rid, e, "val_top1", 50 + e / 10, started))
        if len(metrics) >= 500_000:
            con.executemany("INSERT INTO metrics (run_id, epoch, key, value, time) VALUES (?,?,?,?,?)", metrics)
            metrics.clear()
    con.executemany("INSERT INTO runs (id, kind, model, dataset, recipe, params, status, pid, host, device, "
                    "scan_backend, started_at, ended_at, heartbeat_at, env, seed, tags, checkpoint_dir, settings, "
                    "weights_file) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    con.executemany("INSERT INTO results (run_id, key, value, text) VALUES (?,?,?,?)", results)
    # the listing columns, as the store writes them beside the results
    wide = run_results_rows([dict(run_id=r, key=k, value=v, text=t) for r, k, v, t in results])
    cols = NUM_RESULTS + TEXT_RESULTS
    con.executemany(f"INSERT INTO run_results (run_id, {', '.join(cols)}) VALUES ({', '.join('?' * (len(cols) + 1))})",
                    [(rid, *[w.get(c) for c in cols]) for rid, w in wide.items()])
    con.executemany("INSERT INTO metrics (run_id, epoch, key, value, time) VALUES (?,?,?,?,?)", metrics)
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def time_command(args: list[str], repeats: int) -> list[float]:
    # as installed: bytecode cached (the warm-up run writes it), whatever this shell's PYTHONDONTWRITEBYTECODE says
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "vmbench.cli", *args]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)  # warm-up (and: it works)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="/tmp/vmbench-report-10k.db")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    db = Path(args.db)
    if not db.exists():
        t0 = time.perf_counter()
        build(db)
        print(f"built {db} ({db.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    con = sqlite3.connect(db)
    counts = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "results", "metrics")]
    con.close()
    print(f"runs {counts[0]}, results {counts[1]}, metric rows {counts[2]}")
    check = ("import sys; from vmbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    assert not e.code\nassert 'torch' not in sys.modules, 'torch imported'\n"
             "assert 'sqlalchemy.orm' not in sys.modules, 'the ORM imported'\n")
    for cmd in (["compare"], ["runs"]):
        subprocess.run([sys.executable, "-c", check, *cmd, "--db", str(db)], env={**os.environ,
                       "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, check=True)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(f"python -m vmbench.cli --help: median {statistics.median(time_command(['--help'], args.repeats)):.3f} s")
    for cmd in (["compare", "--db", str(db)], ["compare", "--db", str(db), "--format", "json"],
                ["compare", "--db", str(db), "--dataset", "cub200", "--tag", "sweep"],
                ["runs", "--db", str(db)], ["runs", "--db", str(db), "--dataset", "cub200", "--tag", "sweep"]):
        t = time_command(cmd, args.repeats)
        print(f"vmbench {' '.join(c if c != str(db) else 'DB' for c in cmd)}: median {statistics.median(t):.3f} s "
              f"(min {min(t):.3f}, max {max(t):.3f}, {len(t)} runs)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
