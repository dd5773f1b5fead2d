"""User data from an .npz file and from arrays: layouts, ordering, and every validation error."""
import numpy as np
import pytest
import torch

from fedopt.data import build_dataset, build_from_arrays


def federated_arrays(seed=0):
    rng = np.random.default_rng(seed)
    n, m, k = 40, 12, 4
    client_train = rng.permutation(np.arange(n) % k)  # rows not sorted by client
    return {
        "x_train": rng.normal(size=(n, 3)),
        "y_train": rng.integers(0, 5, size=n),
        "client_train": client_train,
        "x_test": rng.normal(size=(m, 3)),
        "y_test": rng.integers(0, 5, size=m),
        "client_test": rng.integers(0, k, size=m),
    }


def save(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_federated_layout_sorts_stably_by_client(tmp_path):
    a = federated_arrays()
    d = build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    assert d.num_clients == 4 and d.num_classes == 5
    for i in range(4):
        rows = np.flatnonzero(a["client_train"] == i)  # original order within the client
        xi, yi = d.client(i)
        np.testing.assert_allclose(xi.numpy(), a["x_train"][rows].astype(np.float32))
        assert yi.tolist() == a["y_train"][rows].tolist()
        trows = np.flatnonzero(a["client_test"] == i)
        xt, yt = d.client(i, split="test")
        np.testing.assert_allclose(xt.numpy(), a["x_test"][trows].astype(np.float32))
        assert yt.tolist() == a["y_test"][trows].tolist()


def test_plain_layout_is_partitioned_and_keeps_every_row(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(100, 2)), rng.integers(0, 3, size=100)
    spec = {"name": "npz", "path": save(tmp_path, {"x": x, "y": y}), "num_clients": 7,
            "partition": {"name": "dirichlet", "alpha": 1.0}, "test_fraction": 0.25}
    d = build_dataset(spec, seed=3)
    assert d.num_clients == 7 and int(d.counts.min()) >= 1
    got = torch.cat([d.x, d.x_test]).numpy()
    labels = torch.cat([d.y, d.y_test]).numpy()
    key = np.lexsort(got.T)
    ref = np.lexsort(x.astype(np.float32).T)
    np.testing.assert_array_equal(got[key], x.astype(np.float32)[ref])
    np.testing.assert_array_equal(labels[key], y[ref])


def test_arrays_with_own_test_set_give_test_rows_to_clients_holding_the_class():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(10), 30)
    x = torch.tensor(rng.normal(size=(300, 4)), dtype=torch.float64)  # torch input is accepted
    y_test = rng.integers(0, 10, size=200)
    d = build_from_arrays(x, torch.tensor(y), 20, {"name": "shards"}, seed=0,
                          x_test=rng.normal(size=(200, 4)), y_test=y_test)
    assert d.x_test.shape == (200, 4) and d.x.shape == (300, 4)
    train_classes = d.label_counts() > 0
    assert train_classes[d.client_test, d.y_test].all()


def test_build_from_arrays_deterministic_and_infers_classes():
    x, y = np.arange(60.0).reshape(30, 2), np.arange(30) % 4
    a = build_from_arrays(x, y, 5, "iid", seed=1)
    b = build_from_arrays(x, y, 5, "iid", seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.client_test, b.client_test)
    assert a.num_classes == 4 and a.x.shape[0] + a.x_test.shape[0] == 30
    with pytest.raises(ValueError, match=r"data\.num_clients"):
        build_from_arrays(x, y, 31, "iid", seed=1)
    with pytest.raises(ValueError, match=r"data\.num_classes"):
        build_from_arrays(x, y, 5, "iid", seed=1, num_classes=3)


def _bad(change):
    a = federated_arrays()
    change(a)
    return a


