"""Per-client evaluation: the fairness distribution of the global (or personalised) model.

For each client i of a subset S (all clients, or a fixed random subset of ``clients`` of them
drawn once from the seed), the model is evaluated on i's own test rows D_i:
``acc_i = (1/|D_i|) Σ_{r∈D_i} 1[argmax f(x_r) = y_r]`` and likewise the loss and every metric
of the run's program. Clients without test rows are left out. The row gets, for the loss and
each metric ``m``, the distribution over the clients evaluated::

    client_test_<m>_mean     (1/|S|) Σ_i m_i
    client_test_<m>_std      population standard deviation of the m_i
    client_test_<m>_worst10  mean of the ⌈0.1·|S|⌉ worst m_i (highest loss/mse, lowest others)
    client_test_<m>_best10   mean of the ⌈0.1·|S|⌉ best m_i
    client_eval_clients      |S| (clients with test rows)

as in q-FFL (Li et al., ICLR 2020) and Ditto (Li et al., ICML 2021). A metric's statistics are
None when any evaluated client's model outputs were non-finite (as for the global metrics).

*Personalised* evaluation (``personalize_steps`` k > 0) first trains each client of S for k
local steps of the client optimizer from the global model on its own training rows (the run's
minibatch plan, keyed by seed, evaluation round and client), then evaluates that local model on
its test rows: ``personal_test_<m>_*`` columns. The global model is not changed.

Everything is computed in-process from the data set the simulation holds, whatever executor
trains: one :func:`~fedopt.engine.evaluate.evaluate_sums` pass grouped by client.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from fedopt.engine.evaluate import evaluate_sums, row_values
from fedopt.engine.local import FunctionalModel, LocalTrainer, Params
from fedopt.engine.program import LocalProgram
from fedopt.rng import STREAM_EVAL, keyed_uniform
from fedopt.schema import NonNegativeInt, PositiveInt, Schema

#: the coordinate of the fixed per-client subset in :data:`STREAM_EVAL` (rounds are >= 0)
FIXED_SUBSET = -1
#: metrics for which a lower value is better (the loss always is)
LOWER_IS_BETTER = frozenset({"loss", "mse"})
#: the fraction of clients the worst/best statistics average over
TAIL = 0.1
#: clients trained at once by personalised evaluation
PERSONAL_CHUNK = 256
#: rows of ``client_test`` that :class:`ClientRows` reads at once
SCAN_ROWS = 1 << 22


class PerClientEvalConfig(Schema):
    """``per_client_eval:``: the global model on each client's own test rows (fairness)."""

    what = "per_client_eval"
    every: PositiveInt = Field(
        1, description="rounds between per-client evaluations (a multiple of eval_every; the "
                       "last round always has one)")
    clients: Optional[PositiveInt] = Field(
        None, description="evaluate a fixed random subset of this many clients (drawn once "
                          "from the seed); null: every client")
    personalize_steps: NonNegativeInt = Field(
        0, description="k > 0: also evaluate each client's model after k local steps of the "
                       "client optimizer from the global model (personal_test_* columns)")


def check_config(cfg: dict[str, Any]) -> None:
    """Cross-key checks of ``per_client_eval``: ``every`` a multiple of ``eval_every`` (rows
    exist only at evaluation rounds). Raises ConfigError naming the field."""
    from fedopt.schema import ConfigError

    pce = cfg.get("per_client_eval")
    if pce is not None and pce["every"] % cfg["eval_every"]:
        raise ConfigError(f"per_client_eval.every: {pce['every']} is not a multiple of "
                          f"eval_every ({cfg['eval_every']}); per-client metrics are added to "
                          f"evaluation rows")


def draw_clients(seed: int, num_clients: int, m: int | None, coord: int) -> np.ndarray:
    """Sorted int64 ids of ``m`` of ``num_clients`` clients drawn uniformly without replacement,
    keyed by (seed, :data:`STREAM_EVAL`, ``coord``, client) — a round, or :data:`FIXED_SUBSET`;
    every client when ``m`` is None or >= ``num_clients``."""
    if m is None or m >= num_clients:
        return np.arange(num_clients, dtype=np.int64)
    u = keyed_uniform(seed, STREAM_EVAL, coord, np.arange(num_clients))
    return np.sort(np.argsort(u, kind="stable")[:m]).astype(np.int64)


