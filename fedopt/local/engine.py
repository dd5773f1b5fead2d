"""Adaptive local training inside the vectorized engine: C clients, stacked, one step at a time.

:func:`train_adaptive` is what :meth:`fedopt.engine.local.LocalTrainer.train` runs when the
local program carries a :class:`~fedopt.local.config.LocalTraining`. Per local step k, all
clients together:

1. batches: with an adaptive batch size or a curriculum, each client's next b_i rows come from a
   :class:`~fedopt.engine.batches.BatchStream` (keyed passes, paced prefixes); otherwise the
   executor's fixed plan. A client stops after the fixed plan's number of samples (equal
   samples: an adaptive batch size takes fewer, larger steps). A curriculum paces its prefixes
   over the local steps t of the fixed plan's u_i (the paper's); with an adaptive batch size too
   it paces over samples instead (t = samples processed, T = the sample budget), since the
   larger steps end the job before step u_i and the prefix would never reach all rows;
2. the step: the client optimizer (its lr min(max_lr, lr × scale(b_i/b₀)) per client with
   ``lr_scaling`` and its cap ``lr_max``) on
   G + μ(y − y₀) + c_i, or, with SSO, one outer step of m inner steps
   (:func:`fedopt.local.sso.sso_step`);
3. the batch-size test at the step's iterate and batch (per-example gradients, one vmapped
   pass over the clients still below b_max, on at most ``test_rows`` rows of each batch, a
   keyed subsample above that: :func:`fedopt.local.batch_test.capped_test_rows`):
   b_i ← min(b_max,i, max(b_i, test)), b_max,i = min(max_batch_size, n_i).

Per-client state (b_i, pass cursor, optimizer state) lives for one local job: every round starts
again from b₀ = ``client.batch_size`` and the received model, so results depend only on
(seed, key, client, start) — the same on every executor and after a resume.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedopt.engine.batches import BatchPlan, BatchStream
from fedopt.engine.program import StepKeys
from fedopt.local.batch_test import subsampled_statistics
from fedopt.local.config import LocalTraining
from fedopt.local.curriculum import order_rows, prefix_size
from fedopt.local.lr_scaling import BatchScaledLR
from fedopt.local.sso import sso_step
from fedopt.optim.core import masked_select

Params = dict[str, Tensor]


def row_scores(trainer, params: Params, x: Tensor, y: Tensor, first: int, n: int) -> np.ndarray:
    """Per-example losses ℓ(f(params; x_r), y_r) of rows first..first+n−1 (no gradient),
    float64 [n]; ``params`` one unstacked model."""
    with torch.no_grad():
        out = trainer.fmodel.forward(params, x[first:first + n])
        return trainer._loss_fn(out, y[first:first + n]).double().cpu().numpy()


class _CurriculumRows:
    """``pass_rows`` of a :class:`BatchStream`: client i's paced prefix of its ordered rows."""

    def __init__(self, cur, source, trainer, x, y, model_of, by_samples: bool = False):
        self.cur, self.src, self.trainer, self.x, self.y = cur, source, trainer, x, y
        self.model_of = model_of              # i -> client i's current (unstacked) model
        self.order: dict[int, np.ndarray] = {}
        self.by_samples = by_samples          # pace over samples (an adaptive batch size)
        self.stream: BatchStream | None = None

    def _order(self, i: int) -> np.ndarray:
        src = self.src
        n, first = int(src.counts[i]), int(src.first_row[i])
        if self.cur.order == "random":
            scores = np.zeros(n)
        else:
            scores = row_scores(self.trainer, self.model_of(i), self.x, self.y, first, n)
        return order_rows(scores, self.cur.order, src.seed, src.key(i), int(src.client_ids[i]))

    def __call__(self, i: int, epoch: int, step: int) -> np.ndarray:
        if i not in self.order or (self.cur.score == "local" and epoch > 0):
            self.order[i] = self._order(i)
        c, n = self.cur, int(self.src.counts[i])
        if self.by_samples:
            # t = samples client i has processed, T = its sample budget: with a growing batch
            # the job ends in fewer steps than the fixed plan's u_i, so pacing over u_i steps
            # would never reach g = n_i
            t, total = int(self.stream.samples[i]), int(self.stream.budget[i])
        else:
            t, total = step, int(self.src.steps[i])
        size = prefix_size(t, total, n, c.pacing, c.a, c.b, c.min_prefix)
        return self.order[i][:size]


