"""A Trainer's checkpoint state: what `save_checkpoint` writes (model, optimizer, schedule, GradScaler, EMA,
counters, history, every RNG state, the progress inside a stopped epoch; in a data-parallel run every rank's part,
written by rank 0) and what `resume_from` restores, after `check_resume_state` has checked that the file
continues this run. Files are written crash-safely by vmbench.checkpoint (`last.pt`, `last.prev.pt`, `best.pt`).
Trainer (vmbench.engine.train) inherits TrainerState.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["TrainerState", "check_resume_state"]

# What a run records about its starting weights file (the other init_* keys report what loaded of it).
_INIT_INFO_KEYS = ("init_mode", "init_path", "init_sha256", "init_format", "init_entry", "init_tag")


def check_resume_state(state: dict, path, model_name: str, epochs: int, world_size: int,
                       run_uuid: str | None = None) -> None:
    """CheckpointError (one line) when a checkpoint written by save_checkpoint cannot continue this run: written
    by another run (its run_uuid differs from `run_uuid`), another model, more epochs done than the run has, or
    another number of data-parallel processes. Checkpoints from before run UUIDs carry none and are not checked."""
    from vmbench.checkpoint import CheckpointError

    written_for = state.get("run_uuid")
    if run_uuid is not None and written_for is not None and written_for != run_uuid:
        raise CheckpointError(f"checkpoint {path} belongs to another run (uuid {written_for}, not {run_uuid})")
    if state.get("model_name") != model_name:
        raise CheckpointError(f"checkpoint {path} is for model {state.get('model_name')!r}, not {model_name!r}")
    if not 0 <= int(state["epochs_done"]) + (state.get("partial_epoch") is not None) <= epochs:
        raise CheckpointError(f"checkpoint {path} has {state['epochs_done']} epochs done; the run has {epochs}")
    written_by = int(state.get("world_size") or 1)
    if written_by != world_size:
        raise CheckpointError(f"checkpoint {path} was written by a run of {written_by} process(es); it continues "
                              f"with the same number (--gpus {written_by}), not {world_size}")


class TrainerState:
    """Trainer's checkpoint half: _rank_state, checkpoint_state, save_checkpoint, resume_from."""

    def _rank_state(self, partial: dict | None) -> dict:
        """This rank's own part of a checkpoint: its RNG states and its progress inside a stopped epoch."""
        from vmbench.checkpoint import rng_state

        rng = rng_state(getattr(self.train_loader, "generator", None))
        if partial is not None:
            rng["loader"] = self._epoch_loader_state
        return dict(rng=rng, partial_epoch=dict(partial) if partial is not None else None)

    def checkpoint_state(self, partial: dict | None = None, ranks: list[dict] | None = None) -> dict:
        """Everything resume_from needs, as weights_only-loadable values. `partial`: the progress of an epoch
        stopped inside (train_one_epoch's `partial` plus `epoch_time_s`); the shuffle generator is then saved as
        it was at that epoch's start, so that a resume draws the same order and skips the batches done.
        `ranks`: every rank's _rank_state in a data-parallel run (rank 0's is also the top-level rng and
        partial_epoch)."""
        mine = ranks[self.rank] if ranks is not None else self._rank_state(partial)
        return dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            epochs_done=self.epochs_done, step=self._step, history=[dict(m) for m in self.history],
            best_top1=self.best_top1, train_time_s=self.train_time_s, peak_mem=list(self._peak_mem),
            model_name=self.model_name, dataset=self.dataset.name, num_classes=self.dataset.num_classes,
            img_size=self.img_size, val_resize=getattr(self.spec, "val_resize", None),
            partial_epoch=mine["partial_epoch"], rng=mine["rng"], world_size=self.world_size, ranks=ranks,
            run_uuid=getattr(self.spec, "run_uuid", None),
            init={**(self.init_info or {}), **(self.init_report or {})} or None)

    def save_checkpoint(self, folder, best: bool = False, partial: dict | None = None) -> None:
        """`last.pt` in `folder` (previous kept as `last.prev.pt`), and `best.pt` too when `best`. `partial`: see
        checkpoint_state. Data-parallel: called on every rank (it gathers their states); rank 0 writes."""
        from vmbench.checkpoint import BEST, LAST, save_checkpoint

        ranks = self.dist.gather(self._rank_state(partial)) if self.dist is not None else None
        if not self.is_main:
            return
        state = self.checkpoint_state(partial, ranks)
        save_checkpoint(Path(folder) / LAST, state, keep_prev=True)
        if best:
            save_checkpoint(Path(folder) / BEST, state)

    def resume_from(self, path) -> None:
        """Restore a checkpoint written by save_checkpoint; epochs() then continues with the next epoch (each rank
        of a data-parallel run with its own RNG states and progress). Raises CheckpointError (a ValueError) when
        the file does not load or does not fit this run (check_resume_state)."""
        from vmbench.checkpoint import CheckpointError, load_checkpoint, set_rng_state

        self.setup()
        state = load_checkpoint(path)
        check_resume_state(state, path, self.model_name, self.spec.epochs, self.world_size,
                           run_uuid=getattr(self.spec, "run_uuid", None))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        except (RuntimeError, KeyError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {path} does not fit this run: {msg}") from None
        ranks = state.get("ranks")
        mine = ranks[self.rank] if ranks else dict(rng=state["rng"], partial_epoch=state.get("partial_epoch"))
        self.epochs_done = int(state["epochs_done"])
        self._step = int(state["step"])
        self.history = [dict(m) for m in state["history"]]
        self.best_top1 = state.get("best_top1")
        self.train_time_s = float(state.get("train_time_s", 0.0))
        partial = mine["partial_epoch"]
        self._partial = dict(partial) if partial is not None else None
        if state.get("init"):  # the starting weights the run was begun with, and what loaded of them
            init = dict(state["init"])
            self.init_info = {k: v for k, v in init.items() if k in _INIT_INFO_KEYS}
            self.init_report = {k: v for k, v in init.items() if k not in _INIT_INFO_KEYS}
        peak = state.get("peak_mem") or [None, None]
        self._peak_mem = (peak[0], peak[1])
        set_rng_state(mine["rng"], getattr(self.train_loader, "generator", None))

