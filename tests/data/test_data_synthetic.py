"""Synthetic(alpha, beta): checked against its definition (FedProx, Li et al. 2020)."""
import time

import numpy as np
import pytest
import torch

from fedopt.data import build_dataset, synthetic_with_model


def all_rows(d):
    """(x, y, client) of train and test rows together, as float64 numpy."""
    x = torch.cat([d.x, d.x_test]).double().numpy()
    y = torch.cat([d.y, d.y_test]).numpy()
    c = torch.cat([d.client_index, d.client_test]).numpy()
    return x, y, c


def test_shapes_ranges_and_sizes():
    d, _ = synthetic_with_model(0, num_clients=30, min_samples=50, max_samples=300)
    assert d.feature_shape == (60,) and d.num_classes == 10 and d.num_clients == 30
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert 0 <= int(d.y.min()) and int(d.y.max()) < 10
    test_counts = torch.bincount(d.client_test, minlength=30)
    total = d.counts + test_counts
    assert int(total.min()) >= 50 and int(total.max()) <= 300
    # 20 % of each client's rows (rounded down) went to test, the rest stayed
    assert torch.equal(test_counts, torch.floor(0.2 * total.double() + 1e-9).long())


def test_labels_are_argmax_of_the_client_model():
    d, m = synthetic_with_model(1, num_clients=20, alpha=0.5, beta=0.5, max_samples=200)
    x, y, c = all_rows(d)
    logits = np.einsum("rcd,rd->rc", m.W[c], x) + m.b[c]
    assert np.array_equal(logits.argmax(axis=1), y)


