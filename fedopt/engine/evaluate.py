"""Evaluation of one (global) model on a set of rows, in bounded-memory chunks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedopt.engine.local import FunctionalModel, Params


@torch.no_grad()
def evaluate(fmodel: FunctionalModel, params: Params, x: Tensor, y: Tensor,
             chunk_rows: int = 16384) -> tuple[float, float | None]:
    """Mean cross-entropy and accuracy of ``params`` over all rows of (x, y), each row once.

    A non-finite loss is returned as it is (a float NaN or inf: measured, not missing). The
    accuracy is None when any logit is NaN or ±inf — a prediction from non-finite outputs (argmax
    of NaN picks class 0) is not one. No rows: ``(nan, nan)``. One host synchronisation."""
    n = x.shape[0]
    if n == 0:
        return float("nan"), float("nan")
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
