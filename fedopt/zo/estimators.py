"""Zeroth-order gradient estimators, vectorized over clients and directions, and the local
program's zeroth-order gradient oracle.

A client can only evaluate its objective f (a minibatch loss under ``torch.no_grad``, or any
black box). From ``n`` directions u_1..u_n it forms scalar finite differences

    forward:  δ_j = (f(x + μ u_j) − f(x)) / μ            queries per estimate: n + 1
    central:  δ_j = (f(x + μ u_j) − f(x − μ u_j)) / (2μ)  queries per estimate: 2 n

and the estimate ĝ = c_D · Σ_j δ_j u_j, with c_D chosen so that c_D · n · E[u uᵀ] = I
(Nesterov & Spokoiny 2017; Liu et al. 2020, "A primer on zeroth-order optimization";
docs: ../shared/algorithms/zeroth_order.md §1):

==============  =====================================  ==========  =====================
``name``        direction u_j                          c_D         perturbation ‖μu‖
==============  =====================================  ==========  =====================
``gaussian``    u ~ N(0, I_d), n = q iid               1 / q       ≈ μ √d
``sphere``      u = z/‖z‖, z ~ N(0, I_d), n = q iid    d / q       exactly μ
``orthogonal``  Gram–Schmidt of q ≤ d Gaussian draws   d / q       exactly μ
``coordinate``  u_k = e_k, k = 1..d (n = d, q unused)  1           exactly μ
==============  =====================================  ==========  =====================

Facts the tests check (f(x) = ½ xᵀAx + bᵀx, g = ∇f(x)): the central difference is exact,
δ_j = u_jᵀ g, for any μ; the forward one adds (μ/2) u_jᵀAu_j, still unbiased for symmetric laws;
E ĝ = g for gaussian and sphere; with q directions in the μ → 0 limit
tr Cov ĝ = (d + 1)‖g‖²/q (gaussian) and (d − 1)‖g‖²/q (sphere); the coordinate estimate is exact
(central) on quadratics; orthogonal directions (FZooS's "rgf" baselines) have
tr Cov ĝ = (d/q − 1)‖g‖², exactly 0 at q = d. The dimension scaling is the point: an estimate costs O(q) queries but
has variance O(d/q)·‖g‖², so ZO-SGD needs about d/q times more steps than SGD (step size
η ≍ q/(d L)).

**Keyed directions (the seed trick).** Direction j of client i at local step k of the job keyed
by r (the round) is drawn from ``(seed, STREAM_ZO, r, i, k, j, coordinate)`` through
:func:`fedopt.rng.keyed_normal` (float64, the same bits on every host and executor). A client
may therefore send (its key, δ_1..δ_n) instead of a d-vector and the server regenerates ĝ
exactly: :func:`reconstruct`.

**Common random numbers.** Every evaluation entering one estimate uses the same minibatch (the
step's), so the data noise is not divided by μ; one direction set is shared by the batch's rows
(the same as estimating the gradient of the batch-mean loss).

Shapes: ``x`` [P, d] (P points: one per client), directions ``u`` [P, n, d], values [P, m].
Float64 is advised for tests: the round-off of a difference is ≈ eps·|f|/μ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from fedopt.engine.program import Batch, OracleContext, Params
from fedopt.rng import STREAM_ZO, keyed_normal
from fedopt.schema import PositiveFloat, PositiveInt, Schema

ESTIMATORS = ("gaussian", "sphere", "orthogonal", "coordinate")
SCHEMES = ("forward", "central")
SCALES = ("unbiased", "none")
#: the algorithms whose clients read ``client.estimator`` (others refuse it)
READ_ESTIMATOR = frozenset({"fedzo"})

#: a batched black box: query points [P, m, d] -> values [P, m] (row p: client p's objective)
BlackBox = Callable[[Tensor], Tensor]


class EstimatorConfig(Schema):
    """``client.estimator``: the zeroth-order gradient estimator of the clients
    (:mod:`fedopt.zo.estimators`; read by the zeroth-order algorithms)."""

    what = "client.estimator"
    name: Literal[ESTIMATORS] = Field("sphere", description="direction law: gaussian, sphere "
                                                           "(FedZO's) or coordinate")
    directions: PositiveInt = Field(20, description="q, directions per estimate (coordinate: d)")
    mu: PositiveFloat = Field(1e-3, description="μ, the smoothing radius of a difference")
    scheme: Literal[SCHEMES] = Field("forward", description="forward (q+1 queries) or central "
                                                            "(2q queries)")
    scale: Literal[SCALES] = Field("unbiased", description="c_D of the table (unbiased) or 1/q "
                                                           "(none: FZooS's rgf baselines)")
    max_models: Optional[PositiveInt] = Field(
        None, description="evaluate at most this many perturbed models per forward pass "
                          "(memory of large models; null: all C·(q+1) at once)")


def num_directions(name: str, q: int, d: int) -> int:
    """n: q for the random laws, d for ``coordinate``."""
    _check_name(name)
    return d if name == "coordinate" else int(q)


def queries_per_estimate(name: str, scheme: str, q: int, d: int) -> int:
    """Function evaluations behind one estimate: n + 1 (forward) or 2n (central)."""
    n = num_directions(name, q, d)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: one of {SCHEMES}, got {scheme!r}")
    return n + 1 if scheme == "forward" else 2 * n


def scale(name: str, q: int, d: int) -> float:
    """c_D of the table above."""
    _check_name(name)
    return {"gaussian": 1.0 / q, "sphere": d / q, "orthogonal": d / q, "coordinate": 1.0}[name]


def _check_name(name: str) -> None:
    if name not in ESTIMATORS:
        raise ValueError(f"estimator: one of {ESTIMATORS}, got {name!r}")


def directions(name: str, seed: int, keys: int | np.ndarray, client_ids: np.ndarray, step: int,
               q: int, d: int) -> np.ndarray:
    """Float64 directions [P, n, d] for the P clients ``client_ids`` (keys: one int, or one per
    client) at local step ``step``: a pure function of (seed, key, client, step, j)."""
    _check_name(name)
    ids = np.asarray(client_ids, dtype=np.int64).reshape(-1)
    if name == "coordinate":
        return np.broadcast_to(np.eye(d), (len(ids), d, d)).copy()
    k = np.asarray(keys, dtype=np.int64)
    k = k.reshape(-1, 1, 1) if k.ndim else k
    z = keyed_normal(seed, STREAM_ZO, k, ids[:, None, None], int(step),
                     np.arange(q)[None, :, None], np.arange(d)[None, None, :])
    if z.shape != (len(ids), q, d):
        z = np.broadcast_to(z, (len(ids), q, d)).copy()
    if name == "sphere":
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    elif name == "orthogonal":
        if q > d:
            raise ValueError(f"directions: orthogonal directions need q <= d = {d}, got {q}")
        qmat, r = np.linalg.qr(np.swapaxes(z, -1, -2))        # Gram–Schmidt of the q draws
        z = np.swapaxes(qmat * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :], -1, -2)
    return z


def estimate(f: BlackBox, x: Tensor, u: Tensor, mu: float, scheme: str, c: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """ĝ [P, d], the differences δ [P, n] and f's value at x [P] (forward: f(x), a query;
    central: the mean of the 2n values, f(x) + O(μ²), no extra query) from ONE call of the
    batched black box ``f`` on [P, n+1, d] (forward) or [P, 2n, d] (central) points."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: one of {SCHEMES}, got {scheme!r}")
    if not mu > 0:
        raise ValueError(f"mu: must be > 0, got {mu}")
    n = u.shape[1]
    if scheme == "forward":
        pts = torch.cat([x[:, None], x[:, None] + mu * u], dim=1)
        vals = f(pts)
        f0 = vals[:, 0]
        delta = (vals[:, 1:] - f0[:, None]) / mu
    else:
        pts = torch.cat([x[:, None] + mu * u, x[:, None] - mu * u], dim=1)
        vals = f(pts)
        f0 = vals.mean(1)
        delta = (vals[:, :n] - vals[:, n:]) / (2 * mu)
    g = c * torch.einsum("pn,pnd->pd", delta, u)
    return g, delta, f0