def test_same_seed_identical_other_seed_differs():
    spec = {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 15}
    a, b, c = build_dataset(spec, 7), build_dataset(spec, 7), build_dataset(spec, 8)
    for f in ("x", "y", "offsets", "x_test", "y_test", "client_test"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert a.x.shape != c.x.shape or not torch.equal(a.x, c.x)


def test_iid_variant_shares_one_model_and_has_the_stated_covariance():
    d, m = synthetic_with_model(2, num_clients=50, iid=True, max_samples=400)
    assert np.array_equal(m.W, np.broadcast_to(m.W[0], m.W.shape))
    assert np.array_equal(m.b, np.broadcast_to(m.b[0], m.b.shape))
    assert not m.v.any()
    x, y, _ = all_rows(d)
    n = x.shape[0]
    sigma2 = np.arange(1, 61) ** -1.2  # Σ_jj = j^-1.2
    # sample variance / σ² has sd ≈ sqrt(2/n); sample mean / σ has sd 1/sqrt(n)
    assert np.abs(x.var(axis=0) / sigma2 - 1).max() < 6 * np.sqrt(2 / n)
    assert np.abs(x.mean(axis=0) / np.sqrt(sigma2)).max() < 6 / np.sqrt(n)
    assert np.array_equal((x @ m.W[0].T + m.b[0]).argmax(axis=1), y)


def test_heterogeneity_parameters_follow_alpha_and_beta():
    k = 400
    _, m = synthetic_with_model(3, num_clients=k, alpha=2.0, beta=0.5, max_samples=50)
    # W_k entries ~ N(u_k, 1), u_k ~ N(0, alpha): per-client means have sd sqrt(alpha² + 1/600)
    assert m.W.mean(axis=(1, 2)).std() == pytest.approx(np.sqrt(4 + 1 / 600), rel=0.15)
    assert m.v.mean(axis=1).std() == pytest.approx(np.sqrt(0.25 + 1 / 60), rel=0.15)
    assert (m.W - m.u[:, None, None]).std() == pytest.approx(1.0, rel=0.05)
    _, m0 = synthetic_with_model(3, num_clients=k, alpha=0.0, beta=0.0, max_samples=50)
    assert not m0.u.any() and not m0.B.any()
    assert not np.array_equal(m0.W[0], m0.W[1])  # alpha = 0 still draws W_k per client


def test_client_feature_means_match_v():
    d, m = synthetic_with_model(4, num_clients=10, min_samples=500, max_samples=500)
    x, _, c = all_rows(d)
    sd = np.sqrt(np.arange(1, 61) ** -1.2 / 500)
    for k in range(10):
        z = (x[c == k].mean(axis=0) - m.v[k]) / sd
        assert np.abs(z).max() < 5


def test_bad_keys_name_the_field():
    with pytest.raises(ValueError, match=r"data\.gamma"):
        build_dataset({"name": "synthetic", "gamma": 1}, 0)
    with pytest.raises(ValueError, match=r"data\.max_samples"):
        build_dataset({"name": "synthetic", "min_samples": 50, "max_samples": 10}, 0)
    with pytest.raises(ValueError, match=r"data\.alpha"):
        build_dataset({"name": "synthetic", "alpha": -1}, 0)
    with pytest.raises(ValueError, match=r"data\.iid"):
        build_dataset({"name": "synthetic", "iid": "yes"}, 0)


def test_ten_thousand_small_clients_build_fast():
    t = time.perf_counter()
    d = build_dataset({"name": "synthetic", "num_clients": 10_000, "max_samples": 60}, 0)
    elapsed = time.perf_counter() - t
    assert d.num_clients == 10_000 and int(d.counts.min()) >= 40
    # ≈ 0.5 s on 2 cores; the bound only catches a per-client Python loop doing heavy work
    assert elapsed < 20.0, f"10k small clients took {elapsed:.2f} s"


@pytest.mark.slow
def test_ten_thousand_default_clients_build_in_seconds():
    t = time.perf_counter()
    d = build_dataset({"name": "synthetic", "num_clients": 10_000}, 0)
    elapsed = time.perf_counter() - t
    assert d.num_clients == 10_000 and int(d.counts.max()) <= 800  # 1000 cap minus 20 % test
    assert elapsed < 20.0, f"10k default clients took {elapsed:.2f} s"  # ≈ 3 s on 2 cores


def eager_synthetic(seed, **keys):
    """The former builder, kept as the oracle of the streamed one: every row drawn at once, then
    the test rows split off by ``assemble`` (the data set twice in memory at the peak)."""
    from fedopt.data.assemble import assemble
    from fedopt.data.checks import seed_streams
    from fedopt.data.synthetic import check_synthetic, draw_model, draw_sizes

    k = check_synthetic(**keys)
    rng_model, rng_sizes, rng_x, rng_split = seed_streams(seed, 4)
    sizes = draw_sizes(rng_sizes, k["num_clients"], k["min_samples"], k["max_samples"],
                       k["lognormal_mean"], k["lognormal_sigma"])
    model = draw_model(rng_model, k["num_clients"], k["alpha"], k["beta"], k["iid"],
                       k["num_features"], k["num_classes"])
    x = rng_x.standard_normal((int(sizes.sum()), k["num_features"]), dtype=np.float32)
    x *= np.sqrt(model.cov_diag).astype(np.float32)
    y = np.empty(x.shape[0], dtype=np.int64)
    v32 = model.v.astype(np.float32)
    ends = np.cumsum(sizes)
    for c in range(k["num_clients"]):
        rows = slice(ends[c] - sizes[c], ends[c])
        x[rows] += v32[c]
        y[rows] = (x[rows].astype(np.float64) @ model.W[c].T + model.b[c]).argmax(axis=1)
    client = np.repeat(np.arange(k["num_clients"], dtype=np.int64), sizes)
    return assemble(x, y, client, k["num_clients"], num_classes=k["num_classes"], name="",
                    test_fraction=k["test_fraction"], rng=rng_split)


@pytest.mark.parametrize("seed, keys, chunk", [
    (0, {"num_clients": 40}, 1 << 18),               # one chunk
    (1, {"num_clients": 60, "alpha": 0.5}, 700),     # many chunks of several clients
    (2, {"num_clients": 9, "max_samples": None}, 5),  # chunks smaller than one client
    (3, {"num_clients": 30, "iid": True, "test_fraction": 0.0}, 300),
])
def test_streamed_build_equals_the_eager_builder_bit_for_bit(monkeypatch, seed, keys, chunk):
    """Chunked drawing straight into the train/test arrays gives the data the eager builder
    (all rows at once, then the split) gives: same streams, same order, same bits."""
    import fedopt.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "BUILD_CHUNK_ROWS", chunk)
    got, _ = synthetic.synthetic_with_model(seed, **keys)
    ref = eager_synthetic(seed, **keys)
    for f in ("x", "y", "offsets", "x_test", "y_test", "client_test"):
        assert torch.equal(getattr(got, f), getattr(ref, f)), f
