"""The queue's claims on SQLite and PostgreSQL: specs enqueued once, exclusive claims (real racing processes),
leases that expire and fence their old holder, retries with a back-off, a failure limit, cancel / retry / prune."""
import datetime as dt
import multiprocessing as mp
import time

import pytest
import sqlalchemy as sa

from vmbench.scheduler.queue import backoff_s, judge_exit, noop_item, spec_hash
from vmbench.store import MIGRATIONS
from vmbench.store.migrations import applied_migrations
from vmbench.store.queue import Queue, QueueItem, item_summary


def _items(n, prefix="x"):
    return [noop_item(f"{prefix}{i}") for i in range(n)]


def test_migrations_apply_on_both(any_db):
    with Queue(any_db) as q, q.engine.connect() as c:
        assert applied_migrations(c) == [n for n, _ in MIGRATIONS]
        assert {"queue_items", "queue_attempts"} <= set(sa.inspect(c).get_table_names())


def test_identical_specs_enqueued_once(any_db):
    assert spec_hash("train", {"a": 1, "b": 2}) == spec_hash("train", {"b": 2, "a": 1})
    with Queue(any_db) as q:
        first = q.add(_items(3))
        again = q.add(_items(4))
        assert [a for _, a in first] == [True] * 3
        assert [a for _, a in again] == [False, False, False, True]
        assert [i for i, _ in again[:3]] == [i for i, _ in first]
        assert len(q.items()) == 4


def test_claim_lease_renew_finish(any_db):
    with Queue(any_db) as q:
        (a, _), (b, _) = q.add(_items(2))
        c1 = q.claim("w1", lease_s=30, slots=["cpu0", "cpu1"])
        c2 = q.claim("w2", lease_s=30)
        assert (c1.item_id, c2.item_id) == (a, b) and c1.token != c2.token
        assert q.claim("w3", lease_s=30) is None
        assert q.renew(a, c1.token, 30) and not q.renew(a, c2.token, 30)
        assert q.started(a, c1.token, "noop")
        assert q.finish(a, c1.token, "done") == "done"
        assert q.finish(a, c1.token, "done") is None  # a token that no longer holds writes nothing
        at = q.attempts(a)
        assert [(x.attempt, x.worker, x.gpu_ids, x.action, x.outcome) for x in at] == [(1, "w1", "cpu0", "noop", "done")]
        assert q.get(a).status == "done" and q.get(a).ended_at is not None


def test_expired_lease_is_taken_over_and_fenced(any_db):
    with Queue(any_db) as q:
        (a, _), = q.add(_items(1))
        old = q.claim("dead", lease_s=0.2)
        assert q.claim("other", lease_s=30) is None  # the lease still runs
        time.sleep(0.4)
        assert item_summary(q.get(a))["status"] == "lost"
        new = q.claim("other", lease_s=30)
        assert new.item_id == a and new.attempt == 2 and new.failures == 1
        assert not q.renew(a, old.token, 30)
        assert q.finish(a, old.token, "done") is None
        assert q.finish(a, new.token, "done") == "done"
        assert [x.outcome for x in q.attempts(a)] == ["lost", "done"]


def test_retry_backoff_and_failure_limit(any_db):
    with Queue(any_db) as q:
        (a, _), = q.add(_items(1))
        c = q.claim("w", lease_s=30, max_failures=2)
        assert q.finish(a, c.token, "retry", exit_code=-9, error="killed by SIGKILL", backoff_s=60,
                        max_failures=2) == "queued"
        assert q.claim("w", lease_s=30, max_failures=2) is None  # backing off
        with q._write() as s, s.begin():  # the back-off has passed
            s.execute(sa.update(QueueItem).values(not_before=dt.datetime(2000, 1, 1)))
        c = q.claim("w", lease_s=30, max_failures=2)
        assert c.attempt == 2
        assert q.finish(a, c.token, "retry", error="exit code 1", max_failures=2) == "failed"
        item = q.get(a)
        assert item.failures == 2 and "gave up after 2" in item.error and "exit code 1" in item.error
        # stopped (the worker was asked to stop) goes back at once and is not a failure
        q.retry(a)
        c = q.claim("w", lease_s=30)
        assert q.finish(a, c.token, "stopped") == "queued" and q.get(a).failures == 0
        c = q.claim("w", lease_s=30)
        assert q.finish(a, c.token, "failed", exit_code=2, error="unknown dataset") == "failed"


