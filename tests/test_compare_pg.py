"""The report queries on a real PostgreSQL server (JSON paths, string aggregation and the grouping differ from
SQLite): compare, runs and metrics give the SQLite answers. Uses the suite's `pg_url` fixture (a fresh database
on a throw-away server, tests/conftest.py)."""
import json

import pytest
from click.testing import CliRunner

from report_db import make_db
from vmbench.cli import main


def _out(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-9), k
            else:
                assert x[k] == y[k], k


def test_reports_on_postgresql_match_sqlite(pg_url, tmp_path):
    url = pg_url
    lite = make_db(tmp_path)
    (tmp_path / "pg").mkdir()
    make_db(tmp_path / "pg", url=url)
    for args in (["compare", "--format", "json"], ["compare", "--format", "json", "--agg", "best"],
                 ["compare", "--format", "json", "--tag", "paper", "--since", "2000-01-01"],
                 ["compare", "--format", "json", "--status", "failed"], ["runs", "--json", "--dataset", "tiny2"]):
        a, b = json.loads(_out(*args, "--db", lite)), json.loads(_out(*args, "--db", url))
        if args[0] == "runs":
            for r in a + b:
                r.pop("started_at"), r.pop("ended_at")
        _same(a, b)
    assert _out("metrics", "1", "2", "--db", lite) == _out("metrics", "1", "2", "--db", url)
    r = CliRunner().invoke(main, ["compare", "--db", url, "--dataset", "nosuch"])
    assert r.exit_code == 2 and "nosuch" in r.output
