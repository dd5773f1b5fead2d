"""Evaluation of one (global) model on a set of rows, in bounded-memory chunks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedopt.engine.local import FunctionalModel, Params

#: the most logits (rows x classes) one evaluation chunk holds: 2^24, 64 MiB in float32
MAX_LOGITS = 2**24


@torch.no_grad()
def evaluate(fmodel: FunctionalModel, params: Params, x: Tensor, y: Tensor,
             chunk_rows: int = 16384) -> tuple[float, float | None]:
    """Mean cross-entropy and accuracy of ``params`` over all rows of (x, y), each row once.

    A non-finite loss is returned as it is (a float NaN or inf: measured, not missing). The
    accuracy is None when any logit is NaN or ±inf — a prediction from non-finite outputs (argmax
    of NaN picks class 0) is not one. No rows: ``(nan, nan)``.

    Rows go through the model ``chunk_rows`` at a time, fewer when the model has many classes:
    a chunk's logits hold at most :data:`MAX_LOGITS` entries (rows x classes), so memory stays
    bounded whatever ``num_classes`` is. ValueError naming ``chunk_rows`` unless it is >= 1."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    n = x.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    classes = fmodel.forward(params, x[:1]).shape[-1]       # a 1-row probe sizes the chunks
    chunk_rows = max(1, min(chunk_rows, MAX_LOGITS // max(classes, 1)))
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for start in range(0, n, chunk_rows):
        xb, yb = x[start:start + chunk_rows], y[start:start + chunk_rows]
        logits = fmodel.forward(params, xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=-1) == yb).sum()
        finite &= torch.isfinite(logits).all()
    loss, acc, ok = torch.stack([loss_sum / n, correct.double() / n, finite.double()]).tolist()
    return loss, (acc if ok else None)
