"""The metrics rows' columns of runs with adaptive local training, per round:
``batch_size_mean``, the mean minibatch over every local step (real samples / local steps);
``batch_size_max``, the largest minibatch any client took
(:attr:`~fedopt.engine.contract.RoundOutput.batch_size`; ``client.batch_size`` when no client
chose its batches online); ``local_steps``, Σ_i u_i over the round's jobs (with SSO: outer
steps, i.e. ∇_z ℓ queries) and, with SSO, ``sso_inner_steps`` = m · local_steps (parameter
passes)."""
from __future__ import annotations

from typing import Any

import numpy as np

from fedopt.engine.contract import Executor


class _Recorder:
    """An executor seen through a recorder of the jobs' samples, steps and largest batches."""

    def __init__(self, inner: Executor, batch_size: int):
        self._inner, self._b = inner, int(batch_size)
        self.samples, self.steps, self.largest = 0, 0, 0

    def run_jobs(self, *args: Any, **kwargs: Any):
        out = self._inner.run_jobs(*args, **kwargs)
        self.samples += int(out.samples)
        self.steps += int(np.sum(out.steps)) if out.steps is not None else 0
        big = (int(np.max(out.batch_size)) if out.batch_size is not None and len(out.batch_size)
               else (self._b if out.updates else 0))
        self.largest = max(self.largest, big)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class BatchSizeColumns:
    """Algorithm ``inner`` whose round statistics also carry ``batch_size_mean`` and
    ``batch_size_max`` (module docstring); everything else delegates to ``inner``."""

    def __init__(self, inner: Any, batch_size: int, sso_steps: int | None = None):
        self.__dict__["_inner"], self.__dict__["batch_size"] = inner, int(batch_size)
        self.__dict__["sso_steps"] = sso_steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def init(self, params):
        return self._inner.init(params)

    def local_program(self):
        return self._inner.local_program()

    def run_round(self, state, executor: Executor, optimizer: Any = None):
        rec = _Recorder(executor, self.batch_size)
        new, stats = self._inner.run_round(state, rec, optimizer)
        stats["batch_size_mean"] = rec.samples / rec.steps if rec.steps else float("nan")
        stats["batch_size_max"] = rec.largest
        stats["local_steps"] = rec.steps
        if self.sso_steps is not None:
            stats["sso_inner_steps"] = rec.steps * self.sso_steps
        return new, stats


def with_batch_size_columns(algorithm: Any, config: dict[str, Any]) -> Any:
    """``algorithm`` wrapped in :class:`BatchSizeColumns` when ``client:`` turns on adaptive
    local training (batch_size_test, sso or curriculum); unchanged otherwise. ConfigError
    naming the key for a decentralized algorithm (:func:`~fedopt.local.config.check_algorithm`),
    which would ignore it."""
    from fedopt.local.config import check_algorithm, from_client

    client = config.get("client") or {}
    check_algorithm((config.get("algorithm") or {}).get("name"), client)   # as validate does
    training = from_client(client) if hasattr(algorithm, "run_round") else None
    if training is None:
        return algorithm
    return BatchSizeColumns(algorithm, client.get("batch_size", 1), training.sso_steps)