CASES = [
    ("missing array", lambda a: a.pop("y_test"), "y_test"),
    ("lengths disagree", lambda a: a.update(y_train=a["y_train"][:-1]), "y_train has 39 rows"),
    ("negative client", lambda a: a["client_train"].__setitem__(0, -1), "client_train"),
    ("client_test out of range", lambda a: a["client_test"].__setitem__(0, 4), "client_test"),
    ("client without train rows",
     lambda a: a["client_train"].__setitem__(a["client_train"] == 2, 3), "client_train: client 2"),
    ("fractional y_test of integer labels",
     lambda a: a.update(y_test=a["y_test"] + 0.5), "y_test"),
    ("negative labels", lambda a: a["y_test"].__setitem__(0, -2), "y_test"),
    ("x not numeric", lambda a: a.update(x_train=a["x_train"].astype(str)), "x_train"),
    ("NaN in x", lambda a: a["x_train"].__setitem__((3, 1), np.nan), "x_train"),
    ("inf in x_test", lambda a: a["x_test"].__setitem__((0, 0), np.inf), "x_test"),
    ("feature shapes differ", lambda a: a.update(x_test=a["x_test"][:, :2]), "x_test"),
    ("1-D x", lambda a: a.update(x_train=a["x_train"][:, 0]), "x_train"),
]


@pytest.mark.parametrize("label,change,match", CASES, ids=[c[0] for c in CASES])
def test_npz_errors_name_the_array(tmp_path, label, change, match):
    path = save(tmp_path, _bad(change))
    with pytest.raises(ValueError, match=match):
        build_dataset({"name": "npz", "path": path}, seed=0)


def test_whole_float_labels_are_accepted(tmp_path):
    a = federated_arrays()
    a["y_train"] = a["y_train"].astype(np.float64)
    d = build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    assert d.y.dtype == torch.int64


def test_object_arrays_file_and_path_errors(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([[1, "a"]], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="x"):
        build_dataset({"name": "npz", "path": str(path)}, seed=0)
    with pytest.raises(ValueError, match="data.path"):
        build_dataset({"name": "npz", "path": str(tmp_path / "nope.npz")}, seed=0)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="data.path"):
        build_dataset({"name": "npz", "path": str(tmp_path / "junk.npz")}, seed=0)
    with pytest.raises(ValueError, match=r"^data\.path: required"):
        build_dataset({"name": "npz"}, seed=0)


def test_federated_layout_checks_num_clients(tmp_path):
    path = save(tmp_path, federated_arrays())
    with pytest.raises(ValueError, match="client_train: client index 3 out of range"):
        build_dataset({"name": "npz", "path": path, "num_clients": 3}, seed=0)
    with pytest.raises(ValueError, match="client_train: client 4 has no train rows"):
        build_dataset({"name": "npz", "path": path, "num_clients": 6}, seed=0)


# --- sizes derived from user data are bounded before anything is allocated for them ----------

def test_inferred_classes_are_capped_unless_num_classes_is_given(tmp_path):
    from fedopt.data.arrays import MAX_INFERRED_CLASSES

    a = federated_arrays()
    a["y_train"][0] = 10**9
    with pytest.raises(ValueError, match=r"y_train: label 1000000000 .*data\.num_classes"):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    with pytest.raises(ValueError, match=r"y_train: label 1000000000 >= data\.num_classes=5"):
        build_dataset({"name": "npz", "path": save(tmp_path, a), "num_classes": 5}, seed=0)
    # the cap is on max label + 1: the largest accepted label is MAX_INFERRED_CLASSES - 1
    a["y_train"][0] = MAX_INFERRED_CLASSES - 1
    d = build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    assert d.num_classes == 100_000
    a["y_test"][0] = MAX_INFERRED_CLASSES
    with pytest.raises(ValueError, match="y_test: label 100000 would make 100001 classes"):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    # given explicitly, more classes than the cap are accepted
    d = build_dataset({"name": "npz", "path": save(tmp_path, a), "num_classes": 100_001}, seed=0)
    assert d.num_classes == 100_001
    with pytest.raises(ValueError, match=r"y: label .* data\.num_classes"):
        build_from_arrays(np.zeros((4, 2)), [0, 1, 2, 10**6], 2, "iid", seed=0)