def reconstruct(name: str, seed: int, key: int, client: int, step: int, delta: Tensor | np.ndarray,
                d: int) -> np.ndarray:
    """The server side of the seed trick: ĝ = c_D Σ_j δ_j u_j [d] (float64) from a client's
    (key, client, step) and its n scalars δ — equal to the client's own estimate."""
    delta = np.asarray(delta, dtype=np.float64).reshape(-1)
    q = len(delta)
    u = directions(name, seed, key, np.array([client]), step, q, d)[0]
    return scale(name, q, d) * (delta @ u)


# --------------------------------------------------------------------------- the oracle
def _flatten(y: Params) -> Tensor:
    return torch.cat([v.flatten(1) for v in y.values()], dim=1)


def _unflatten(flat: Tensor, like: Params) -> Params:
    out, lo = {}, 0
    lead = flat.shape[:-1]
    for k, v in like.items():
        size = v[0].numel()
        out[k] = flat[..., lo:lo + size].reshape(lead + v.shape[1:])
        lo += size
    return out


@dataclass(frozen=True)
class ZerothOrder:
    """The local program's zeroth-order gradient oracle: G(y) = ĝ (module docstring) of the
    client's minibatch loss, evaluated only through the trainer's ``batched_loss`` (no
    gradient). One batched forward pass per local step: the C clients' n + 1 (or 2n) query
    points are stacked into C·(n+1) models, each with its client's minibatch. The directions are
    keyed by the trainer's seed and the step's ``ctx.step_keys`` (job keys, client ids, step).

    ``name`` ∈ ``ESTIMATORS``; ``directions`` q ≥ 1; ``mu`` μ > 0; ``scheme`` forward/central.
    Queries per local step and client: :meth:`queries_per_step`."""

    name: str = "sphere"
    directions: int = 20
    mu: float = 1e-3
    scheme: str = "forward"
    scale: str = "unbiased"
    max_models: int | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.directions, bool) or not isinstance(self.directions, int) \
                or self.directions < 1:
            raise ValueError(f"directions: must be an integer >= 1, got {self.directions!r}")
        if not (isinstance(self.mu, (int, float)) and self.mu > 0 and math.isfinite(self.mu)):
            raise ValueError(f"mu: must be finite and > 0, got {self.mu!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme: one of {SCHEMES}, got {self.scheme!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale: one of {SCALES}, got {self.scale!r}")
        if self.max_models is not None and not (isinstance(self.max_models, int)
                                                and self.max_models >= 1):
            raise ValueError(f"max_models: an integer >= 1 or None, got {self.max_models!r}")
        object.__setattr__(self, "mu", float(self.mu))

    @classmethod
    def from_config(cls, cfg: dict | None) -> "ZerothOrder":
        cfg = dict(cfg or {})
        return cls(cfg.get("name", "sphere"), cfg.get("directions", 20), cfg.get("mu", 1e-3),
                   cfg.get("scheme", "forward"), cfg.get("scale", "unbiased"),
                   cfg.get("max_models"))

    def c_d(self, d: int) -> float:
        """c_D (``scale: unbiased``), or 1/n (``none``: a global rescaling, harmless under Adam
        and sign-like rules, not under SGD)."""
        if self.scale == "none":
            return 1.0 / num_directions(self.name, self.directions, d)
        return scale(self.name, self.directions, d)

    def queries_per_step(self, d: int) -> int:
        """Function evaluations per client and local step for a model of d parameters."""
        return queries_per_estimate(self.name, self.scheme, self.directions, d)

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        info = getattr(ctx, "step_keys", None)
        if info is None:
            raise RuntimeError("ZerothOrder: the trainer gives no step_keys (job keys, client "
                               "ids, step) to key the directions by")
        flat = _flatten(y)
        C, d = flat.shape
        u = torch.from_numpy(directions(self.name, ctx.seed, info.keys, info.client_ids,
                                        info.step, self.directions, d)).to(flat)
        m = u.shape[1] + (1 if self.scheme == "forward" else u.shape[1])

        def f(pts: Tensor) -> Tensor:
            flat_pts = pts.reshape(C * m, d)
            rep = Batch(*(t.unsqueeze(1).expand((C, m) + t.shape[1:]).reshape(
                (C * m,) + t.shape[1:]) for t in batch))
            step = self.max_models or C * m
            vals = [ctx.batched_loss(_unflatten(flat_pts[lo:lo + step], y),
                                     Batch(*(t[lo:lo + step] for t in rep)))
                    for lo in range(0, C * m, step)]
            return torch.cat(vals).view(C, m)

        with torch.no_grad():
            g, _, f0 = estimate(f, flat, u, self.mu, self.scheme,
                                self.c_d(d))
        return _unflatten(g, y), f0
