"""What every server algorithm provides to the run loop, and the registry of algorithms.

An algorithm is a small state machine over pure server state (:class:`ServerState`):

    state = alg.init(params)
    state, stats = alg.run_round(state, executor, optimizer)   # one server step

``run_round`` decides which clients run with what payload, asks the executor for their
local results (:meth:`VectorizedExecutor.run_round` or the Ray/gRPC equivalents, which share
its signature) and aggregates. ``local_program()`` says what its clients compute: a
:class:`~fedopt.engine.program.LocalProgram` (gradient oracle, e.g. SAM; proximal term μ(y − x);
update postprocessors); the run fills in the loss and metrics.

Each algorithm module registers itself by defining ``ALGORITHM_SPECS = {name: AlgorithmSpec}``;
:func:`algorithm_specs` collects them from every module of this package, so a new family is one
new file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Optional, Protocol

import numpy as np
from pydantic import Field
from torch import Tensor

from fedopt.engine.program import LocalProgram

from fedopt.schema import (Bool, Check, ConfigError, Float, PositiveFloat, PositiveInt, Schema,
                           Str, variant)

Params = dict[str, Tensor]


@dataclass
class ServerState:
    """Everything the server carries from one step to the next, checkpointed as a whole
    (:meth:`state_dict`; :mod:`fedopt.checkpoint` stores any nested dicts/lists of tensors
    and plain values):

    * ``params``: the global model x_t; ``opt_state``: the server optimizer's state;
      ``round``: server steps done;
    * ``clients``: per-client tables, by name — state indexed by client id that persists
      across rounds (SCAFFOLD's c_i ``"scaffold_c"``, FedDyn/FedSpeed's H_i; each the data of
      a :class:`~fedopt.algorithms.client_state.ClientTable`);
    * ``extra``: the algorithm's other state — the asynchronous loop (``"async"``: clock queue,
      versions, cached deltas), the real-time driver's (``"realtime"``), cumulative counters
      (``"nonfinite_dropped"``).

    ``run_round`` returns a new ServerState (:func:`dataclasses.replace`) that shares
    ``clients``/``extra`` with the old one, which algorithms update in place.
    """

    params: Params
    opt_state: dict[str, Any]
    round: int = 0
    clients: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state, "round": self.round,
                "clients": self.clients, "extra": self.extra}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "ServerState":
        """The inverse of :meth:`state_dict`; a checkpoint written before the split (one
        ``client_state`` dict) is read too: its client tables go to ``clients``, the rest
        to ``extra``."""
        clients, extra = dict(d.get("clients", {})), dict(d.get("extra", {}))
        for k, v in d.get("client_state", {}).items():
            (clients if _is_client_table(v) else extra)[k] = v
        return cls(params=d["params"], opt_state=d["opt_state"], round=int(d["round"]),
                   clients=clients, extra=extra)


def _is_client_table(v: Any) -> bool:
    return isinstance(v, dict) and {"slot", "size", "p", "values", "mean"} <= set(v)


class Algorithm(Protocol):
    def init(self, params: Params) -> ServerState: ...

    def local_program(self) -> LocalProgram: ...

    def run_round(self, state: ServerState, executor: Any, optimizer: Any
                  ) -> tuple[ServerState, dict[str, Any]]: ...



class WrapsBase:
    """For an algorithm built around another (``self.base``, e.g. a :class:`FedAvg`): the run
    reads the wrapped algorithm's client count, seed and server optimizer, and the server state
    starts as the base's (DP-FedAvg, DIFF2)."""

    base: Any

    @property
    def num_clients(self) -> int:
        return self.base.num_clients

    @property
    def seed(self) -> int:
        return self.base.seed

    @property
    def server_optimizer(self) -> Any:
        return self.base.server_optimizer

    def init(self, params: Params) -> ServerState:
        return self.base.init(params)

@dataclass(frozen=True)
class Requirement:
    """A server-optimizer setting that an algorithm's name fixes: ``ok(value)`` must hold for
    ``algorithm.server_optimizer.<key>``; ``what`` says what the name needs (for messages)."""

    key: str
    ok: Callable[[Any], bool]
    what: str