@pytest.mark.parametrize("dtype,value,match", [
    (np.uint64, 2**64 - 1, r"below 2\*\*63"),           # would wrap to -1 in int64
    (np.float64, 1e300, r"below 2\*\*63"),              # a whole float beyond int64
    (np.float64, -1.0, "non-negative"),
    (np.float64, np.nan, "integers"),
])
def test_labels_that_do_not_fit_int64_are_refused(tmp_path, dtype, value, match):
    a = federated_arrays()
    y = a["y_train"].astype(dtype)
    y[3] = value
    a["y_train"] = y
    with pytest.raises(ValueError, match="y_train: labels .*" + match):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)


def test_client_ids_are_bounded_by_train_rows(tmp_path):
    a = federated_arrays()                              # 40 train rows
    a["client_train"][0] = 10**9                        # bincount would allocate 8 GB
    with pytest.raises(ValueError, match="client_train: client index 1000000000 is not below "
                                         "the number of train rows .40."):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    a = federated_arrays()
    a["client_train"][0] = 40                           # = rows: 41 clients cannot own 40 rows
    with pytest.raises(ValueError, match="client_train: client index 40"):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    a = federated_arrays()
    a["client_train"][0] = -1
    with pytest.raises(ValueError, match="client_train: client indices must be non-negative"):
        build_dataset({"name": "npz", "path": save(tmp_path, a)}, seed=0)
    with pytest.raises(ValueError, match="data.num_clients: 10000000000 clients"):
        build_dataset({"name": "npz", "path": save(tmp_path, federated_arrays()),
                       "num_clients": 10**10}, seed=0)
    with pytest.raises(ValueError, match="data.num_clients"):
        build_from_arrays(np.zeros((4, 2)), [0, 1, 0, 1], 10**12, "iid", seed=0)


def test_zero_sized_feature_dimension_is_refused():
    with pytest.raises(ValueError, match=r"x: feature shape \(0,\)"):
        build_from_arrays(np.zeros((4, 0)), [0, 1, 0, 1], 2, "iid", seed=0)


def test_path_that_is_not_an_npz_file_names_data_path_and_the_arrays(tmp_path):
    cfg = {"name": "npz"}
    with pytest.raises(ValueError, match="data.path: .* is a directory; expected a .npz file .*"
                                         "x_train, y_train, client_train"):
        build_dataset({**cfg, "path": str(tmp_path)}, seed=0)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"data.path: .* single array \(.npy\)"):
        build_dataset({**cfg, "path": str(tmp_path / "one.npy")}, seed=0)
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"data.path: .* not an .npz \(zip\) archive"):
        build_dataset({**cfg, "path": str(tmp_path / "text.npz")}, seed=0)
    path = save(tmp_path, {"x": np.array(["a", "b"]), "y": np.array([0, 1])})
    with pytest.raises(ValueError, match="x: dtype <U1 .* is not numeric"):
        build_dataset({**cfg, "path": path}, seed=0)


def test_unreadable_file_names_data_path(tmp_path):
    import os

    path = save(tmp_path, federated_arrays())
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):                    # root reads anything
            pytest.skip("running as a user who can read a mode-000 file")
        with pytest.raises(ValueError, match="data.path: .* cannot be read"):
            build_dataset({"name": "npz", "path": path}, seed=0)
    finally:
        os.chmod(path, 0o600)


def _npz_with_header_only(path, name, shape, dtype="<f8"):
    """An .npz whose member claims ``shape`` but holds no data (like a zip bomb, costs nothing)."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.npy", buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, dtype=np.int64))
        z.writestr("y.npy", buf.getvalue())


def test_file_that_would_not_fit_in_memory_is_refused_before_loading(tmp_path):
    from fedopt.data.npz import inspect_npz

    path = tmp_path / "big.npz"
    _npz_with_header_only(path, "x", (10**12, 3))      # 24 TB of float64 once loaded
    meta = inspect_npz(str(path))                     # headers only: cheap
    assert meta["x"] == ((10**12, 3), np.dtype("<f8"))
    with pytest.raises(ValueError, match=r"data.path: loading .* needs about 44703.5 GiB "
                                         r"\(x: shape \[1000000000000, 3\], float64\)"):
        build_dataset({"name": "npz", "path": str(path)}, seed=0)
