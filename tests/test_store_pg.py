"""The results store's basic operations on a real PostgreSQL server: migrate, create / log / finish / list, and the
read-only open of what another connection wrote."""
import sqlalchemy as sa

from vmbench.store import MIGRATIONS, Store, results_dict, run_summary
from vmbench.store.migrations import applied_migrations, migrate


def test_store_lifecycle_on_postgresql(pg_url):
    with Store(pg_url) as store:
        with store.engine.connect() as c:
            assert applied_migrations(c) == [n for n, _ in MIGRATIONS]
        assert migrate(store.engine) == []  # applied once
        rid = store.create_run("train", "vmamba_t", "shapes", {"epochs": 2, "lr": 1e-3}, recipe="smoke", seed=1,
                               tags=["a", "it's [b]"], device="cpu", env={"torch": "x"}, git_sha="abc")
        store.log_metrics(rid, {"epoch": 1, "train_loss": 2.0, "val_top1": 10.0, "note": "skipped"}, epoch=1)
        store.log_metrics(rid, {"train_loss": float("nan")}, epoch=2)
        store.finish_run(rid, "completed", {"top1": 42.5, "classes": ["a", "b"], "none": None})
        other = store.create_run("bench", "swin_t", None, {})
        store.finish_run(other, "failed", error="boom")
    with Store(pg_url, create=False) as store:
        run = store.get_run(rid)
        assert run.status == "completed" and run.params == {"epochs": 2, "lr": 1e-3} and run.tags == ["a", "it's [b]"]
        assert [(m.epoch, m.key, m.value) for m in run.metrics] == [(1, "train_loss", 2.0), (1, "val_top1", 10.0),
                                                                    (2, "train_loss", None)]
        assert results_dict(run) == {"classes": '["a", "b"]', "top1": 42.5}
        assert [r.id for r in store.list_runs()] == [other, rid]
        assert [r.id for r in store.list_runs(kind="bench", status="failed")] == [other]
        assert store.count_runs() == 2 and run_summary(run)["status"] == "completed"
        store.finish_run(other, "completed", {"precision": "fp32", "img_s": 10.0})  # upserts run_results on PG
        store.finish_run(other, "completed", {"img_s": 12.5})
        with store.engine.connect() as c:
            pivot = c.execute(sa.text("SELECT run_id, top1, img_s, precision FROM run_results ORDER BY run_id")).all()
        assert [tuple(r) for r in pivot] == [(rid, 42.5, None, None), (other, None, 12.5, "fp32")]


def test_concurrent_first_open_migrates_once_on_postgresql(pg_url):
    import threading

    errors = []

    def open_it():
        try:
            Store(pg_url).close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    eng = sa.create_engine(pg_url)
    with eng.connect() as c:
        assert c.execute(sa.text("select count(*) from schema_migrations")).scalar() == len(MIGRATIONS)
    eng.dispose()