class ServerOptimizerConfig(Schema):
    """``algorithm.server_optimizer``: the keys as given (null: not given). The algorithm's
    defaults are merged under them and the chosen rule's own checks run after (a key the rule
    does not read is an error, see :mod:`fedopt.algorithms.server_opt`)."""

    what = "the server optimizer"
    name: Optional[Literal["sgd", "adam", "yogi", "adagrad"]] = None
    lr: Optional[PositiveFloat] = Field(None, description="server learning rate η")
    momentum: Optional[Annotated[Float, Check(lambda v: 0 <= v < 1, "in [0, 1)")]] = Field(
        None, description="sgd only (default 0)")
    nesterov: Optional[Bool] = Field(None, description="sgd only (default false)")
    betas: Optional[list[Annotated[Float, Check(lambda v: 0 <= v < 1, "in [0, 1)")]]] = Field(
        None, description="adam/yogi: [β1, β2]; paper-style adagrad: [β1]")
    tau: Optional[PositiveFloat] = Field(None, description="adaptivity τ (adaptive rules, "
                                                           "default 1e-3)")
    style: Optional[Literal["paper", "tff"]] = Field(
        None, description="adaptive rules: paper (default) or tff")


class AlgorithmConfig(Schema):
    """The keys every algorithm reads; an algorithm's schema adds its own (:func:`schema`)."""

    what = "algorithm"
    name: Str = "fedavg"
    rounds: PositiveInt = Field(..., description="server steps")
    clients_per_round: PositiveInt = Field(..., description="clients sampled per server step")
    aggregation_weights: Literal["num_samples", "uniform", "unbiased"] = "num_samples"
    server_optimizer: Optional[ServerOptimizerConfig] = None


def schema(name: str, doc: str = "", base: type[AlgorithmConfig] = AlgorithmConfig,
           **fields: Any) -> type[AlgorithmConfig]:
    """The schema of algorithm ``name``: ``base``'s keys and ``fields`` (``(type, default)``)."""
    return variant(base, name, what=f"algorithm {name!r}", doc=doc, **fields)


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm's config schema (:class:`AlgorithmConfig` with its own keys; see
    :func:`schema`), the server optimizer it defaults to, and ``build(alg_cfg, counts, seed, server_optimizer, config) -> Algorithm``
    (``config``: the whole validated run config).

    ``requires``: server-optimizer settings the name itself stands for (``fedadam`` is FedAvg
    with the adam server optimizer, ``fedavgm`` needs momentum > 0); a config whose
    ``algorithm.server_optimizer`` contradicts one is refused by :meth:`check_server_optimizer`.
    ``build`` must be cheap before ``init`` (no per-parameter work): ``fedopt validate`` calls it
    with unit client counts to run the same checks as a run.
    ``resolve(alg_cfg, raw_config)`` (optional) fills, in place, a key whose default depends on
    what the user wrote rather than on the resolved values (e.g. whether a key was given at all).
    """

    schema: type[AlgorithmConfig]
    server_optimizer: dict[str, Any]
    build: Callable[[dict[str, Any], np.ndarray, int, Any, dict[str, Any]], Any]
    doc: str = ""
    requires: tuple[Requirement, ...] = ()
    resolve: Callable[[dict[str, Any], Any], None] | None = None

    def check_server_optimizer(self, name: str, server_optimizer: dict[str, Any]) -> None:
        """Raise ConfigError naming ``algorithm.server_optimizer.<key>`` and ``algorithm.name``
        when the (merged) server-optimizer section contradicts what ``name`` stands for."""
        for req in self.requires:
            value = server_optimizer.get(req.key)
            if not req.ok(value):
                raise ConfigError(
                    f"algorithm.server_optimizer.{req.key}: {value!r} conflicts with "
                    f"algorithm.name: {name}, which needs {req.key} {req.what}; remove "
                    f"algorithm.server_optimizer.{req.key}, or use algorithm.name: fedavg to "
                    f"choose the server optimizer freely")


def algorithm_specs() -> dict[str, AlgorithmSpec]:
    """All registered algorithms, collected from the modules of :mod:`fedopt.algorithms`."""
    import fedopt.algorithms as pkg

    specs: dict[str, AlgorithmSpec] = {}
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        for name, spec in getattr(module, "ALGORITHM_SPECS", {}).items():
            if name in specs:
                raise RuntimeError(f"algorithm {name!r} registered twice (in {mod.name})")
            specs[name] = spec
    return specs
