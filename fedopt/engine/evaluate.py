"""Evaluation of one (global) model on a set of rows, in bounded-memory chunks.

One pass over the rows gives the per-row loss and metrics of the program; they are summed in
float64, over all rows (:func:`evaluate`) or per group of rows (:func:`evaluate_sums` with
``groups``: e.g. the client of each test row, for per-client metrics) with one ``index_add``
per chunk, so every client's metrics cost the same single pass as the global ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedopt.engine.local import FunctionalModel, Params
from fedopt.engine.program import LocalProgram, accuracy, cross_entropy

#: the most logits (rows x classes) one evaluation chunk holds: 2^24, 64 MiB in float32
MAX_LOGITS = 2**24
#: the most activation entries (rows x the entries every module outputs for one row, measured
#: on a 1-row probe) one chunk holds: 2^26, 256 MiB in float32
MAX_ACTIVATIONS = 2**26
#: default cap on the rows of one chunk (large chunks amortise the per-op cost: the chunk
#: actually used is the smallest of this, MAX_LOGITS / classes and MAX_ACTIVATIONS / row)
CHUNK_ROWS = 2**20


@dataclass
class EvalSums:
    """Sums of one evaluation pass, per group of rows.

    ``names``: ``("loss", <metric>, ...)``; ``sums``: float64 ``[len(names), G]``, the sum over
    each group's rows of the per-row loss and metrics; ``rows``: int64 ``[G]`` rows per group;
    ``finite``: bool ``[G]``, whether every model output on the group's rows was finite."""

    names: tuple[str, ...]
    sums: Tensor
    rows: Tensor
    finite: Tensor

    def row(self) -> dict[str, float | None]:
        """The metrics of all groups together: mean loss, mean metrics (None when any output
        was non-finite), all None without rows (see :func:`evaluate`)."""
        n = int(self.rows.sum())
        if n == 0:
            return {k: None for k in self.names}
        values = (self.sums.sum(1) / n).tolist()
        ok = bool(self.finite.all())
        return {k: (v if ok or k == "loss" else None) for k, v in zip(self.names, values)}


@torch.no_grad()
def activation_numel(fmodel: FunctionalModel, params: Params, x1: Tensor) -> tuple[int, int]:
    """``(outputs, activations)`` of the model on one row ``x1`` (``[1, *features]``): the
    output width and the entries the row's features plus every submodule's tensor outputs
    hold — what one more row adds to a chunk's memory (an estimate: a module's functional
    intermediates are not seen)."""
    seen = [x1.numel()]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        outs = output if isinstance(output, (tuple, list)) else (output,)
        seen.extend(t.numel() for t in outs if isinstance(t, Tensor))

    handles = [m.register_forward_hook(hook) for m in fmodel.module.modules()]
    try:
        out = fmodel.forward(params, x1)
    finally:
        for h in handles:
            h.remove()
    return int(out.shape[-1]) if out.ndim > 1 else 1, int(sum(seen))


