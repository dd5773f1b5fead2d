"""fedopt.tree: structure kept, non-tensor leaves untouched, aliasing kept, inputs untouched."""
import collections
import math

import pytest
import torch

from fedopt import tree

Pair = collections.namedtuple("Pair", "a b")


def _sample():
    shared = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    return {"w": shared, "again": shared, "step": torch.tensor(3, dtype=torch.int64),
            "list": [torch.ones(3), 7, "s"], "tup": (torch.zeros(3, 1), None),
            "nt": Pair(torch.full((3,), 2.0), 1.5), "n": {"deep": {"x": torch.ones(2)}}}


def test_map_keeps_structure_and_non_tensor_leaves():
    t = _sample()
    out = tree.map_tensors(lambda x: x * 2, t)
    assert list(out) == list(t)
    assert out["list"][1:] == [7, "s"] and isinstance(out["list"], list)
    assert isinstance(out["tup"], tuple) and out["tup"][1] is None
    assert isinstance(out["nt"], Pair) and out["nt"].b == 1.5
    assert torch.equal(out["n"]["deep"]["x"], torch.full((2,), 2.0))
    assert out["w"] is out["again"]                       # aliasing survives
    assert torch.equal(t["w"], torch.arange(6, dtype=torch.float32).reshape(3, 2))


def test_zip_map_pairs_leaves_by_path():
    a = {"x": torch.ones(2), "y": [torch.zeros(1), 3]}
    b = {"y": [torch.ones(1), 4], "x": torch.full((2,), 5.0), "extra": torch.ones(1)}
    out = tree.zip_map(torch.add, a, b)
    assert torch.equal(out["x"], torch.full((2,), 6.0)) and torch.equal(out["y"][0], torch.ones(1))
    assert out["y"][1] == 3 and "extra" not in out
    with pytest.raises(KeyError):
        tree.zip_map(torch.add, {"z": torch.ones(1)}, b)


def test_leaves_and_global_norm():
    t = {"a": torch.tensor([3.0]), "b": [torch.tensor([[4.0, 12.0]])], "c": 5}
    assert [x.tolist() for x in tree.leaves(t)] == [[3.0], [[4.0, 12.0]]]
    assert math.isclose(float(tree.global_norm(t)), 13.0)
    assert float(tree.global_norm({"c": 1})) == 0.0


def test_to_casts_floating_leaves_only_and_clone_is_deep():
    t = _sample()
    out = tree.to(t, "cpu", torch.float64)
    assert out["w"].dtype == torch.float64 and out["step"].dtype == torch.int64
    assert out["w"] is out["again"]
    c = tree.clone(t)
    c["w"].add_(1)
    assert torch.equal(t["w"], torch.arange(6, dtype=torch.float32).reshape(3, 2))
    assert c["again"] is c["w"]


def test_take_rows_of_stacked_leaves():
    t = _sample()
    out = tree.take_rows(t, torch.tensor([2, 0]), n=3)
    assert torch.equal(out["w"], t["w"][[2, 0]])
    assert out["step"] is t["step"]                        # 0-dim: kept
    assert out["n"]["deep"]["x"] is t["n"]["deep"]["x"]    # leading size 2 != n: kept
    assert out["tup"][0].shape == (2, 1)
    assert torch.equal(tree.take_rows({"x": torch.arange(4)}, [3])["x"], torch.tensor([3]))
