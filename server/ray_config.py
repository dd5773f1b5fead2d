"""The Ray executor's ``executor:`` keys (pydantic only: importing this module imports no Ray).

It registers with the core through the entry point ``fedopt.executors: ray`` (pyproject.toml),
so ``fedopt validate`` knows its keys without importing Ray; the executor itself
(:mod:`fedopt.server.ray_executor`) and the real-time driver (:mod:`fedopt.server.realtime`) load on use.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from fedopt.executors import ExecutorConfig, ExecutorEntry
from fedopt.schema import (Bool, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                           Str, fail)


class RayExecutorConfig(ExecutorConfig):
    """``executor: {name: ray, ...}``: a coordinator and worker actors, one shard of clients
    each, on this machine or a Ray cluster."""

    what = "executor 'ray'"
    name: Literal["ray"] = "ray"
    num_workers: PositiveInt = 2
    num_cpus_per_worker: NonNegativeFloat = 1.0
    num_gpus_per_worker: NonNegativeFloat = 0.0
    address: Optional[Str] = Field(None, description="null: RAY_ADDRESS if set, else start a "
                                                     "local Ray; 'auto', 'local', host:port or "
                                                     "ray://host:port")
    ship_code: Bool = Field(False, description="ship fedopt's code to every node with Ray's "
                                               "runtime_env py_modules (nodes then need Ray, "
                                               "torch and fedopt's dependencies, not fedopt)")
    runtime_env: Optional[dict[Str, Any]] = Field(
        None, description="Ray runtime_env of the run (working_dir, py_modules, pip, env_vars, "
                          "...), passed to ray.init; Ray validates it")
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
        None, description="with realtime: seconds per clock unit, the clock's job times are "
                          "injected as delays (null: no delays, intervals/timeouts in seconds)")
    on_node_failure: Optional[Literal["error", "continue"]] = Field(
        None, description="decentralized node actors (gossip, dadao): a node actor that dies "
                          "stops the run with an error naming it (null: 'error') or the run "
                          "continues without its nodes ('continue')")

    @model_validator(mode="after")
    def _needs_its_switch(self) -> "RayExecutorConfig":
        """A key that only acts with another key set is refused without it (it would be
        silently ignored)."""
        if self.seconds_per_unit is not None and not self.realtime:
            raise fail("seconds_per_unit", "only acts in real time (executor.realtime: true); "
                                           "without it the asynchronous algorithms run on the "
                                           "virtual clock and it would be ignored: set "
                                           "executor.realtime: true or remove it")
        if self.on_timeout == "retry" and self.round_timeout_s is None:
            raise fail("on_timeout", "'retry' only acts with executor.round_timeout_s (without "
                                     "it no worker is ever late): set executor.round_timeout_s "
                                     "or remove it")
        return self


ENTRY = ExecutorEntry("ray", "fedopt.server.ray_config:RayExecutorConfig",
                      "fedopt.server.ray_executor:RayExecutor.from_config",
                      realtime="fedopt.server.realtime:RealTimeAsync.from_config")
