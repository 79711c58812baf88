"""DataLoader workers (the automatic choice, persistent workers) and the loader-wait metrics of a training pass."""
from __future__ import annotations

import time

import pytest
import torch
from click.testing import CliRunner

from vmbench.data import build_loaders, cpus_per_process, get_dataset_info, resolve_workers
from vmbench.engine.train import train_one_epoch


def test_resolve_workers_auto_and_explicit(tmp_path):
    shapes = get_dataset_info("shapes")
    for kind in ("train", "val"):
        (tmp_path / kind / "a").mkdir(parents=True)
        (tmp_path / kind / "a" / "0.png").write_bytes(b"")  # a class folder must hold an image file
    folder = get_dataset_info(str(tmp_path))
    cpus = cpus_per_process()
    assert resolve_workers(3, "cuda", shapes) == 3 and resolve_workers(0, "cuda", folder) == 0  # given: kept
    assert resolve_workers(None, "cuda", shapes) == max(1, min(8, cpus - 1))
    assert resolve_workers(None, "cuda", folder, world_size=cpus) == 1  # a share of one core still gets a worker
    assert resolve_workers(None, "cpu", shapes) == 0  # generated tensors: drawn in the training process
    assert resolve_workers(None, "cpu", folder) == min(4, cpus // 2)


def test_loaders_keep_workers_alive():
    info = get_dataset_info("shapes")
    train, val = build_loaders(info, 16, 32, num_workers=1, train_size=64, val_size=32)
    assert train.persistent_workers and val.persistent_workers
    first = [y.tolist() for _, y in train]
    assert sum(len(b) for b in first) == 64 and len([y for _, y in train]) == 4  # a second epoch, same workers
    train0, _ = build_loaders(info, 16, 32, num_workers=0, train_size=64)
    assert not train0.persistent_workers and not train0.pin_memory  # no CUDA here


class _Slow(torch.utils.data.Dataset):
    """A dataset that takes `delay` seconds per item: a loader that cannot keep up."""

    def __init__(self, n: int, delay: float):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        time.sleep(self.delay)
        return torch.zeros(3, 8, 8), i % 2


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_epoch_reports_time_waiting_for_data(delay):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_Slow(32, delay), batch_size=8)
    tr = train_one_epoch(model, loader, opt, "cpu")
    assert tr["images"] == 32 and 0.0 <= tr["data_wait_s"] <= tr["train_time_s"]
    if delay:  # 8 × 50 ms of sleep per batch against a millisecond step: the loop waited most of the time
        assert tr["data_wait_s"] >= 32 * delay * 0.95 and tr["data_wait_s"] / tr["train_time_s"] > 0.6


def test_workers_option():
    from vmbench.cli import main

    r = CliRunner().invoke(main, ["run", "resnet18", "shapes", "--workers", "-1"])
    assert r.exit_code == 2 and "'-1' is not a number >= 0 or 'auto'" in r.output
    r = CliRunner().invoke(main, ["run", "--help"])
    assert "--workers N|AUTO" in r.output and "[default: auto]" in r.output
