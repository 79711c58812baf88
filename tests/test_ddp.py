"""Data-parallel runs (`vmbench run --gpus N`): torchrun + DDP on the CPU with the gloo backend, 2 processes.

One writer (rank 0: one set of per-epoch metrics, one checkpoint folder), validation over the full val set
exactly once, user mistakes refused before anything is written, a SIGTERM that stops every rank after the same
step and a `vmbench resume` that ends with exactly the metrics of the uninterrupted run; and, in this process,
the all-reduce helpers and the Trainer's DDP path on a 1-process gloo group."""
import json
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from vmbench import checkpoint as ck
from vmbench.cli import main
from vmbench.config import RunSpec
from vmbench.data import FAKE_VAL_SIZE
from vmbench.engine.train import Distributed, Trainer, eval_from_sums, eval_sums
from vmbench.store import Store

from dbfiles import db_digest, sigterm_after_first_epoch

STEPS = 60  # optimizer steps per epoch: long enough that a SIGTERM sent after epoch 1 lands inside the run
RUN = ["run", "test_resnet", "fake", "--epochs", "3", "--max-train-batches", str(STEPS), "--img-size", "32",
       "--batch-size", "8", "--device", "cpu", "--set", "checkpoints=true", "--deterministic", "--gpus", "2"]
SAME = ("train_loss", "train_acc", "val_top1", "val_top5", "val_loss", "val_images", "lr")  # timings differ


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _run(db, run_id=1):
    """The run, read through a store closed at once: this process then holds no SQLite connection (and no lock)
    on the file while an in-process `vmbench` command opens it."""
    with Store(str(db), create=False) as store:  # reads only: never takes the write lock the run needs
        return store.get_run(run_id)


