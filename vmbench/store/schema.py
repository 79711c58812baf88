"""ORM classes of the results store (SQLAlchemy 2.x), mapped onto the Core tables of `tables.py`.

The tables are created and changed only by the ordered migrations in `migrations.py`; these classes describe
the schema those migrations produce (a test checks that the two agree). Writers and `show` use them; the
listings read `tables.py` directly.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from .tables import RUN_KINDS, RUN_STATUSES, metadata, metrics, results, runs, utcnow

__all__ = ["Base", "Run", "Metric", "Result", "RUN_KINDS", "RUN_STATUSES", "utcnow"]


class Base(DeclarativeBase):
    metadata = metadata


class Run(Base):
    __table__ = runs

    id: Mapped[int]
    kind: Mapped[str]
    model: Mapped[str]
    dataset: Mapped[str | None]
    recipe: Mapped[str | None]
    params: Mapped[dict[str, Any]]
    status: Mapped[str]
    pid: Mapped[int | None]
    host: Mapped[str | None]
    gpus: Mapped[str | None]
    device: Mapped[str | None]
    scan_backend: Mapped[str | None]
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    error: Mapped[str | None]
    git_sha: Mapped[str | None]
    git_dirty: Mapped[bool | None]
    env: Mapped[dict[str, Any]]
    seed: Mapped[int | None]
    tags: Mapped[list[str]]
    parent_id: Mapped[int | None]
    checkpoint_dir: Mapped[str | None]
    run_uuid: Mapped[str | None]
    pid_started: Mapped[float | None]
    settings: Mapped[str | None]
    weights_file: Mapped[str | None]

    metrics: Mapped[list["Metric"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   order_by="Metric.id")
    results: Mapped[list["Result"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   order_by="Result.key")


class Metric(Base):
    """One value logged during a run (per epoch or per step)."""

    __table__ = metrics

    id: Mapped[int]
    run_id: Mapped[int]
    epoch: Mapped[int | None]
    step: Mapped[int | None]
    key: Mapped[str]
    value: Mapped[float | None]
    time: Mapped[dt.datetime]

    run: Mapped[Run] = relationship(back_populates="metrics")


class Result(Base):
    """A final result of a run: a number (`value`) or a text (`text`)."""

    __table__ = results

    run_id: Mapped[int]
    key: Mapped[str]
    value: Mapped[float | None]
    text: Mapped[str | None]

    run: Mapped[Run] = relationship(back_populates="results")
