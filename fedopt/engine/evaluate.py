"""Evaluation of one (global) model on a set of rows, in bounded-memory chunks."""
from __future__ import annotations

import torch
from torch import Tensor

from fedopt.engine.local import FunctionalModel, Params
from fedopt.engine.program import LocalProgram

#: the most logits (rows x classes) one evaluation chunk holds: 2^24, 64 MiB in float32
MAX_LOGITS = 2**24


@torch.no_grad()
def evaluate(fmodel: FunctionalModel, params: Params, x: Tensor, y: Tensor,
             chunk_rows: int = 16384, program: LocalProgram | None = None
             ) -> dict[str, float | None]:
    """``{"loss": mean loss, <metric>: mean metric, ...}`` of ``params`` over all rows of
    (x, y), each row once; the loss and metrics are ``program``'s (default: cross-entropy and
    accuracy for class labels, mse and no metric for float targets).

    A non-finite loss is returned as it is (a float NaN or inf: measured, not missing). A metric
    is None when any output is NaN or ±inf — a prediction from non-finite outputs (argmax of NaN
    picks class 0) is not one. No rows: every value None (not measured). Sums are accumulated
    in float64.

    Rows go through the model ``chunk_rows`` at a time, fewer when the model has many outputs:
    a chunk's outputs hold at most :data:`MAX_LOGITS` entries (rows x outputs), so memory stays
    bounded whatever ``num_classes`` is. ValueError naming ``chunk_rows`` unless it is >= 1."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    program = program or LocalProgram()
    regression = y.dtype.is_floating_point
    loss_fn = program.for_task(regression).loss_fn
    metrics = program.metric_fns(regression)
    n = x.shape[0]
    if n == 0:   # nothing to measure: None (not NaN, which reads as a diverged model)
        return {"loss": None, **{k: None for k in metrics}}
    classes = fmodel.forward(params, x[:1]).shape[-1]       # a 1-row probe sizes the chunks
    chunk_rows = max(1, min(chunk_rows, MAX_LOGITS // max(classes, 1)))
    sums = torch.zeros(1 + len(metrics), dtype=torch.float64, device=x.device)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for start in range(0, n, chunk_rows):
        xb, yb = x[start:start + chunk_rows], y[start:start + chunk_rows]
        out = fmodel.forward(params, xb)
        parts = [loss_fn(out, yb).sum().double()]
        parts += [fn(out, yb).double().sum() for fn in metrics.values()]
        sums += torch.stack(parts)
        finite &= torch.isfinite(out).all()
    values = torch.cat([sums / n, finite.double().view(1)]).tolist()
    ok = values.pop()
    row: dict[str, float | None] = {"loss": values[0]}
    for name, v in zip(metrics, values[1:]):
        row[name] = v if ok else None
    return row


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
