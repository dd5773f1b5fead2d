"""Federated ZO-RankSGD (our extension of Tang, Rybin & Chang 2024; ``zeroth_order.md`` §4.5):
FedAvg whose clients only answer rankings.

Each sampled client takes H local steps y ← y − η ĝ, ĝ from its own (m, k)-ranking of
y + μξ_1..y + μξ_m (:class:`~fedopt.zo.ranking.Ranking`; m queries per step, no value leaves
the client), and the server averages the deltas (uniform weights by default). Since ξ is keyed by
(seed, round, client, step, j), with H = 1 a client could send its k indices and the server would
rebuild ĝ exactly (the spec's "server forms ĝ" form). Keys: ``m``, ``k``, ``mu``. Metrics rows
carry cumulative ``queries``.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec
from fedopt.algorithms.fedavg import AGGREGATION_WEIGHTS
from fedopt.algorithms.fedzo import FedZO
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.zo.ranking import Ranking


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FedZO:
    if cfg["k"] > cfg["m"]:
        raise ValueError(f"k: must be <= algorithm.m ({cfg['m']}), got {cfg['k']}")
    return FedZO(counts, cfg["clients_per_round"], server_optimizer, cfg["aggregation_weights"],
                 seed=seed, oracle=Ranking(cfg["m"], cfg["k"], cfg["mu"]))


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import schema
    from fedopt.schema import Check, Int, PositiveFloat, PositiveInt
    from typing import Annotated

    fields = dict(
        aggregation_weights=(Literal[AGGREGATION_WEIGHTS], "uniform"),
        m=(Annotated[Int, Check(lambda v: v >= 2, ">= 2")],
           Field(5, description="points per ranking query")),
        k=(PositiveInt, Field(2, description="how many of them the oracle ranks (k <= m)")),
        mu=(PositiveFloat, Field(1e-2, description="μ, the perturbation radius")),
    )
    return {"zo_ranksgd": AlgorithmSpec(
        schema("zo_ranksgd", "federated ZO-RankSGD: clients answer (m, k) rankings", **fields),
        {"name": "sgd", "lr": 1.0}, _build, "ZO-RankSGD (ranking-oracle clients)")}


ALGORITHM_SPECS = _specs()
