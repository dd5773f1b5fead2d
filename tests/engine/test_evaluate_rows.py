"""The fused per-row cross-entropy/accuracy of evaluation against the program's own functions."""
from __future__ import annotations

import torch

from fedopt.engine.evaluate import evaluate, row_values
from fedopt.engine.local import FunctionalModel
from fedopt.engine.program import accuracy, cross_entropy


def test_fused_rows_equal_cross_entropy_and_accuracy_including_nonfinite_logits():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(64, 7, generator=g) * 5
    y = torch.randint(0, 7, (64,), generator=g)
    out[3] = 0.0                                 # ties: the first maximal class, as argmax
    out[5, 2] = float("nan")
    out[6, 1] = float("inf")
    out[7, (y[7] + 1) % 7] = float("-inf")       # a -inf non-target logit: a finite loss
    out[8, y[8]] = float("-inf")                 # a -inf target logit: an infinite loss
    loss, acc = row_values(out, y, cross_entropy, {"accuracy": accuracy})
    ref = cross_entropy(out, y)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.isinf(loss[8]) and torch.isnan(loss[5]) and torch.isfinite(loss[7])
    ok = torch.isfinite(out).all(1)
    assert torch.equal(acc[ok], accuracy(out, y)[ok])
    # another loss or metric: the program's functions, unfused
    sq = lambda o, t: (o.argmax(1) - t).float() ** 2               # noqa: E731
    loss2, m2 = row_values(out, y, cross_entropy, {"sq": sq})
    assert torch.equal(m2, sq(out, y))


def test_evaluation_is_none_for_any_nonfinite_output_and_keeps_the_loss():
    model = torch.nn.Linear(3, 4)
    fm = FunctionalModel(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = torch.randn(50, 3), torch.randint(0, 4, (50,))
    x[17, 0] = float("inf")
    row = evaluate(fm, params, x, y, chunk_rows=8)
    assert row["accuracy"] is None and not torch.isfinite(torch.tensor(row["loss"]))
    x[17, 0] = 1.0
    row = evaluate(fm, params, x, y, chunk_rows=8)
    direct = torch.nn.functional.cross_entropy(model(x).double(), y).item()
    assert abs(row["loss"] - direct) < 1e-6 and row["accuracy"] is not None
