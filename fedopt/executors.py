"""Executors by name: each registers its config schema, its factory and (for live executors)
its real-time driver, as ``"module:attr"`` strings imported on use.

The core names only its own in-process executor (``local``). Every other executor — the Ray
executor in ``server/``, a third party's — registers through the entry-point group
``fedopt.executors`` (``pyproject.toml``: ``[project.entry-points."fedopt.executors"]``,
``ray = "fedopt.server.ray_config:ENTRY"``), whose object is an :class:`ExecutorEntry`. Its schema
module must be cheap to import (pydantic only, no transport): ``fedopt validate`` loads every
executor's schema. Each executor's settings live in its own schema, so a key that only another
executor reads is refused by name (``executor.num_workers: unknown key for executor 'local'``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Literal, Optional

from pydantic import Field

from fedopt.schema import PositiveInt, Schema, Str

GROUP = "fedopt.executors"


@dataclass(frozen=True)
class ExecutorEntry:
    """One executor: ``schema`` (its ``executor:`` section, a :class:`ExecutorConfig`),
    ``factory(config, dataset, trainer) -> executor`` and, for executors that run the
    asynchronous algorithms in real time, ``realtime`` (``driver(algorithm, config)``).
    ``host_check(executor_section)``: checks that only hold on the host that runs the
    executor (files it reads: a coordinator's tokens, certificates), ValueError naming the
    field; ``fedopt validate`` and the executor's own start run them, a config merely loaded
    elsewhere (a gRPC client reading the run's config) does not."""

    name: str
    schema: str
    factory: str
    realtime: str | None = None
    host_check: str | None = None

    def load_schema(self) -> type["ExecutorConfig"]:
        return load(self.schema)

    def load_factory(self) -> Any:
        return load(self.factory)


def load(target: str) -> Any:
    """The object named ``"module:attr.attr"``, imported on use."""
    module, attr = target.split(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class ExecutorConfig(Schema):
    """The keys every executor reads: where and how the vectorized client math runs."""

    what = "executor"
    name: Str = "local"
    device: Str = Field("cpu", description="cpu, cuda or cuda:<index>")
    chunk_size: Optional[PositiveInt] = Field(
        None, description="clients per vectorized chunk (null: automatic from free memory)")
    dtype: Literal["float32", "float64"] = "float32"
    num_threads: Optional[PositiveInt] = Field(
        None, description="torch intra-op threads (null: leave torch's default)")


class LocalExecutorConfig(ExecutorConfig):
    """``executor: {name: local}``: every client job in this process, vectorized."""

    what = "executor 'local'"
    name: Literal["local"] = "local"


LOCAL = ExecutorEntry("local", "fedopt.executors:LocalExecutorConfig",
                      "fedopt.engine.executor:VectorizedExecutor.from_config")


@lru_cache(maxsize=None)
def executor_entries() -> dict[str, ExecutorEntry]:
    """``{name: entry}``: the built-in ``local`` and every ``fedopt.executors`` entry point."""
    entries = {LOCAL.name: LOCAL}
    for ep in entry_points(group=GROUP):
        entry = ep.load()
        if not isinstance(entry, ExecutorEntry) or entry.name != ep.name:
            raise RuntimeError(f"entry point {GROUP}:{ep.name} ({ep.value}) must be an "
                               f"ExecutorEntry named {ep.name!r}")
        if ep.name in entries:
            continue   # the first registration wins (an installed copy may repeat one)
        entries[ep.name] = entry
    return entries


def realtime_driver(name: str) -> Any:
    """``driver(algorithm, config)`` of executor ``name`` (``executor.realtime``); TypeError
    when that executor has none."""
    entry = executor_entries()[name]
    if entry.realtime is None:
        raise TypeError(f"executor {name!r} has no real-time driver")
    return load(entry.realtime)


def check_host(config: dict) -> None:
    """Run the ``host_check`` of ``config``'s executor (:class:`ExecutorEntry`), if it has
    one; ValueError naming the field."""
    section = config.get("executor") or {}
    entry = executor_entries().get(section.get("name", LOCAL.name))
    if entry is not None and entry.host_check is not None:
        load(entry.host_check)(section)


def executor_schemas() -> list[type[ExecutorConfig]]:
    """The schema of every registered executor (the variants of the ``executor:`` union)."""
    return [e.load_schema() for e in executor_entries().values()]
