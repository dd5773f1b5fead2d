"""The Ray executor's ``executor:`` keys (pydantic only: importing this module imports no Ray).

It registers with the core through the entry point ``fedopt.executors: ray`` (pyproject.toml),
so ``fedopt validate`` knows its keys without importing Ray; the executor itself
(:mod:`server.ray_executor`) and the real-time driver (:mod:`server.realtime`) load on use.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from fedopt.executors import ExecutorConfig, ExecutorEntry
from fedopt.schema import Bool, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Str


class RayExecutorConfig(ExecutorConfig):
    """``executor: {name: ray, ...}``: a coordinator and worker actors, one shard of clients
    each, on this machine or a Ray cluster."""

    what = "executor 'ray'"
    name: Literal["ray"] = "ray"
    num_workers: PositiveInt = 2
    num_cpus_per_worker: NonNegativeFloat = 1.0
    num_gpus_per_worker: NonNegativeFloat = 0.0
    address: Optional[Str] = Field(None, description="null: start a local Ray; 'auto' or "
                                                     "ray://host:port")
    round_timeout_s: Optional[PositiveFloat] = Field(
        None, description="a worker slower than this is a straggler")
    max_retries: NonNegativeInt = 2
    on_timeout: Literal["drop", "retry"] = Field(
        "drop", description="a straggling worker's clients: dropped (renormalised FedAvg) or "
                            "re-sent")
    realtime: Bool = Field(False, description="asynchronous algorithms on Ray workers in real "
                                              "time (server/realtime.py) instead of on the "
                                              "virtual clock")
    seconds_per_unit: Optional[PositiveFloat] = Field(
        None, description="real time: seconds per clock unit; clock: job times are injected "
                          "as delays (null: no delays, intervals/timeouts in seconds)")


ENTRY = ExecutorEntry("ray", "server.ray_config:RayExecutorConfig",
                      "server.ray_executor:RayExecutor.from_config",
                      realtime="server.realtime:RealTimeAsync.from_config")
