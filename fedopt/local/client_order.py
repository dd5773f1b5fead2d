"""The client-level curriculum (Vahidian et al., ICCV 2023, the authors' ``ClientScheduler``):
the server ranks clients by the received global model's mean training loss on their rows
(``curriculum``: easiest first; ``anti``; ``random``: a keyed order) and samples each round's
clients uniformly (keyed by seed and round) from the first g(u) of them, g the pacing of
:func:`fedopt.local.curriculum.pacing` over the R·m client updates of the run, u = t·m the
updates before round t, and never fewer than m = ``clients_per_round``. Unlike the authors'
scheduler (which re-scores once its shuffled pool is used up) the clients are re-scored every
round: one forward pass over every client's training rows on the coordinator (the cost of one
evaluation). Scores and draws depend only on (seed, round, global model), so a resumed run
and every executor sample the same clients. ``aggregation_weights: unbiased`` assumes uniform
sampling and is then only approximately unbiased. Refused with ``privacy: dp_fedavg``
(its accountant assumes uniform sampling at rate m/N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedopt.local.curriculum import ORDERS, PACINGS, client_pool
from fedopt.rng import STREAM_CLIENT_ORDER, round_generator
from fedopt.schema import ConfigError, PositiveFloat, Probability, Schema

#: rows per forward pass of the scoring
SCORE_ROWS = 1 << 15


class ClientCurriculumConfig(Schema):
    """``client.client_curriculum``: the server's client-level curriculum (fedopt.local.client_order)."""

    what = "client.client_curriculum"
    order: Literal[ORDERS] = Field("curriculum", description="curriculum (lowest global-model "
                                                             "loss first), anti or random")
    pacing: Literal[PACINGS] = Field("linear", description="pacing function g of the pool")
    a: PositiveFloat = Field(0.2, description="fraction of the client updates until all clients")
    b: Probability = Field(0.4, description="fraction of the clients in the first pool")


def client_losses(fmodel, loss_fn, params: dict, x: torch.Tensor, y: torch.Tensor,
                  offsets: np.ndarray) -> np.ndarray:
    """float64 [K]: each client's mean per-example loss of ``params`` over its training rows
    (NaN for a client without rows)."""
    per = []
    with torch.no_grad():
        for lo in range(0, x.shape[0], SCORE_ROWS):
            out = fmodel.forward(params, x[lo:lo + SCORE_ROWS])
            per.append(loss_fn(out, y[lo:lo + SCORE_ROWS]).double().cpu())
    s = torch.cat(per).numpy() if per else np.zeros(0)
    sums = np.add.reduceat(np.append(s, 0.0), offsets[:-1]) if len(offsets) > 1 else np.zeros(0)
    n = np.diff(offsets)
    sums = np.where(n > 0, sums, np.nan)
    return sums / np.maximum(n, 1)


@dataclass
class ClientCurriculum:
    """Algorithm ``inner`` (a FedAvg-family algorithm: it samples with ``sample_clients``) whose
    round-t sample comes from the client-level curriculum's pool (module docstring)."""

    inner: Any
    order: str
    pacing: str
    a: float
    b: float
    data: Any
    fmodel: Any
    loss_fn: Any
    rounds: int

    def __post_init__(self) -> None:
        self._offsets = self.data.offsets.cpu().numpy()

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init(self, params):
        return self.inner.init(params)

    def local_program(self):
        return self.inner.local_program()

    def pool(self, params: dict, round_idx: int) -> np.ndarray:
        """The round's pool of client ids, in ranked order."""
        base = _base(self.inner)
        m = base.clients_per_round
        scores = client_losses(self.fmodel, self.loss_fn, params, self.data.x, self.data.y,
                               self._offsets)
        scores = np.where(np.isfinite(scores), scores, np.nanmax(scores, initial=0.0))
        return client_pool(scores, self.order, round_idx * m, self.rounds * m, self.pacing,
                           self.a, self.b, base.seed, round_idx, min_size=m)

    def run_round(self, state, executor, optimizer: Any = None):
        base = _base(self.inner)
        pool = self.pool(state.params, state.round)
        rng = round_generator(base.seed, STREAM_CLIENT_ORDER, state.round)
        chosen = np.sort(rng.choice(pool, base.clients_per_round, replace=False))
        base.sample_clients = lambda round_idx: chosen
        try:
            new, stats = self.inner.run_round(state, executor, optimizer)
        finally:
            del base.sample_clients
        stats["client_pool"] = len(pool)
        return new, stats


def _base(algorithm: Any) -> Any:
    """The innermost algorithm under wrappers that keep it as ``_inner``."""
    while "_inner" in vars(algorithm):
        algorithm = vars(algorithm)["_inner"]
    return algorithm


def with_client_curriculum(algorithm: Any, config: dict[str, Any], data: Any, fmodel: Any,
                           loss_fn: Any) -> Any:
    """``algorithm`` wrapped in :class:`ClientCurriculum` when ``client.client_curriculum`` is
    set; ConfigError naming it for an algorithm that does not sample with ``sample_clients``."""
    spec = (config.get("client") or {}).get("client_curriculum")
    if spec is None:
        return algorithm
    check_client_curriculum(algorithm, config)
    return ClientCurriculum(algorithm, spec["order"], spec["pacing"], float(spec["a"]),
                            float(spec["b"]), data, fmodel, loss_fn,
                            int(config["algorithm"]["rounds"]))


def check_client_curriculum(algorithm: Any, config: dict[str, Any] | None = None) -> None:
    """ConfigError naming ``client.client_curriculum`` unless ``algorithm`` samples with
    ``sample_clients`` (the FedAvg family), and with ``privacy: {mechanism: dp_fedavg}`` in
    ``config`` (or ``algorithm`` already made private): DP-FedAvg's accountant assumes each
    round's clients are sampled uniformly at rate m/N, which a pool ranked by the global
    model's loss on every client's data is not."""
    p = (config or {}).get("privacy") or {}
    if p.get("mechanism") == "dp_fedavg" or hasattr(algorithm, "epsilon_spent"):
        raise ConfigError("client.client_curriculum: not available with privacy (dp_fedavg): "
                          "its privacy accounting assumes clients sampled uniformly at rate "
                          "m/N, and the pool ranks clients by their data; remove one of them")
    if algorithm is None:
        return
    base = _base(algorithm)
    if not all(hasattr(base, k) for k in ("sample_clients", "clients_per_round", "num_clients",
                                          "seed")):
        raise ConfigError(f"client.client_curriculum: needs an algorithm that samples clients "
                          f"each round (the FedAvg family), not {type(base).__name__}")