def test_cancel_retry_prune(any_db):
    with Queue(any_db) as q:
        (a, _), (b, _), (c, _) = q.add(_items(3))
        held = q.claim("w", lease_s=30)
        assert q.cancel(a) == "running" and not q.renew(a, held.token, 30)
        assert q.cancel(b) == "queued"
        with pytest.raises(ValueError, match="cancelled"):
            q.cancel(b)
        with pytest.raises(ValueError, match="no queue item 99"):
            q.retry(99)
        with pytest.raises(ValueError, match="only failed or cancelled"):
            q.retry(c)
        q.retry(b)
        assert q.get(b).status == "queued"
        assert q.prune(("cancelled",)) == 1 and q.get(a) is None and q.attempts(a) == []
        assert q.counts() == {"queued": 2}


def test_gpu_fit_and_kinds(any_db):
    with Queue(any_db) as q:
        big = {**noop_item("big"), "gpus": 4}
        (a, _), (b, _) = q.add([big, noop_item("small")])
        assert q.claim("w", lease_s=30, max_gpus=2).item_id == b
        assert q.claim("w", lease_s=30, max_gpus=2) is None
        assert q.claim("w", lease_s=30, max_gpus=8, kinds=("train",)) is None
        assert q.claim("w", lease_s=30, max_gpus=8).item_id == a


def _claim_all(db, name, out):
    got = []
    with Queue(db) as q:
        while True:
            c = q.claim(name, lease_s=60)
            if c is None:
                break
            got.append(c.item_id)
            assert q.finish(c.item_id, c.token, "done") == "done"
    out.put(got)


def test_racing_processes_never_share_an_item(any_db):
    n = 80
    with Queue(any_db) as q:
        q.add(_items(n))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(any_db, f"p{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ids = [i for g in got for i in g]
    assert sorted(ids) == list(range(1, n + 1))  # every item once, none twice
    with Queue(any_db) as q:
        assert q.counts() == {"done": n}
        assert len(q.attempts()) == n


def test_judge_exit_and_backoff():
    assert judge_exit(0, False) == ("done", None)
    assert judge_exit(2, False, "…\nerror: unknown dataset 'nope'\n") == ("failed", "unknown dataset 'nope'")
    assert judge_exit(130, True)[0] == "stopped"
    assert judge_exit(130, False)[0] == "retry"
    outcome, why = judge_exit(-9, False)
    assert outcome == "retry" and why == "killed by SIGKILL"
    outcome, why = judge_exit(1, False, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert outcome == "retry" and "out of memory" in why
    assert [backoff_s(f, 10) for f in (1, 2, 3)] == [10, 20, 40] and backoff_s(30, 10) == 3600


def test_a_field_added_to_runspec_keeps_planned_runs_identical():
    """The hash covers the fields that differ from RunSpec's defaults: a new field with a default (a later
    vmbench) leaves every planned run's identity unchanged, while a changed value changes it."""
    import dataclasses

    from vmbench.config import RunSpec
    from vmbench.scheduler.queue import spec_identity

    spec = RunSpec(model="vmamba_t", dataset="shapes", epochs=3, seed=2)
    Later = dataclasses.make_dataclass("Later", [("new_knob", bool, dataclasses.field(default=False))],
                                       bases=(RunSpec,))
    later = Later(model="vmamba_t", dataset="shapes", epochs=3, seed=2)
    assert spec_hash("train", spec_identity(later)) == spec_hash("train", spec_identity(spec))
    assert spec_identity(spec)["seed"] == 2 and "lr" not in spec_identity(spec)
    changed = Later(model="vmamba_t", dataset="shapes", epochs=3, seed=2, new_knob=True)
    assert spec_hash("train", spec_identity(changed)) != spec_hash("train", spec_identity(spec))
