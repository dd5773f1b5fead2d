"""Batch-size-aware learning rates: the rules' exact ratios, the cap, per-client shapes, any
fedopt.optim optimizer, and the torch helper."""
import pytest
import torch

from fedopt.local.lr_scaling import BatchScaledLR, batch_scale, set_torch_lr
from fedopt.optim import make


def test_exact_ratios_and_identity_at_b0():
    for b0 in (1, 8, 16):
        assert batch_scale(b0, b0, "linear") == 1.0 == batch_scale(b0, b0, "sqrt")
    assert batch_scale(64, 16, "linear") == 2 * batch_scale(32, 16, "linear")
    assert batch_scale(128, 16, "sqrt") == 2 * batch_scale(32, 16, "sqrt")
    assert batch_scale(999, 16, "none") == 1.0
    b = torch.tensor([16, 32, 64, 256])
    assert batch_scale(b, 16, "sqrt").tolist() == [1.0, 2 ** 0.5, 2.0, 4.0]
    with pytest.raises(ValueError, match="lr_batch_scaling"):
        batch_scale(2, 1, "cubic")


def test_wrapper_gives_per_client_lrs_capped_and_equal_to_separate_optimizers():
    inner = make("adam", lr=0.01)
    w = BatchScaledLR(inner, b0=8, rule="sqrt", max_lr=0.03)
    b = torch.tensor([8, 32, 200])
    lr = w.lr(b)
    assert lr.shape == (3,)
    assert torch.allclose(lr, torch.tensor([0.01, 0.02, 0.03], dtype=lr.dtype))
    assert w.lr(8) == 0.01 and w.lr(10 ** 6) == 0.03
    # a per-client lr in one stacked update == each client's own optimizer
    torch.manual_seed(0)
    x = {"w": torch.randn(3, 4, dtype=torch.float64)}
    g = {"w": torch.randn(3, 4, dtype=torch.float64)}
    opt = w.at(b)
    got, _ = opt.update(x, g, opt.init(x, batch_shape=(3,)))
    for i in range(3):
        one = inner.replace(lr=float(lr[i]))
        xi = {"w": x["w"][i:i + 1]}
        want, _ = one.update(xi, {"w": g["w"][i:i + 1]}, one.init(xi, batch_shape=(1,)))
        assert torch.allclose(got["w"][i], want["w"][0], rtol=0, atol=1e-15)
    sgd = make("sgd", lr=0.1)
    assert BatchScaledLR(sgd, 4, "none").at(b) is sgd                # rule none: unchanged
    assert BatchScaledLR(sgd, 4, "linear").at(b).lr.tolist() == pytest.approx([0.2, 0.8, 5.0])


def test_torch_helper_sets_the_groups():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    assert set_torch_lr(opt, 0.1, 64, 16, "linear") == pytest.approx(0.4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4)


def test_the_rules_premise_batch_hessian_outlier_grows_as_the_batch_shrinks():
    """Granziol et al.'s premise on least squares (BBP): rows a ~ N(0, Σ) with one spike ℓ and
    unit bulk, P = 100, γ = P/B: the top eigenvalue of A_BᵀA_B/B averages ℓ(1 + γ/(ℓ − 1))."""
    import numpy as np

    rng = np.random.default_rng(0)
    P, ell = 100, 10.0
    scale = np.ones(P)
    scale[0] = np.sqrt(ell)
    tops = []
    for B in (100, 200, 400, 800):
        vals = [np.linalg.eigvalsh((a := rng.normal(size=(B, P)) * scale).T @ a / B)[-1]
                for _ in range(50)]
        gamma = P / B
        assert abs(np.mean(vals) / (ell * (1 + gamma / (ell - 1))) - 1) < 0.05
        tops.append(np.mean(vals))
    assert tops[0] > tops[1] and tops[0] > tops[-1]     # larger outlier at small batches
