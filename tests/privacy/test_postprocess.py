"""Clipping bounds every client's update exactly; keyed noise is Gaussian with the stated std,
reproducible from the seed, and different across rounds and clients."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedopt.engine.program import ClipUpdateNorm, LocalProgram, UpdateInfo
from fedopt.privacy.postprocess import (ClipPerLayer, GaussianUpdateNoise, central_noise,
                                        keyed_gaussian)


def stacked(C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.01, 0.5, 1.0, 3.0, 50.0, 0.0])[:C]
    tree = {"a.weight": torch.randn(C, 4, 5, generator=g, dtype=torch.float64),
            "a.bias": torch.randn(C, 5, generator=g, dtype=torch.float64),
            "b": torch.randn(C, 3, generator=g, dtype=torch.float64)}
    return {k: v * scales.view(-1, *([1] * (v.ndim - 1))).to(v) for k, v in tree.items()}


def norms(tree):
    return sum(v.pow(2).flatten(1).sum(1) for v in tree.values()).sqrt()


INFO = UpdateInfo(np.arange(6), 3, seed=11)


def test_flat_clip_bounds_every_client_exactly():
    delta, c = stacked(), 1.0
    out = ClipUpdateNorm(c).apply(delta, INFO)
    before, after = norms(delta), norms(out)
    for i in range(6):
        if before[i] > c:       # scaled onto the sphere, direction kept
            assert after[i].item() == pytest.approx(c, rel=1e-12)
            for k in delta:
                assert torch.allclose(out[k][i] * before[i] / c, delta[k][i], rtol=1e-12)
        else:                   # untouched
            for k in delta:
                assert torch.equal(out[k][i], delta[k][i])


def test_per_layer_clip_bounds_each_tensor_and_the_whole():
    delta, c = stacked(), 2.0
    out = ClipPerLayer(c).apply(delta, INFO)
    per = c / math.sqrt(3)
    for k, v in out.items():
        n, n0 = v.flatten(1).norm(dim=1), delta[k].flatten(1).norm(dim=1)
        assert (n <= per * (1 + 1e-12)).all()
        big = n0 > per
        assert torch.allclose(n[big], torch.full_like(n[big], per), rtol=1e-12)
        assert torch.equal(v[~big], delta[k][~big])
    assert (norms(out) <= c * (1 + 1e-12)).all()


def test_chain_clips_then_noises_in_order():
    delta = stacked()
    prog = LocalProgram(postprocess=(ClipUpdateNorm(1.0), GaussianUpdateNoise(0.5)))
    out = prog.finalize(delta, INFO)
    clipped = ClipUpdateNorm(1.0).apply(delta, INFO)
    nu = keyed_gaussian(11, 0xD901, np.full(6, 3), np.arange(6), delta)
    for k in delta:
        assert torch.allclose(out[k], clipped[k] + 0.5 * nu[k], rtol=0, atol=1e-15)


def test_client_noise_std_reproducible_and_keyed_by_round_and_client():
    like = {"w": torch.zeros(2, 2000, dtype=torch.float64)}
    noise = GaussianUpdateNoise(0.3)
    a = noise.apply(like, UpdateInfo(np.array([4, 9]), 5, seed=1))["w"]
    b = noise.apply(like, UpdateInfo(np.array([4, 9]), 5, seed=1))["w"]
    assert torch.equal(a, b)
    # the noise of client 9 in round 5 does not depend on who else is in the stack
    alone = noise.apply({"w": torch.zeros(1, 2000, dtype=torch.float64)},
                        UpdateInfo(np.array([9]), 5, seed=1))["w"]
    assert torch.equal(alone[0], a[1])
    other_round = noise.apply(like, UpdateInfo(np.array([4, 9]), 6, seed=1))["w"]
    other_seed = noise.apply(like, UpdateInfo(np.array([4, 9]), 5, seed=2))["w"]
    for x, y in ((a[0], a[1]), (a[0], other_round[0]), (a[0], other_seed[0])):
        assert abs(np.corrcoef(x.numpy(), y.numpy())[0, 1]) < 0.1
    for row in (a[0], a[1], other_round[1]):
        assert stats.kstest(row.numpy() / 0.3, "norm").pvalue > 0.01


def test_central_noise_std_and_keys():
    agg = {"w": torch.zeros(3000, dtype=torch.float32), "b": torch.ones(7, dtype=torch.float32)}
    out = central_noise(agg, 0.2, seed=5, round_idx=3)
    assert out["w"].dtype == torch.float32
    again = central_noise(agg, 0.2, seed=5, round_idx=3)
    assert torch.equal(out["w"], again["w"])
    nxt = central_noise(agg, 0.2, seed=5, round_idx=4)
    assert abs(np.corrcoef(out["w"].numpy(), nxt["w"].numpy())[0, 1]) < 0.1
    assert stats.kstest(out["w"].double().numpy() / 0.2, "norm").pvalue > 0.01
    assert central_noise(agg, 0.0, seed=5, round_idx=3) is agg


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="max_norm"):
        ClipPerLayer(0.0)
    with pytest.raises(ValueError, match="std"):
        GaussianUpdateNoise(-1.0)
