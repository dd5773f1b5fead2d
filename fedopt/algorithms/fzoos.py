"""FZooS (Shu, Lin, Dai & Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
Surrogate Gradients", arXiv 2308.04077; authors' code shuyao95/FZooS@27cd341;
``../shared/algorithms/zeroth_order.md`` §3): clients step along the gradient of a Gaussian
process fitted to their own query history, corrected by the gap between a global and a local
random-Fourier-feature surrogate (:mod:`fedopt.zo.surrogate`).

Client i keeps its whole query history D_i (all rounds; ``ServerState.extra``). Before round 1
it queries ``n_inits`` points uniform in x_0 ± 0.01. Round r (all N clients; the paper and code
have no partial participation), from x_{r−1}:

1. query f_i(x_{r−1}) (1); Adam state fresh (the client optimizer, ``client.optimizer``;
   the paper's Adam, lr 0.01);
2. T = ``iters`` local steps t = 0..T−1:
   ĝ = s_i ∇μ_i(y)  (GP posterior-mean gradient on the ``nearest`` = 150 points of D_i closest
   to y, y normalised to [0, 1] by its min and max, s_i = max − min; SE kernel, lengthscale by
   ML-II once per client and round), plus from round 2 on the correction
   γ_t (J(y)ᵀā − J(y)ᵀa_i), γ_t = 1/(t+1); y ← Adam(y, ĝ); query f_i(y) (1);
   if t < T−1, the ``active`` = 5 of ``candidates`` = 100 points uniform in y ± 0.01 with the
   largest posterior tr Cov∇ are queried (5);
3. the server averages: x_r = x_{r−1} + η_g Σ_i w_i (y_i − x_{r−1}) (the server optimizer);
4. each client queries x_r and the ``rff_active`` = 50 of 200 candidates in x_r ± ρ_i
   (ρ_i = mean_k |x_r − y_i|_k / 2) with the largest tr Cov∇ (51), fits RFF coefficients a_i on
   its ``rff_nearest`` = 500 points nearest x_r (min–max normalised, ridge λ) and sends s_i·a_i
   (M floats); the server broadcasts ā = Σ_i w_i s_i a_i.

Queries per client and round: 1 + T + 5(T − 1) + 51 (107 for T = 10), all counted; metrics rows
carry the cumulative ``queries`` (``local_loss``: Σ_i w_i f_i(y_i) at the clients' last
local iterates, already queried). Each query is one evaluation of the client's loss through the
executor (a zero-step job of the :class:`~fedopt.zo.cbo.LossOnly` program; it averages the
client's ``client.local_steps`` minibatches: use 1).

Deviations from the authors' code (``zeroth_order.md`` §3.9), chosen explicitly: SE kernel with
a grid ML-II lengthscale once per round instead of Matérn-5/2 with 20 restarts per step; the
active queries score the trace of Cov∇ with the fitted kernel (the code scores ∂f/∂x₁'s variance
against broadcast-shifted points); the RFF fit has a ridge (``ridge``, default 1e-6) instead of
λ = 0; the code's acceptance test with the *true* global F and uncounted queries is only the
labelled option ``acceptance: uncounted``; ``counted`` evaluates F(x_r) and F(x_{r−1}) on every
client and counts the 2N queries; ``none`` (default) has no test.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedopt.algorithms.base import AlgorithmSpec, ServerState
from fedopt.algorithms.fedavg import FedAvg, dropped_stats
from fedopt.algorithms.fedzo import count_queries
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.engine.contract import Executor
from fedopt.engine.program import LocalProgram
from fedopt.optim import make
from fedopt.rng import STREAM_FZOOS, keyed_uniform
from fedopt.zo.cbo import LossOnly
from fedopt.zo.estimators import _flatten, _unflatten
from fedopt.zo.surrogate import GPGradient, RandomFeatures, fit_lengthscale

ACCEPTANCE = ("none", "counted", "uncounted")


class FZooS(FedAvg):
    def __init__(self, counts: np.ndarray, clients_per_round: int,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str = "uniform", seed: int = 0, *, rounds: int,
                 iters: int = 10, n_inits: int = 10, nearest: int = 150, active: int = 5,
                 candidates: int = 100, radius: float = 0.01, rff_features: int = 10000,
                 rff_lengthscale: float = 1.0, rff_nearest: int = 500, rff_active: int = 50,
                 rff_candidates: int = 200, ridge: float = 1e-6, nugget: float = 1e-6,
                 correction: bool = True, acceptance: str = "none"):
        super().__init__(counts, clients_per_round, server_optimizer, aggregation_weights, seed)
        if clients_per_round != self.num_clients:
            raise ValueError(f"clients_per_round: FZooS runs every client each round (the "
                             f"paper and its code have no partial participation); set it to "
                             f"{self.num_clients}")
        if acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance: one of {ACCEPTANCE}, got {acceptance!r}")
        self.rounds, self.iters, self.n_inits = int(rounds), int(iters), int(n_inits)
        self.nearest, self.active, self.candidates = int(nearest), int(active), int(candidates)
        self.radius = float(radius)
        self.rff_features, self.rff_lengthscale = int(rff_features), float(rff_lengthscale)
        self.rff_nearest, self.rff_active = int(rff_nearest), int(rff_active)
        self.rff_candidates = int(rff_candidates)
        self.ridge, self.nugget = float(ridge), float(nugget)
        self.correction, self.acceptance = bool(correction), acceptance
        self._rff: RandomFeatures | None = None

    def queries_per_round(self) -> int:
        """Per client: 1 + T + active·(T − 1) + 1 + rff_active (no acceptance test)."""
        return 1 + self.iters + self.active * (self.iters - 1) + 1 + self.rff_active

    def local_program(self) -> LocalProgram:
        return LocalProgram(oracle=LossOnly())

    # -- pieces --------------------------------------------------------------------------------
    def _features(self, d: int, dtype: torch.dtype) -> RandomFeatures:
        if self._rff is None or self._rff.d != d:
            self._rff = RandomFeatures(d, self.rff_features, self.rff_lengthscale,
                                       seed=self.seed, dtype=dtype)
        return self._rff

    def _evaluate(self, state: ServerState, executor: Executor, ids: np.ndarray, pts: torch.Tensor,
                  key: int) -> torch.Tensor:
        """f_i at each client's points: pts [C, p, d] -> values [C, p] (C·p queries)."""
        c, p, d = pts.shape
        like = {k: v.unsqueeze(0) for k, v in state.params.items()}
        starts = _unflatten(pts.reshape(c * p, d).to(next(iter(like.values()))), like)
        out = executor.run_jobs(starts, np.repeat(ids, p), np.full(c * p, key, np.int64),
                                np.ones(c * p), optimizer=make("sgd", lr=0.0), keep_local=True)
        if len(out.nonfinite):
            raise FloatingPointError(f"fzoos: non-finite values of clients "
                                     f"{sorted(set(out.nonfinite.tolist()))}")
        return torch.as_tensor(out.local_loss, dtype=pts.dtype).view(c, p)

    def _append(self, state: ServerState, pts: torch.Tensor, vals: torch.Tensor) -> None:
        h = state.extra["fzoos"]
        for i in range(pts.shape[0]):
            n = int(h["n"][i])
            h["x"][i, n:n + pts.shape[1]] = pts[i]
            h["y"][i, n:n + pts.shape[1]] = vals[i]
            h["n"][i] = n + pts.shape[1]

    def _data(self, state: ServerState, i: int, at: torch.Tensor, k: int):
        """The k points of D_i nearest ``at`` and their values."""
        h = state.extra["fzoos"]
        n = int(h["n"][i])
        x, y = h["x"][i, :n], h["y"][i, :n]
        if n > k:
            idx = torch.topk((x - at).pow(2).sum(1), k, largest=False).indices
            x, y = x[idx], y[idx]
        return x, y

    def _gp(self, state: ServerState, i: int, at: torch.Tensor, ls: float | None):
        x, y = self._data(state, i, at, self.nearest)
        lo, hi = float(y.min()), float(y.max())
        scale = hi - lo
        yn = (y - lo) / (scale + 1e-20)
        yn = yn - yn.mean()
        if ls is None:
            ls = fit_lengthscale(x, yn, self.nugget)
        return GPGradient(x, yn, ls, 1.0, self.nugget), scale, ls

    def _uniform(self, ids: np.ndarray, tag: int, round_idx: int, step: int, p: int, d: int,
                 dtype) -> torch.Tensor:
        u = keyed_uniform(self.seed, STREAM_FZOOS, tag, round_idx, ids[:, None, None], step,
                          np.arange(p)[None, :, None], np.arange(d)[None, None, :])
        return torch.from_numpy(2 * u - 1).to(dtype)

    def _most_uncertain(self, gp: GPGradient, cands: torch.Tensor, k: int) -> torch.Tensor:
        return cands[torch.topk(gp.cov_trace(cands), min(k, len(cands))).indices]

    # -- a round -------------------------------------------------------------------------------
    def init(self, params):
        state = super().init(params)
        x0 = _flatten({k: v.unsqueeze(0) for k, v in state.params.items()})[0]
        n, d = self.num_clients, x0.numel()
        cap = self.n_inits + self.rounds * (self.queries_per_round() + 2)
        state.extra["fzoos"] = {"x": x0.new_zeros(n, cap, d), "y": x0.new_zeros(n, cap),
                                "n": torch.zeros(n, dtype=torch.int64),
                                "a": x0.new_zeros(n, self.rff_features),
                                "abar": x0.new_zeros(self.rff_features), "have": False,
                                "started": False}
        return state

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        h = state.extra["fzoos"]
        ids = np.arange(self.num_clients)
        w = torch.as_tensor(self.weights(ids))
        x = _flatten({k: v.unsqueeze(0) for k, v in state.params.items()})[0]
        d, c, r = x.numel(), len(ids), state.round
        dtype = x.dtype
        queries = 0
        key = r * 10_000
        if not h["started"]:
            pts = x + 0.01 * self._uniform(ids, 0, r, 0, self.n_inits, d, dtype)
            self._append(state, pts, self._evaluate(state, executor, ids, pts, key))
            queries += c * self.n_inits
            h["started"] = True
        y = x.expand(c, d).clone()
        self._append(state, y[:, None], self._evaluate(state, executor, ids, y[:, None], key + 1))
        queries += c
        opt = optimizer if optimizer is not None else executor.optimizer
        opt_state = opt.init({"x": y}, batch_shape=(c,))
        rff = self._features(d, dtype)
        lengthscales: list[float | None] = [None] * c
        for t in range(self.iters):
            g = torch.empty_like(y)
            gps = []
            for i in range(c):
                gp, scale, lengthscales[i] = self._gp(state, i, y[i], lengthscales[i])
                gps.append(gp)
                g[i] = scale * gp.mean_grad(y[i:i + 1])[0]
            if self.correction and h["have"]:
                gamma = 1.0 / (t + 1)
                g = g + gamma * (rff.grad(y, h["abar"].expand(c, -1)) - rff.grad(y, h["a"]))
            new, opt_state = opt.update({"x": y}, {"x": g}, opt_state)
            y = new["x"]
            pts = y[:, None]
            if t < self.iters - 1 and self.active:
                cands = y[:, None] + self.radius * self._uniform(ids, 1, r, t, self.candidates,
                                                                 d, dtype)
                picks = torch.stack([self._most_uncertain(gps[i], cands[i], self.active)
                                     for i in range(c)])
                pts = torch.cat([pts, picks], dim=1)
            vals = self._evaluate(state, executor, ids, pts, key + 2 + t)
            self._append(state, pts, vals)
            queries += c * pts.shape[1]
            last = vals[:, 0]                                   # f_i(y_i) after this step
        delta_flat = (w[:, None].to(dtype) * (y - x)).sum(0)
        like = {k: v.unsqueeze(0) for k, v in state.params.items()}
        delta = {k: v[0] for k, v in _unflatten(delta_flat[None], like).items()}
        new_state = self.apply(state, delta)
        x_new = _flatten({k: v.unsqueeze(0) for k, v in new_state.params.items()})[0]
        if self.acceptance != "none":
            both = torch.stack([x_new, x]).expand(c, 2, d)
            vals = self._evaluate(state, executor, ids, both, key + 5_000)
            if self.acceptance == "counted":
                queries += 2 * c
            f_new, f_old = (w.to(dtype)[:, None] * vals).sum(0) / w.sum()
            if f_new >= f_old:
                new_state.params = state.params
                x_new = x
        # surrogate exchange around x_r
        pts = [x_new[None]]
        rho = (x_new - y).abs().mean(1) / 2
        cands = x_new + rho[:, None, None] * self._uniform(ids, 2, r, 0, self.rff_candidates, d,
                                                          dtype)
        picks = []
        for i in range(c):
            gp, _, _ = self._gp(state, i, x_new, None)
            picks.append(self._most_uncertain(gp, cands[i], self.rff_active))
        pts = torch.cat([x_new.expand(c, 1, d), torch.stack(picks)], dim=1)
        self._append(state, pts, self._evaluate(state, executor, ids, pts, key + 9_000))
        queries += c * pts.shape[1]
        for i in range(c):
            xs, ys = self._data(state, i, x_new, self.rff_nearest)
            lo, hi = float(ys.min()), float(ys.max())
            a = rff.fit(xs, (ys - lo) / (hi - lo + 1e-40), self.ridge)
            h["a"][i] = (hi - lo) * a
        h["abar"] = (w.to(dtype)[:, None] * h["a"]).sum(0) / w.sum()
        h["have"] = True
        new_state.extra = state.extra
        stats = {"local_loss": float((w.to(dtype) * last).sum() / w.sum()), "updates": c,
                 "samples": 0,
                 "queries": count_queries(new_state, queries), **dropped_stats(state, executor)}
        return new_state, stats


