"""NodeObjective.restricted: a node actor's objective holds only its nodes' rows and gives
their gradients bit for bit."""
import numpy as np
import pytest
import torch

from fedopt.config import validate
from fedopt.simulation import Simulation


def test_restricted_objective_holds_only_its_nodes_rows():
    cfg = {"seed": 2, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 6},
           "model": {"name": "logreg", "l2": 0.1},
           "algorithm": {"name": "gossip", "time_budget": 1, "lr": 0.1},
           "topology": {"name": "ring"}, "executor": {"dtype": "float64"}}
    sim = Simulation(validate(cfg))
    full = sim.algorithm.objective
    counts = sim.data.counts.numpy()
    own = np.array([1, 4, 5])
    part = full.restricted(own)
    assert part.x.shape[0] == part.y.shape[0] == counts[own].sum() < counts.sum()
    for i in own:                                    # node i's rows are the data set's client i
        lo = part.offsets[i]
        xi, yi = sim.data.client(int(i))
        assert torch.equal(part.x[lo:lo + counts[i]], xi.double()) and torch.equal(
            part.y[lo:lo + counts[i]], yi)
    flat = torch.randn((len(own), full.dim), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(part.grads(flat, own), full.grads(flat, own))
    assert torch.equal(part.losses(flat, own), full.losses(flat, own))
    with pytest.raises(ValueError, match=r"nodes \[2\]: their rows are not held"):
        part.grads(flat[:2], np.array([1, 2]))
    sim.close()