class ClientRows:
    """Each client's test rows of a FederatedDataset: ``offsets`` ``[K+1]`` (client i's rows
    are ``order[offsets[i]:offsets[i+1]]``) and ``order``, the test row indices sorted by
    client (stable), or None when ``client_test`` is already sorted (fedopt's builders sort
    it; the order is then the identity and is not stored: a memory-mapped test set of any size
    costs ``[K+1]`` offsets here). Built once, reading ``client_test`` in chunks of
    :data:`SCAN_ROWS`."""

    def __init__(self, client_test: Tensor, num_clients: int):
        ct = client_test.cpu().numpy()   # int64 (FederatedDataset's layout); a view on CPU
        counts = np.zeros(num_clients, dtype=np.int64)
        in_order, last = True, None
        for lo in range(0, ct.shape[0], SCAN_ROWS):
            part = ct[lo:lo + SCAN_ROWS]
            counts += np.bincount(part, minlength=num_clients)[:num_clients]
            in_order = in_order and bool(np.all(part[1:] >= part[:-1])) and (
                last is None or bool(part[0] >= last))
            last = part[-1]
        self.order = None if in_order else np.argsort(ct, kind="stable")
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _take(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.order is None else self.order[positions]

    def counts(self, ids: np.ndarray) -> np.ndarray:
        return self.offsets[ids + 1] - self.offsets[ids]

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, group 0..len(ids)-1 of each) of the clients ``ids``, client by client."""
        lo, n = self.offsets[ids], self.counts(ids)
        group = np.repeat(np.arange(len(ids), dtype=np.int64), n)
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        return self._take(starts + np.arange(int(n.sum()))), group

    def padded(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test rows of clients ``ids`` (each with at least one) as ``[len(ids), width]``
        indices, width the most rows of any of them (shorter clients repeat their last row),
        and the bool mask of real rows."""
        n = self.counts(ids)
        width = max(int(n.max()), 1) if len(ids) else 1
        pos = np.arange(width)[None, :]
        rows = self._take(self.offsets[ids][:, None] + np.minimum(pos, n[:, None] - 1))
        return rows, pos < n[:, None]


def client_means(fmodel: FunctionalModel, params: Params, data: Any, index: ClientRows,
                 ids: np.ndarray, program: LocalProgram) -> tuple[dict[str, np.ndarray], bool]:
    """Per-client means ``{name: float64 [m]}`` (loss and metrics) of ``params`` on the test
    rows of clients ``ids`` (all of them have rows), and whether every output was finite."""
    if len(ids) == data.num_clients:     # everyone: the test set as it is, grouped by client
        groups, x, y = data.client_test, data.x_test, data.y_test
    else:
        rows, group = index.rows(ids)
        r = torch.as_tensor(rows, device=data.x_test.device)
        x, y = data.x_test.index_select(0, r), data.y_test.index_select(0, r)
        groups = torch.as_tensor(group, device=data.x_test.device)
    s = evaluate_sums(fmodel, params, x, y, program, groups=groups, num_groups=len(ids))
    means = (s.sums / s.rows.clamp_min(1).double()).cpu().numpy()
    return dict(zip(s.names, means)), bool(s.finite.all())


def distribution(values: np.ndarray, lower_is_better: bool) -> dict[str, float]:
    """``mean``, ``std`` (population), ``worst10`` and ``best10`` (means of the ⌈0.1·m⌉
    worst / best values) of the m per-client ``values``."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = max(1, math.ceil(TAIL * len(v)))
    low, high = float(v[:k].mean()), float(v[-k:].mean())
    return {"mean": float(v.mean()), "std": float(v.std()),
            "worst10": high if lower_is_better else low, "best10": low if lower_is_better else high}


def distribution_columns(prefix: str, means: dict[str, np.ndarray], finite: bool
                         ) -> dict[str, float | None]:
    """The row's ``<prefix>_<name>_<stat>`` columns (see the module docstring)."""
    row: dict[str, float | None] = {}
    for name, v in means.items():
        stats = distribution(v, name in LOWER_IS_BETTER)
        for stat, x in stats.items():
            row[f"{prefix}_{name}_{stat}"] = x if finite or name == "loss" else None
    return row