def _history(db, run_id=1) -> dict:
    return {(m.epoch, m.key): m.value for m in _run(db, run_id).metrics if m.key in SAME}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One uninterrupted 2-process run: (database path, the CLI's JSON output)."""
    db = tmp_path_factory.mktemp("ddp") / "x.db"
    r = _invoke([*RUN, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    return db, json.loads(r.stdout)


def test_two_processes_one_writer_full_validation(ddp_run):
    db, out = ddp_run
    assert out["status"] == "completed" and out["world_size"] == 2 and out["total_batch"] == 16
    with Store(str(db)) as store:
        assert store.count_runs() == 1
    run = _run(db, out["id"])
    assert run.status == "completed" and run.params["world_size"] == 2 and run.params["total_batch"] == 16
    counts = Counter((m.epoch, m.key) for m in run.metrics)
    assert set(counts.values()) == {1} and {e for e, _ in counts} == {1, 2, 3}  # each epoch logged once
    assert all(m.value == FAKE_VAL_SIZE for m in run.metrics if m.key == "val_images")  # each image once
    # One checkpoint folder, written by rank 0, holding both ranks' RNG states.
    assert [p.name for p in (db.parent / "runs").iterdir()] == [run.run_uuid]
    assert sorted(p.name for p in (db.parent / "runs" / run.run_uuid).iterdir()) == sorted(
        [ck.BEST, ck.LAST, ck.PREV, "run.log"])
    state = ck.load_checkpoint(db.parent / "runs" / run.run_uuid / ck.LAST)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2 and state["epochs_done"] == 3
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    assert not any(k.startswith("module.") for k in state["model"])  # the plain module's weights

    # The sharded, all-reduced validation is the single-process validation of the same weights.
    single = Trainer(RunSpec(model="test_resnet", dataset="fake", img_size=32, batch_size=8, device="cpu"))
    single.setup()
    single.model.load_state_dict(state["model"])
    ev = single._evaluate(single.eval_model, "eval")
    last = {k: m for (e, k), m in _history(db).items() if e == 3}
    assert ev["images"] == FAKE_VAL_SIZE and ev["top1"] == last["val_top1"] and ev["top5"] == last["val_top5"]
    assert ev["loss"] == pytest.approx(last["val_loss"], rel=1e-6)


@pytest.mark.parametrize("args", [
    ["--gpus", "0"],
    ["--gpus", "64", "--device", "cuda"],  # no CUDA here, or fewer GPUs than asked for
    ["--gpus", "2", "--set", "world_size=2"],  # a run setting, not a recipe key
])
def test_user_mistakes_exit_2_and_write_nothing(tmp_path, args):
    db = tmp_path / "x.db"
    Store(str(db)).close()
    before = db_digest(db)
    r = _invoke(["run", "test_resnet", "fake", "--device", "cpu", *args, "--db", str(db)])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert db_digest(db) == before and Store(str(db)).count_runs() == 0
    assert not (tmp_path / "runs").exists()


def test_in_memory_database_is_refused(tmp_path):
    r = _invoke(["run", "test_resnet", "fake", "--device", "cpu", "--gpus", "2", "--db", "sqlite://"])
    assert r.exit_code == 2 and "in-memory" in r.stderr and r.stderr.count("\n") == 1


def test_sigterm_stops_every_rank_at_one_step_and_resume_is_exact(tmp_path, ddp_run):
    db = tmp_path / "x.db"
    returncode, err = sigterm_after_first_epoch(RUN, db)
    assert returncode == 130, err
    assert "SIGTERM: all 2 processes stop after the same optimizer step" in err
    assert "continue it with `vmbench resume 1`" in err
    run = _run(db)
    assert run.status == "interrupted" and run.error.startswith("interrupted by SIGTERM: stopped after optimizer step")
    state = ck.load_checkpoint(ck.latest_good(run.checkpoint_dir))
    assert state["world_size"] == 2 and state["step"] > 0
    if state["partial_epoch"] is not None:  # stopped inside an epoch (the usual case): both ranks at one step
        parts = [r["partial_epoch"] for r in state["ranks"]]
        assert parts[0]["batches"] == parts[1]["batches"] == state["step"] - STEPS * state["epochs_done"]
        assert parts[0]["loss_sum"] != parts[1]["loss_sum"]  # each rank's own progress

    r = _invoke(["resume", "1", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["epochs_done"] == 3 and out["world_size"] == 2
    assert _run(db).status == "completed"
    assert _history(db) == _history(ddp_run[0])  # exactly the uninterrupted run's metrics


# -- in this process: a 1-process gloo group ------------------------------------------------------------------------
@pytest.fixture
def one_rank(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield Distributed(rank=0, world_size=1, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_reduce_helpers(one_rank):
    assert one_rank.sum([1.5, 3, 2**40 + 1]) == [1.5, 3.0, 2**40 + 1]
    assert one_rank.max([-1.0, 2.0]) == [-1.0, 2.0]
    assert one_rank.any(True) and not one_rank.any(False)
    assert one_rank.gather({"a": torch.ones(2)})[0]["a"].tolist() == [1.0, 1.0]


def test_strided_shards_sum_to_the_full_evaluation():
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from vmbench.engine.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(23, 6, generator=g), torch.randint(0, 7, (23,), generator=g))
    model = torch.nn.Linear(6, 7)
    full = evaluate(model, DataLoader(data, batch_size=4), "cpu")
    for world in (2, 3):
        sums = [0.0] * 4
        for rank in range(world):
            shard = evaluate(model, DataLoader(Subset(data, range(rank, len(data), world)), batch_size=4), "cpu")
            sums = [a + b for a, b in zip(sums, eval_sums(shard))]
        merged = eval_from_sums(sums)
        assert merged["images"] == 23 and merged["top1"] == full["top1"] and merged["top5"] == full["top5"]
        assert merged["loss"] == pytest.approx(full["loss"], rel=1e-6)  # float32 batch sums, another order
    assert eval_from_sums(eval_sums(evaluate(model, [], "cpu")))["images"] == 0


def test_one_rank_ddp_trains_like_a_single_process(one_rank, tmp_path):
    kw = dict(model="test_resnet", dataset="fake", epochs=1, batch_size=8, img_size=32, device="cpu",
              max_train_batches=4, max_val_batches=2, accum_steps=2, clip_grad=1.0, ema=True, ema_decay=0.9,
              checkpoint_dir=str(tmp_path / "ckpt"))
    plain = list(Trainer(RunSpec(**{**kw, "checkpoint_dir": None})).epochs())
    tr = Trainer(RunSpec(**kw), dist=one_rank)
    ddp = list(tr.epochs())
    assert tr.ddp is not None and tr.model is tr.eval_model and not isinstance(tr.model, type(tr.ddp))
    keys = (*SAME, "ema_val_loss")
    assert [{k: m[k] for k in keys} for m in ddp] == [{k: m[k] for k in keys} for m in plain]
    state = ck.load_checkpoint(tmp_path / "ckpt" / ck.LAST)
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    assert tr.finish()["world_size"] == 1


@pytest.mark.gpu
def test_two_gpus_nccl(tmp_path):
    """The same run on two GPUs (nccl, Triton scan): one writer, the full val set, both cards named on the run."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    db = tmp_path / "x.db"
    r = _invoke(["run", "vmamba_t", "fake", "--epochs", "2", "--max-train-batches", "4", "--img-size", "64",
                 "--batch-size", "16", "--device", "cuda", "--amp", "--gpus", "2", "--set", "checkpoints=true",
                 "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["world_size"] == 2 and out["scan_backend"] == "triton" and out["img_s"] > 0
    run = _run(db, out["id"])
    assert len(run.gpus.split(",")) == 2
    assert set(Counter((m.epoch, m.key) for m in run.metrics).values()) == {1}
    assert all(m.value == FAKE_VAL_SIZE for m in run.metrics if m.key == "val_images")
    assert ck.load_checkpoint(db.parent / "runs" / run.run_uuid / ck.LAST)["world_size"] == 2
