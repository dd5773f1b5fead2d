"""The decentralized family's algorithms in the registry (the math lives in
:mod:`fedopt.decentralized`): ``gossip``, ``dsgd``, ``dadao``, ``adom_plus`` and ``srrw``.

They read ``topology:`` (the graph on the data set's clients, :mod:`fedopt.decentralized.topology`)
and ``model.l2`` (λ: (λ/2)‖x‖² added to every node's loss). ``algorithm.time_budget`` T ends the
run; one server step (``round``) is one virtual time unit, so ``eval_every`` counts time units
(``rounds`` defaults to ⌈T⌉). ``clients_per_round``, ``aggregation_weights`` and
``server_optimizer`` are not read (every node takes part; there is no server), nor is
``client:`` beyond its loss and metrics (it may be left out: :func:`fedopt.config.validate`
fills a placeholder).

``executor.name: ray`` runs ``gossip`` and ``dadao`` with their nodes as Ray actors
(:mod:`fedopt.server.ray_nodes`: ``executor.num_workers`` shards of nodes exchanging parameters
with their neighbours' actors directly; ``algorithm.seconds_per_unit`` paces the events in real
time; ``executor.on_node_failure: error | continue`` when a node actor dies); the event sequence
and iterates equal the in-process run's. The synchronous ``dsgd``/``adom_plus`` and the token
walk ``srrw`` run in-process only (refused naming executor.name).
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
#: the ones whose nodes run as Ray actors (executor.name: ray): pairwise events on the stream
ON_ACTORS = ("gossip", "dadao")


class DecentralizedConfig(AlgorithmConfig):
    """The keys every decentralized algorithm reads."""

    rounds: Optional[PositiveInt] = Field(
        None, description="time units to run at most (null: ⌈time_budget⌉, the whole budget)")
    clients_per_round: PositiveInt = Field(1, description="not read: every node takes part")
    time_budget: PositiveFloat = Field(..., description="T: virtual time units to run (one "
                                                        "unit = one expected gradient per node)")
    batch_events: Bool = Field(True, description="apply events on disjoint nodes together "
                                                 "(false: one at a time, the reference loop; "
                                                 "Ray node actors always go one at a time)")
    seconds_per_unit: Optional[PositiveFloat] = Field(
        None, description="executor.name ray: event k is applied t_k·seconds_per_unit real "
                          "seconds after the start (the virtual clock paced in real time; null: "
                          "as fast as the actors go)")

    @model_validator(mode="after")
    def _rounds_from_budget(self) -> "DecentralizedConfig":
        if self.rounds is None:   # one round per time unit, the last one possibly shorter
            self.rounds = max(1, math.ceil(self.time_budget))
        return self


def _common(cfg: dict[str, Any], counts: np.ndarray, seed: int, config: dict[str, Any]):
    from fedopt.decentralized.topology import build_topology

    if config.get("clock"):
        raise ConfigError(f"clock: not read by {cfg['name']}: its events are the Poisson clocks "
                          f"of its nodes and edges (the algorithm's rates, keyed by the seed); "
                          f"remove it (on Ray, algorithm.seconds_per_unit paces those events in "
                          f"real time)")
    graph = build_topology(config.get("topology"), len(counts), seed)
    l2 = float((config.get("model") or {}).get("l2") or 0.0)
    return graph, {"seed": seed, "batch_events": cfg["batch_events"], "l2": l2}


def _placed(alg: Any, cfg: dict[str, Any], config: dict[str, Any]) -> Any:
    """The algorithm on its executor: in-process, or its nodes as Ray actors
    (:mod:`fedopt.server.ray_nodes`) for the asynchronous event algorithms."""
    ex = config.get("executor") or {}
    name = ex.get("name", "local")
    if name == "local":
        if cfg.get("seconds_per_unit") is not None:
            raise ConfigError("algorithm.seconds_per_unit: paces the node actors in real time "
                              "(executor.name: ray); the in-process engine runs on the virtual "
                              "clock")
        return alg
    if name != "ray" or not alg.uses_stream or cfg["name"] not in ON_ACTORS:
        raise ConfigError(f"executor.name: {cfg['name']} runs on the in-process engine "
                          f"(executor.name: local); nodes as Ray actors run the asynchronous "
                          f"event algorithms {', '.join(ON_ACTORS)}")
    if ex.get("realtime"):
        raise ConfigError("executor.realtime: the decentralized node actors always run in real "
                          "time (pace them with algorithm.seconds_per_unit); remove it")
    alg.remote = {"num_shards": int(ex.get("num_workers", 2)),
                  "num_cpus": float(ex.get("num_cpus_per_worker", 1.0)),
                  "num_threads": ex.get("num_threads") or 1,
                  "seconds_per_unit": cfg.get("seconds_per_unit"),
                  "on_node_failure": ex.get("on_node_failure") or "error"}
    return alg


def _build_gossip(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.gossip import Gossip

    graph, kw = _common(cfg, counts, seed, config)
    return _placed(Gossip(graph, cfg["time_budget"], lr=cfg["lr"], grad_rate=cfg["grad_rate"],
                          comm_rate=cfg["comm_rate"], **kw), cfg, config)


def _build_dsgd(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.gossip import DSGD

    graph, kw = _common(cfg, counts, seed, config)
    return _placed(DSGD(graph, cfg["time_budget"], lr=cfg["lr"], mixing=cfg["mixing"],
                        mixing_steps=cfg["mixing_steps"], form=cfg["form"], **kw), cfg, config)


def _build_dadao(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.dadao import Dadao

    graph, kw = _common(cfg, counts, seed, config)
    return _placed(Dadao(graph, cfg["time_budget"], comm_rate=cfg["comm_rate"], L=cfg["L"],
                         mu=cfg["mu"], **kw), cfg, config)


def _build_adom(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.adom import AdomPlus

    graph, kw = _common(cfg, counts, seed, config)
    return _placed(AdomPlus(graph, cfg["time_budget"], multi_consensus=cfg["multi_consensus"],
                            L=cfg["L"], mu=cfg["mu"], **kw), cfg, config)


def _build_srrw(cfg, counts, seed, server_optimizer, config):
    from fedopt.decentralized.srrw import SRRW

    graph, kw = _common(cfg, counts, seed, config)
    return _placed(SRRW(graph, cfg["time_budget"], alpha=cfg["alpha"], lr=cfg["lr"], a=cfg["a"],
                        b=cfg["b"], chain=cfg["chain"], steps_per_unit=cfg["steps_per_unit"],
                        radius=cfg["radius"], **kw), cfg, config)


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
