"""This process's rank in a data-parallel run (`Distributed`: sums, maxima, broadcasts and gathers over the ranks,
all collectives) and the shard sums behind a validation result, so that every rank reports full-set metrics
(`eval_sums` / `eval_from_sums`). The caller initialises torch.distributed (vmbench.scheduler.distributed).
"""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["Distributed", "eval_sums", "eval_from_sums"]


@dataclasses.dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run whose default process group the caller has initialised
    (torch.distributed.init_process_group: gloo on the CPU, nccl with one GPU per rank). `device` is this rank's
    device (cpu, or cuda:LOCAL_RANK). Every method is a collective: all ranks call it, in the same order."""

    rank: int
    world_size: int
    device: torch.device

    def __post_init__(self):
        assert 0 <= self.rank < self.world_size, (self.rank, self.world_size)

    def _reduce(self, values, op) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values) -> list[float]:
        """Element-wise sum over the ranks (float64: counts up to 2**53 stay exact)."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values) -> list[float]:
        """Element-wise maximum over the ranks."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        return self.max([1.0 if flag else 0.0])[0] > 0.0

    def broadcast_(self, tensors) -> None:
        """Overwrite each of `tensors` (on this rank's device) with rank 0's, in place."""
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t, src=0)

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def eval_sums(ev: dict) -> list[float]:
    """[top-1 hits, top-5 hits, loss sum, images] behind an `evaluate()` result (the counts are exact: they are
    recovered from percentages of at most a few million images)."""
    n = int(ev["images"])
    if n == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(round(ev["top1"] * n / 100.0)), float(round(ev["top5"] * n / 100.0)), ev["loss"] * n, float(n)]


def eval_from_sums(sums) -> dict:
    """The `evaluate()` result of the summed [top-1 hits, top-5 hits, loss sum, images] of several shards."""
    c1, c5, loss_sum, n = sums
    n = int(round(n))
    if n == 0:
        return dict(top1=float("nan"), top5=float("nan"), loss=float("nan"), images=0)
    return dict(top1=100.0 * c1 / n, top5=100.0 * c5 / n, loss=loss_sum / n, images=n)
