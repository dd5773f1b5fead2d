"""The decentralized family's algorithms in the registry (the math lives in
:mod:`fedopt.decentralized`): ``gossip``, ``dsgd``, ``dadao``, ``adom_plus`` and ``srrw``.

They read ``topology:`` (the graph on the data set's clients, :mod:`fedopt.decentralized.topology`)
and ``model.l2`` (λ: (λ/2)‖x‖² added to every node's loss). ``algorithm.time_budget`` T ends the
run; one server step (``round``) is one virtual time unit, so ``eval_every`` counts time units
(``rounds`` defaults to ⌈T⌉). ``clients_per_round``, ``aggregation_weights`` and
``server_optimizer`` are not read (every node takes part; there is no server).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import Field, model_validator

from fedopt.algorithms.base import AlgorithmConfig, AlgorithmSpec, schema
from fedopt.schema import (Bool, Check, ConfigError, Float, NonNegativeFloat, PositiveFloat,
                           PositiveInt)

Exponent = Annotated[Float, Check(lambda v: 0.5 < v <= 1, "in (0.5, 1]")]

#: the algorithms that read ``topology:`` and ``model.l2``
DECENTRALIZED = ("gossip", "dsgd", "dadao", "adom_plus", "srrw")


class DecentralizedConfig(AlgorithmConfig):
    """The keys every decentralized algorithm reads."""

    rounds: Optional[PositiveInt] = Field(
        None, description="time units to run at most (null: ⌈time_budget⌉, the whole budget)")
    clients_per_round: PositiveInt = Field(1, description="not read: every node takes part")
    time_budget: PositiveFloat = Field(..., description="T: virtual time units to run (one "
                                                        "unit = one expected gradient per node)")
    batch_events: Bool = Field(True, description="apply events on disjoint nodes together "
                                                 "(false: one at a time, the reference loop)")

    @model_validator(mode="after")
    def _rounds_from_budget(self) -> "DecentralizedConfig":
        if self.rounds is None:   # one round per time unit, the last one possibly shorter
            self.rounds = max(1, math.ceil(self.time_budget))
        return self


def _common(cfg: dict[str, Any], counts: np.ndarray, seed: int, config: dict[str, Any]):
    from fedopt.decentralized.topology import build_topology

    executor = (config.get("executor") or {}).get("name", "local")
    if executor != "local":
        raise ConfigError(f"executor.name: the decentralized algorithms run on the in-process "
                          f"engine (executor.name: local); nodes as {executor} actors are not "
                          f"implemented yet")
    graph = build_topology(config.get("topology"), len(counts), seed)
    l2 = float((config.get("model") or {}).get("l2") or 0.0)
    return graph, {"seed": seed, "batch_events": cfg["batch_events"], "l2": l2}


def _build_gossip(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.gossip import Gossip

    graph, kw = _common(cfg, counts, seed, config)
    return Gossip(graph, cfg["time_budget"], lr=cfg["lr"], grad_rate=cfg["grad_rate"],
                  comm_rate=cfg["comm_rate"], **kw)


def _build_dsgd(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.gossip import DSGD

    graph, kw = _common(cfg, counts, seed, config)
    return DSGD(graph, cfg["time_budget"], lr=cfg["lr"], mixing=cfg["mixing"],
                mixing_steps=cfg["mixing_steps"], form=cfg["form"], **kw)


def _build_dadao(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.dadao import Dadao

    graph, kw = _common(cfg, counts, seed, config)
    return Dadao(graph, cfg["time_budget"], comm_rate=cfg["comm_rate"], L=cfg["L"],
                 mu=cfg["mu"], **kw)


def _build_adom(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.adom import AdomPlus

    graph, kw = _common(cfg, counts, seed, config)
    return AdomPlus(graph, cfg["time_budget"], multi_consensus=cfg["multi_consensus"],
                    L=cfg["L"], mu=cfg["mu"], **kw)


def _build_srrw(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.srrw import SRRW

    graph, kw = _common(cfg, counts, seed, config)
    return SRRW(graph, cfg["time_budget"], alpha=cfg["alpha"], lr=cfg["lr"], a=cfg["a"],
                b=cfg["b"], chain=cfg["chain"], steps_per_unit=cfg["steps_per_unit"],
                radius=cfg["radius"], **kw)


def _specs() -> dict[str, AlgorithmSpec]:
    sgd = {"name": "sgd", "lr": 1.0}
    lr = {"lr": (NonNegativeFloat, Field(0.1, description="η: step of a gradient event"))}

    def spec(name, doc, build, fields):
        return AlgorithmSpec(schema(name, doc, DecentralizedConfig, **fields), sgd, build, doc)

    return {
        "gossip": spec("gossip", "Randomized pairwise gossip (Boyd et al. 2006) with a gradient "
                       "clock (asynchronous gossip SGD)", _build_gossip, {
            **lr,
            "grad_rate": (NonNegativeFloat, Field(1.0, description="gradient events per node "
                                                                   "per time unit (0: averaging)")),
            "comm_rate": (Optional[PositiveFloat], Field(
                None, description="total edge activations per time unit, uniform over edges "
                                  "(null: Boyd's, each node ticks at rate 1 to a uniform "
                                  "neighbour)"))}),
        "dsgd": spec("dsgd", "Synchronous decentralized gradient descent / gossip averaging",
                     _build_dsgd, {
            **lr,
            "mixing": (Literal["metropolis", "laplacian"], Field(
                "metropolis", description="W: Metropolis-Hastings, or I - Lap/lambda_max")),
            "mixing_steps": (PositiveInt, Field(1, description="q: W^q per round")),
            "form": (Literal["combine_then_adapt", "adapt_then_combine"], Field(
                "combine_then_adapt", description="X <- W X - eta G(X), or W (X - eta G(X))"))}),
        "dadao": spec("dadao", "DADAO (Nabli & Oyallon, ICML 2023)", _build_dadao, {
            "comm_rate": (Optional[PositiveFloat], Field(
                None, description="total edge activations per time unit (null: the theory's "
                                  "sqrt(2 chi1 chi2); lower is refused)")),
            "L": (Optional[PositiveFloat], Field(None, description="smoothness (null: from "
                                                                   "the data)")),
            "mu": (Optional[PositiveFloat], Field(None, description="strong convexity (null: "
                                                                    "from the data and l2)"))}),
        "adom_plus": spec("adom_plus", "ADOM+ (Kovalev et al. 2021), accelerated synchronous",
                          _build_adom, {
            "multi_consensus": (Bool, Field(False, description="Q = ceil(chi ln 2) gossip steps "
                                                               "per round")),
            "L": (Optional[PositiveFloat], Field(None, description="smoothness (null: from "
                                                                   "the data)")),
            "mu": (Optional[PositiveFloat], Field(None, description="strong convexity (null: "
                                                                    "from the data and l2)"))}),
        "srrw": spec("srrw", "SA-SRRW token SGD (Hu, Doshi & Eun, ICLR 2024)", _build_srrw, {
            "alpha": (NonNegativeFloat, Field(1.0, description="self-repellence (0: the base "
                                                               "chain)")),
            "lr": (PositiveFloat, Field(0.5, description="c_beta: beta_n = c_beta (n+1)^-b")),
            "a": (Exponent, Field(0.6, description="gamma_n = (n+1)^-a (visit measure)")),
            "b": (Exponent, Field(0.9, description="beta_n exponent (b > a: O(1/alpha^2))")),
            "chain": (Literal["mhrw", "srw"], Field("mhrw", description="base chain")),
            "steps_per_unit": (Optional[PositiveInt], Field(
                None, description="token hops per time unit (null: the number of nodes)")),
            "radius": (Optional[PositiveFloat], Field(
                None, description="project theta onto this ball (null: no projection)"))}),
    }


ALGORITHM_SPECS = _specs()