def chunk_rows_for(fmodel: FunctionalModel, params: Params, x: Tensor,
                   chunk_rows: int = CHUNK_ROWS) -> int:
    """Rows per evaluation chunk: ``chunk_rows``, fewer when the chunk's outputs would exceed
    :data:`MAX_LOGITS` entries or its activations :data:`MAX_ACTIVATIONS` (a 1-row probe of
    ``x`` measures both), so memory stays bounded whatever the model. ValueError naming
    ``chunk_rows`` unless it is a positive integer."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    classes, acts = activation_numel(fmodel, params, x[:1])
    return max(1, min(chunk_rows, MAX_LOGITS // max(classes, 1), MAX_ACTIVATIONS // max(acts, 1)))


def row_values(out: Tensor, y: Tensor, loss_fn, metrics: dict) -> list[Tensor]:
    """The per-row loss and metrics ``[N]`` of outputs ``out`` against targets ``y``. For the
    built-in cross-entropy with accuracy (the default classification program) one fused pass:
    with m_r = max_c o_rc attained first at ĉ_r, ℓ_r = m_r + log Σ_c exp(o_rc − m_r) − o_{r,y_r}
    and acc_r = 1[ĉ_r = y_r] — the same values as :func:`~fedopt.engine.program.cross_entropy`
    (to rounding) and :func:`~fedopt.engine.program.accuracy`, without materialising the
    log-softmax (the slow part of evaluating a small model on CPU)."""
    if (loss_fn is cross_entropy and all(fn is accuracy for fn in metrics.values())
            and out.ndim == 2 and y.ndim == 1):
        m, top = out.max(1)
        loss = (out - m.unsqueeze(1)).exp_().sum(1).log_().add_(m).sub_(
            out.gather(1, y.unsqueeze(1)).squeeze(1))
        hit = (top == y).to(out.dtype)
        return [loss, *(hit for _ in metrics)]
    return [loss_fn(out, y), *(fn(out, y) for fn in metrics.values())]


@torch.no_grad()
def evaluate_sums(fmodel: FunctionalModel, params: Params, x: Tensor, y: Tensor,
                  program: LocalProgram | None = None, groups: Tensor | None = None,
                  num_groups: int = 1, chunk_rows: int = CHUNK_ROWS) -> EvalSums:
    """One pass of ``params`` over the rows of (x, y): the per-row loss ℓ(f(x_r), y_r) and
    metrics of ``program`` (default: cross-entropy and accuracy for class labels, mse and no
    metric for float targets), summed in float64 per group — ``groups`` is an int64 ``[N]``
    group index in ``0..num_groups-1`` of every row (None: one group). Rows go through the
    model :func:`chunk_rows_for` at a time."""
    program = program or LocalProgram()
    regression = y.dtype.is_floating_point
    loss_fn = program.for_task(regression).loss_fn
    metrics = program.metric_fns(regression)
    names = ("loss", *metrics)
    n, dev = x.shape[0], x.device
    g = 1 if groups is None else int(num_groups)
    if groups is not None and groups.shape != (n,):
        raise ValueError(f"groups: one group index per row expected ({n}), got "
                         f"{tuple(groups.shape)}")
    sums = torch.zeros(len(names), g, dtype=torch.float64, device=dev)
    bad = torch.zeros(g, dtype=torch.float64, device=dev)
    if groups is None:
        rows = torch.tensor([n], dtype=torch.int64, device=dev)
    else:
        groups = groups.to(device=dev, dtype=torch.int64)
        rows = torch.bincount(groups, minlength=g)[:g] if n else torch.zeros(g, dtype=torch.int64,
                                                                             device=dev)
    if n == 0:
        return EvalSums(names, sums, rows, torch.ones(g, dtype=torch.bool, device=dev))
    step = chunk_rows_for(fmodel, params, x, chunk_rows)
    for start in range(0, n, step):
        xb, yb = x[start:start + step], y[start:start + step]
        out = fmodel.forward(params, xb)
        values = row_values(out, yb, loss_fn, metrics)
        # a non-finite output makes the float64 sum of its row non-finite (float32 outputs
        # cannot overflow it): one reduction instead of an elementwise isfinite
        if groups is None:
            sums += torch.stack([v.sum(dtype=torch.float64) for v in values]).unsqueeze(1)
            bad += (~torch.isfinite(out.sum(dtype=torch.float64))).double()
        else:
            gb = groups[start:start + step]
            sums.index_add_(1, gb, torch.stack([v.double() for v in values]))
            row_sum = out.reshape(out.shape[0], -1).sum(1, dtype=torch.float64)
            bad.index_add_(0, gb, (~torch.isfinite(row_sum)).double())
    return EvalSums(names, sums, rows, bad == 0)


def evaluate(fmodel: FunctionalModel, params: Params, x: Tensor, y: Tensor,
             chunk_rows: int = CHUNK_ROWS, program: LocalProgram | None = None
             ) -> dict[str, float | None]:
    """``{"loss": mean loss, <metric>: mean metric, ...}`` of ``params`` over all rows of
    (x, y), each row once; the loss and metrics are ``program``'s (default: cross-entropy and
    accuracy for class labels, mse and no metric for float targets).

    A non-finite loss is returned as it is (a float NaN or inf: measured, not missing). A metric
    is None when any output is NaN or ±inf — a prediction from non-finite outputs (argmax of NaN
    picks class 0) is not one. No rows: every value None (not measured). Per-row values are
    summed in float64.

    Rows go through the model ``chunk_rows`` at a time, fewer when the model has many outputs
    or large activations (:func:`chunk_rows_for`), so memory stays bounded whatever
    ``num_classes`` is. ValueError naming ``chunk_rows`` unless it is >= 1."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return evaluate_sums(fmodel, params, x, y, program, chunk_rows=chunk_rows).row()


def evaluation_row(fmodel: FunctionalModel, program: LocalProgram, data, params: Params,
                   train: bool = False) -> dict[str, float | None]:
    """The metrics row of the global model: ``test_loss`` and ``test_<metric>`` over every
    client's test rows of ``data`` (a FederatedDataset), and with ``train`` ``train_*`` over its
    training rows — the :meth:`Executor.evaluate` of every executor that holds the data."""
    row = {f"test_{k}": v for k, v in evaluate(fmodel, params, data.x_test, data.y_test,
                                               program=program).items()}
    if train:
        row.update({f"train_{k}": v for k, v in evaluate(fmodel, params, data.x, data.y,
                                                         program=program).items()})
    return row
