"""FederatedDataset: accessors and layout checks on a hand-built example."""
import pytest
import torch

from fedopt.data import FederatedDataset


def small() -> FederatedDataset:
    # 3 clients with 2, 1, 3 train rows; features are the row number so slices are checkable
    x = torch.arange(6, dtype=torch.float32).reshape(6, 1)
    return FederatedDataset(
        x=x,
        y=torch.tensor([0, 1, 1, 2, 2, 0]),
        offsets=torch.tensor([0, 2, 3, 6]),
        x_test=torch.tensor([[10.0], [11.0], [12.0]]),
        y_test=torch.tensor([2, 0, 1]),
        client_test=torch.tensor([2, 0, 2]),
        num_classes=3,
        name="tiny",
    )


def test_shape_facts_and_slices():
    d = small()
    assert d.num_clients == 3
    assert d.counts.tolist() == [2, 1, 3]
    assert d.feature_shape == (1,)
    assert d.client_index.tolist() == [0, 0, 1, 2, 2, 2]
    x2, y2 = d.client(2)
    assert x2.flatten().tolist() == [3.0, 4.0, 5.0] and y2.tolist() == [2, 2, 0]
    assert d.client(-1)[1].tolist() == [2, 2, 0]
    xt, yt = d.client(2, split="test")
    assert xt.flatten().tolist() == [10.0, 12.0] and yt.tolist() == [2, 1]
    assert d.client(1, split="test")[0].shape == (0, 1)


def test_label_counts_by_hand():
    d = small()
    assert d.label_counts().tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert d.label_counts("test").tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


def test_describe_by_hand():
    s = small().describe()
    assert s["clients"] == 3 and s["rows"] == 6 and s["test_rows"] == 3
    assert (s["min_n"], s["median_n"], s["max_n"]) == (1, 2.0, 3)
    assert s["mean_n"] == pytest.approx(2.0)
    assert s["classes"] == 3 and s["feature_shape"] == [1]


def test_to_casts_features_only():
    d = small().to("cpu", dtype=torch.float64)
    assert d.x.dtype == torch.float64 and d.x_test.dtype == torch.float64
    assert d.y.dtype == d.offsets.dtype == d.y_test.dtype == d.client_test.dtype == torch.int64
    with pytest.raises(ValueError, match="dtype"):
        small().to(dtype=torch.int32)


def test_bad_index_and_split():
    d = small()
    with pytest.raises(IndexError, match="client index 3"):
        d.client(3)
    with pytest.raises(ValueError, match="split"):
        d.client(0, split="valid")


@pytest.mark.parametrize("field,value,match", [
    ("offsets", torch.tensor([0, 2, 3, 5]), "offsets"),
    ("offsets", torch.tensor([0, 4, 3, 6]), "non-decreasing"),
    ("y", torch.tensor([0, 1, 1, 2, 2, 0], dtype=torch.int32), "FederatedDataset.y"),
    ("y", torch.tensor([0, 1, 1, 2, 2, 3]), "FederatedDataset.y: must lie"),
    ("client_test", torch.tensor([2, 0, 3]), "client_test"),
    ("x_test", torch.zeros(3, 2), "x_test feature shape"),
])
def test_layout_errors_name_the_field(field, value, match):
    d = small()
    kwargs = {f: getattr(d, f) for f in ("x", "y", "offsets", "x_test", "y_test", "client_test")}
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        FederatedDataset(**kwargs, num_classes=3, name="bad")
