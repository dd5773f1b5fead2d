"""DIFF2's client message (Murata & Suzuki, "DIFF2: Differential Private Optimization via
Gradient Differences for Nonconvex Distributed Learning", ICML 2023; spec
``seed_extras.md`` §6.1), as a gradient oracle of a :class:`~fedopt.engine.program.LocalProgram`.

Client p holds n_p records z_{p,j}. In round r, from the broadcast x_r (and x_{r−1}):

    restart (r mod T = 0):  u_p = (1/n_p) [ Σ_j clip_{C1}(∇ℓ(x_r; z_pj))                    + z1·C1·ν ]
    difference (else):      u_p = (1/n_p) [ Σ_j clip_{C2}(∇ℓ(x_r; z_pj) − ∇ℓ(x_{r−1}; z_pj)) + z2·C2·ν ]

with clip_C(a) = a·min(1, C/‖a‖) per record on the whole flattened vector (the **difference** is
clipped, not the two gradients), ν ~ N(0, I) drawn by the client from (seed, r, p)
(:func:`~fedopt.privacy.postprocess.keyed_gaussian`), added to the **sum** before the division.
One record moves the sum by at most C1 (C2) under add/remove adjacency, so each message is a
Gaussian mechanism with noise multiplier z1 (z2) (:mod:`fedopt.privacy.accounting`).

How it runs on any executor: the server ships the pair (x_r, x_{r−1}) as one start model whose
names are the model's and the model's prefixed with :data:`PREV` (:func:`pair_start`); the job
is one full-batch step of SGD with lr 1, so the client returns Δ = −u_p on the model's names and
0 on the prefixed ones (:func:`split_pair`). Per-record gradients come from the trainer's batched
gradient with each real record as its own stack row, a slice of records at a time (at most
:data:`RECORD_ELEMENTS` gradient entries held at once).
Records are unweighted (each real row counts once).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedopt.engine.program import Batch, ClipUpdateNorm, OracleContext
from fedopt.privacy.postprocess import keyed_gaussian
from fedopt.rng import STREAM_DP_DIFF2

Params = dict[str, Tensor]

#: name prefix of x_{r−1} in the start model of a DIFF2 job
PREV = "diff2_prev:"


def pair_start(current: Params, previous: Params) -> Params:
    """The start model of a DIFF2 job: x_r under its names, x_{r−1} under :data:`PREV` + name."""
    return {**current, **{PREV + k: v for k, v in previous.items()}}


def split_pair(tree: Params) -> tuple[Params, Params]:
    """(the model's entries, the :data:`PREV` entries renamed back) of a pair tree."""
    cur = {k: v for k, v in tree.items() if not k.startswith(PREV)}
    prev = {k[len(PREV):]: v for k, v in tree.items() if k.startswith(PREV)}
    return cur, prev


def clip_rows(tree: Params, max_norm: float | None) -> Params:
    """Each row of the stacked tree [R, ...] scaled by min(1, C/‖row‖), ‖·‖ over every tensor
    of the row (:class:`~fedopt.engine.program.ClipUpdateNorm` with records as its rows);
    ``max_norm`` None: unchanged."""
    return tree if max_norm is None else ClipUpdateNorm(max_norm).apply(tree, None)


#: per-record gradients held at once, in elements (records × model size): a message is summed
#: over slices of records, so a client's n records never need n model-sized rows at once
RECORD_ELEMENTS = 1 << 24


def real_rows(batch: Batch) -> Tensor:
    """Flat positions (c·B + b) of the real records of ``batch`` (padding skipped), int64."""
    return (batch.w > 0).flatten().nonzero().squeeze(1)


def per_record_gradients(ctx: OracleContext, y: Params, batch: Batch,
                         rows: Tensor | None = None) -> tuple[Params, Tensor, Tensor]:
    """∇ℓ(y_c; record) of the records at flat positions ``rows`` (default: every real record,
    :func:`real_rows`) stacked [R, *shape], the per-record losses [R] and each record's client
    row ``owner`` int64 [R] (c in 0..C−1): every record is one row of the trainer's batched
    gradient."""
    C, B = batch.w.shape
    rows = real_rows(batch) if rows is None else rows
    owner = torch.div(rows, B, rounding_mode="floor")
    ys = {k: v.index_select(0, owner) for k, v in y.items()}
    xs = batch.x.flatten(0, 1).index_select(0, rows).unsqueeze(1)
    ts = batch.y.flatten(0, 1).index_select(0, rows).unsqueeze(1)
    w = torch.ones(len(rows), 1, dtype=batch.w.dtype, device=batch.w.device)
    g, loss = ctx.batched_grad(ys, Batch(xs, ts, w))
    return g, loss, owner


@dataclass(frozen=True)
class Diff2Message:
    """The gradient oracle whose one SGD step (lr 1) makes a client return −u_p (module
    docstring). ``restart_period`` T ≥ 1; ``clip`` C1 and ``clip_diff`` C2 > 0 (None: no
    clipping, only without noise); ``z1``, ``z2`` ≥ 0: the noise multipliers."""

    restart_period: int
    clip: float | None
    clip_diff: float | None
    z1: float = 0.0
    z2: float = 0.0

    def __post_init__(self) -> None:
        if self.restart_period < 1:
            raise ValueError(f"restart_period: must be >= 1, got {self.restart_period!r}")
        for name, c, z in (("clip", self.clip, self.z1), ("clip_diff", self.clip_diff, self.z2)):
            if c is not None and (not c > 0 or math.isinf(c)):
                raise ValueError(f"{name}: must be finite and > 0, got {c!r}")
            if not z >= 0 or math.isinf(z):
                raise ValueError(f"noise multiplier: must be finite and >= 0, got {z!r}")
            if c is None and z > 0:
                raise ValueError(f"{name}: noise needs a clip norm (the sensitivity)")

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        cur, prev = split_pair(y)
        if set(prev) != set(cur):
            raise ValueError("DIFF2 clients need the start pair (x_r, x_{r-1}) of "
                             "fedopt.privacy.diff2.pair_start")
        sk = ctx.step_keys
        keys = np.broadcast_to(np.asarray(sk.keys, dtype=np.int64), sk.client_ids.shape)
        if keys.size and not (keys == keys.flat[0]).all():
            raise ValueError("DIFF2: every client of a call must be in the same round")
        restart = int(keys.flat[0]) % self.restart_period == 0 if keys.size else True
        clip, z = (self.clip, self.z1) if restart else (self.clip_diff, self.z2)
        C = batch.w.shape[0]
        total = {k: torch.zeros_like(v) for k, v in cur.items()}        # [C, *shape]
        first = next(iter(cur.values()))
        loss = torch.zeros(C, dtype=first.dtype, device=first.device)
        rows = real_rows(batch)
        size = sum(v[0].numel() for v in cur.values())
        step = max(1, RECORD_ELEMENTS // max(size, 1))
        for lo in range(0, len(rows), step):      # Σ_j clip(term_j), a slice of records at a time
            part = rows[lo:lo + step]
            g, losses, owner = per_record_gradients(ctx, cur, batch, part)
            if not restart:
                g_prev, _, _ = per_record_gradients(ctx, prev, batch, part)
                g = {k: g[k] - g_prev[k] for k in g}
            for k, v in clip_rows(g, clip).items():
                total[k].index_add_(0, owner, v)
            loss.index_add_(0, owner, losses.to(loss.dtype))
        if z > 0:
            nu = keyed_gaussian(ctx.seed, STREAM_DP_DIFF2, keys, sk.client_ids, total)
            total = {k: v + (z * clip) * nu[k] for k, v in total.items()}
        owners = torch.div(rows, batch.w.shape[1], rounding_mode="floor")
        n = torch.bincount(owners, minlength=C).clamp_min(1).to(loss.dtype)
        msg = {k: v / n.view((-1,) + (1,) * (v.ndim - 1)).to(v.dtype) for k, v in total.items()}
        loss = loss / n
        zeros = {PREV + k: torch.zeros_like(v) for k, v in prev.items()}
        return {**msg, **zeros}, loss