def personal_means(trainer: LocalTrainer, params: Params, data: Any, index: ClientRows,
                   ids: np.ndarray, *, steps: int, batch_size: int, seed: int, key: int,
                   optimizer: Any) -> tuple[dict[str, np.ndarray], bool]:
    """Per-client means of each client's *personalised* model — ``steps`` local steps of
    ``optimizer`` from ``params`` on its training rows, minibatches keyed by (seed, ``key``,
    client) — on its own test rows. Clients without training rows keep ``params``."""
    from fedopt.engine.batches import plan_batches

    fmodel, program = trainer.fmodel, trainer.program.for_task(data.is_regression)
    loss_fn = program.loss_fn
    metrics = program.metric_fns(data.is_regression)
    names = ("loss", *metrics)
    offsets = data.offsets.cpu().numpy()
    train_n = offsets[ids + 1] - offsets[ids]
    out = np.zeros((len(names), len(ids)))
    finite = True
    dev = data.x.device
    for lo in range(0, len(ids), PERSONAL_CHUNK):
        cid = ids[lo:lo + PERSONAL_CHUNK]
        c = len(cid)
        stacked = {k: v.unsqueeze(0).expand((c,) + v.shape).clone() for k, v in params.items()}
        has = np.flatnonzero(train_n[lo:lo + c] > 0)
        if len(has):
            plan = plan_batches(seed, key, cid[has], offsets, batch_size,
                                np.full(len(has), steps, dtype=np.int64), device=dev,
                                dtype=data.x.dtype)
            res = trainer.train(params, data.x, data.y, plan, round_idx=key,
                                client_ids=cid[has], optimizer=optimizer)
            h = torch.as_tensor(has, device=dev)
            for k in stacked:
                stacked[k][h] = res.params[k].detach()
        rows, real = index.padded(cid)
        r = torch.as_tensor(rows.reshape(-1), device=dev)
        xb = data.x_test.index_select(0, r).view(rows.shape + tuple(data.x_test.shape[1:]))
        yb = data.y_test.index_select(0, r).view(rows.shape + tuple(data.y_test.shape[1:]))
        mask = torch.as_tensor(real, device=dev)
        with torch.no_grad():
            o = fmodel.batched_forward(stacked, xb)                 # [c, width, outputs]
            values = row_values(o.flatten(0, 1), yb.flatten(0, 1), loss_fn, metrics)
            per = torch.stack([v.double() for v in values]).view((len(names),) + rows.shape)
            per = torch.where(mask, per, torch.zeros((), dtype=per.dtype, device=dev))
            ok = torch.isfinite(o.flatten(2).sum(2, dtype=torch.float64)) | ~mask
        out[:, lo:lo + c] = (per.sum(2) / mask.sum(1).double()).cpu().numpy()
        finite = finite and bool(ok.all())
    return dict(zip(names, out)), finite


class PerClientEvaluator:
    """The ``per_client_eval`` columns of a run's evaluation rows (module docstring)."""

    def __init__(self, config: dict[str, Any], data: Any):
        self.cfg = config["per_client_eval"]
        self.seed = config["seed"]
        self.index = ClientRows(data.client_test, data.num_clients)
        chosen = draw_clients(self.seed, data.num_clients, self.cfg["clients"], FIXED_SUBSET)
        #: the clients evaluated: the chosen ones that have test rows
        self.ids = chosen[self.index.counts(chosen) > 0]

    def due(self, round_idx: int, last: bool) -> bool:
        return round_idx % self.cfg["every"] == 0 or last

    def columns(self, sim: Any, round_idx: int) -> dict[str, Any]:
        """The columns at ``round_idx`` for the simulation's global model."""
        data, params = sim.data, sim.state.params
        row: dict[str, Any] = {"client_eval_clients": len(self.ids)}
        if not len(self.ids):
            return row
        means, ok = client_means(sim.fmodel, params, data, self.index, self.ids, sim.program)
        row.update(distribution_columns("client_test", means, ok))
        k = self.cfg["personalize_steps"]
        if k:
            means, ok = personal_means(sim.trainer, params, data, self.index, self.ids,
                                       steps=k, batch_size=sim.batch_size, seed=self.seed,
                                       key=round_idx,
                                       optimizer=sim.client_optimizer_at(round_idx))
            row.update(distribution_columns("personal_test", means, ok))
        return row