def train_adaptive(trainer, start: Params, x: Tensor, y_labels: Tensor, plan: BatchPlan, *,
                   training: LocalTraining, round_idx, client_ids, correction, optimizer,
                   stacked_start: bool):
    """The local jobs of ``plan``'s clients with ``training`` (module docstring); returns a
    :class:`~fedopt.engine.local.LocalResult` with the actual steps and final batch sizes."""
    from fedopt.engine.local import LocalResult

    src = plan.source
    if src is None:
        raise ValueError("adaptive local training needs a plan from plan_batches (its source)")
    opt = optimizer or trainer.optimizer
    if opt.needs_hessian:
        raise ValueError("adaptive local training: Hessian-based client optimizers are not "
                         "supported")
    C = len(src.client_ids)
    mu = trainer.program.prox_mu
    if stacked_start:
        y = {k: v.clone() for k, v in start.items()}
        y0 = {k: v.detach() for k, v in start.items()}
    else:
        y = {k: v.unsqueeze(0).expand((C,) + v.shape).clone() for k, v in start.items()}
        y0 = {k: v.unsqueeze(0) for k, v in start.items()}
    keys = np.asarray(round_idx, dtype=np.int64) if np.ndim(round_idx) > 0 else round_idx
    ids = np.asarray(src.client_ids, dtype=np.int64)
    dev, dtype = plan.weight.device, plan.weight.dtype
    test = training.batch_test
    B0 = int(src.batch_size)
    b = np.full(C, B0, dtype=np.int64)
    cap = src.counts.astype(np.int64) if test is None or test.max_batch_size is None \
        else np.minimum(src.counts, int(test.max_batch_size)).astype(np.int64)
    scaled = (BatchScaledLR(opt, B0, training.lr_scaling, max_lr=training.lr_max)
              if training.lr_scaling != "none" else None)
    stream = None
    if training.online_batches:
        pass_rows = None
        if training.curriculum is not None:
            # the scoring model: the received one (global), or the live iterate (local)
            scoring = {"y": {k: v.clone() for k, v in y.items()}}
            live = training.curriculum.score == "local"

            def model_of(i: int) -> Params:
                return {k: v[i] for k, v in scoring["y"].items()}

            pass_rows = _CurriculumRows(training.curriculum, src, trainer, x, y_labels, model_of,
                                        by_samples=test is not None)
        stream = BatchStream(src, pass_rows, device=dev, dtype=dtype)
        if pass_rows is not None:
            pass_rows.stream = stream
    state = opt.init(y, batch_shape=(C,))
    loss_sum = torch.zeros(C, dtype=dtype, device=dev)
    steps = np.zeros(C, dtype=np.int64)
    samples = 0
    b_seen = np.zeros(C, dtype=np.int64)     # the largest batch each client took

    def extra(omega: Params, g: Params) -> Params:
        if mu > 0:
            g = {n: g[n] + mu * (omega[n] - y0[n]) for n in g}
        if correction is not None:
            g = {n: g[n] + correction[n] for n in g}
        return g

    k = 0
    while True:
        if stream is not None:
            active_np = stream.active
            if not active_np.any():
                break
            width = int(b[active_np].max())
            rows, w, take = stream.next(b, width)
        else:
            if k >= plan.max_steps:
                break
            rows, w = plan.rows[k], plan.weight[k]
            active_np = plan.active[k].cpu().numpy()
            take = w.sum(1).to(torch.int64).cpu().numpy()
        active = torch.as_tensor(active_np, device=dev)
        xb = x.index_select(0, rows.flatten()).view(rows.shape + x.shape[1:])
        yb = y_labels.index_select(0, rows.flatten()).view(rows.shape + y_labels.shape[1:])
        wn = w / w.sum(-1, keepdim=True).clamp_min(1.0)
        trainer.step_keys = StepKeys(keys, ids, k)
        step_opt = opt if scaled is None else scaled.at(torch.as_tensor(b, device=dev))
        if training.sso_steps is not None:
            new_y, loss = sso_step(trainer.fmodel.batched_forward,
                                   lambda z: trainer._per_client_loss(z, yb, wn), y, xb, wn,
                                   step_opt, training.sso_steps, training.sso_eta, extra)
            new_state = state
        else:
            g, loss = trainer._gradient(y, xb, yb, wn)
            g = extra(y, g)
            new_y, new_state = step_opt.update(y, g, state)
        if test is not None:
            grow = active_np & (b < cap)
            if grow.any():
                g_idx = np.flatnonzero(grow)
                sel = torch.as_tensor(g_idx, device=dev)
                stats, _ = subsampled_statistics(
                    trainer.fmodel.forward, trainer._loss_fn,
                    {n: v.index_select(0, sel) for n, v in y.items()},
                    xb.index_select(0, sel), yb.index_select(0, sel), w.index_select(0, sel),
                    test, src.seed, np.array([src.key(i) for i in g_idx]), ids[g_idx], k)
                nxt = test.next_batch_size(torch.as_tensor(b[grow]), stats,
                                           torch.as_tensor(cap[grow])).cpu().numpy()
                b[grow] = nxt
        loss_sum += torch.where(active, loss, torch.zeros_like(loss))
        if active_np.all():
            y, state = new_y, new_state
        else:
            y = masked_select(active, new_y, y)
            state = masked_select(active, new_state, state)
        if training.curriculum is not None and live:
            scoring["y"] = y
        steps += active_np
        samples += int(take[active_np].sum())
        b_seen = np.maximum(b_seen, np.where(active_np, take, 0))
        k += 1
    y = trainer._postprocess(y, start, stacked_start, client_ids, keys)
    steps_t = torch.as_tensor(steps, device=dev)
    mean_loss = loss_sum / steps_t.clamp_min(1).to(loss_sum.dtype)
    return LocalResult(params=y, mean_loss=mean_loss, samples=samples, steps=steps,
                       batch_size=b_seen)
