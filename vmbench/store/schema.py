"""ORM schema of the results store (SQLAlchemy 2.x).

The tables are created and changed only by the ordered migrations in
`migrations.py`; these mapped classes describe the schema those migrations
produce (a test checks that the two agree).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_KINDS = ("train", "bench", "eval")
# What a run can be: a `running` run whose process is gone is *shown* as
# `interrupted` (see store.api.effective_status), never trusted blindly.
RUN_STATUSES = ("running", "completed", "failed", "interrupted", "diverged")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256), index=True)
    recipe: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(256))
    gpus: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(32))
    scan_backend: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    git_sha: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    env: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    checkpoint_dir: Mapped[str | None] = mapped_column(String(1024))
    run_uuid: Mapped[str | None] = mapped_column(String(32), unique=True)  # never repeats: names the run's folder
    pid_started: Mapped[float | None] = mapped_column(Float)  # the process's start time (epoch s): pid reuse

    metrics: Mapped[list["Metric"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   order_by="Metric.id")
    results: Mapped[list["Result"]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                   order_by="Result.key")


class Metric(Base):
    """One value logged during a run (per epoch or per step)."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="metrics")


class Result(Base):
    """A final result of a run: a number (`value`) or a text (`text`)."""

    __tablename__ = "results"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="results")