def _build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
           server_optimizer: ServerOptimizer, config: dict[str, Any]) -> FZooS:
    keys = ("iters", "n_inits", "nearest", "active", "candidates", "radius", "rff_features",
            "rff_lengthscale", "rff_nearest", "rff_active", "rff_candidates", "ridge", "nugget",
            "correction", "acceptance")
    return FZooS(counts, cfg["clients_per_round"], server_optimizer, cfg["aggregation_weights"],
                 seed=seed, rounds=cfg["rounds"], **{k: cfg[k] for k in keys})


def _specs() -> dict[str, AlgorithmSpec]:
    from fedopt.algorithms.base import schema
    from fedopt.algorithms.fedavg import AGGREGATION_WEIGHTS
    from fedopt.schema import Bool, NonNegativeInt, PositiveFloat, PositiveInt

    fields = dict(
        aggregation_weights=(Literal[AGGREGATION_WEIGHTS], "uniform"),
        iters=(PositiveInt, Field(10, description="T, local steps per round (one query each)")),
        n_inits=(PositiveInt, Field(10, description="initial queries per client in x0 ± 0.01")),
        nearest=(PositiveInt, Field(150, description="history points of the local GP")),
        active=(NonNegativeInt, Field(5, description="uncertainty queries per local step")),
        candidates=(PositiveInt, Field(100, description="candidates they are chosen from")),
        radius=(PositiveFloat, Field(0.01, description="candidate box half-width")),
        rff_features=(PositiveInt, Field(10000, description="M, random Fourier features")),
        rff_lengthscale=(PositiveFloat, Field(1.0, description="RFF kernel lengthscale")),
        rff_nearest=(PositiveInt, Field(500, description="history points of the RFF fit")),
        rff_active=(NonNegativeInt, Field(50, description="uncertainty queries near x_r")),
        rff_candidates=(PositiveInt, Field(200, description="candidates they are chosen from")),
        ridge=(PositiveFloat, Field(1e-6, description="λ of the RFF ridge fit")),
        nugget=(PositiveFloat, Field(1e-6, description="GP noise variance")),
        correction=(Bool, Field(True, description="the adaptive RFF gradient correction")),
        acceptance=(Literal[ACCEPTANCE], Field(
            "none", description="server acceptance test of x_r: none, counted (2N queries), or "
                                "uncounted (the authors' code; not federated-faithful)")),
    )
    return {"fzoos": AlgorithmSpec(
        schema("fzoos", "FZooS: trajectory-informed surrogate gradients (GP) with RFF "
                        "correction", **fields),
        {"name": "sgd", "lr": 1.0}, _build, "FZooS (zeroth-order, GP/RFF surrogates)")}


ALGORITHM_SPECS = _specs()
