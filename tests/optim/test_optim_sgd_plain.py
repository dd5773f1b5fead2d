"""Plain SGD's short ``update`` (number hyperparameters, no momentum, no weight decay) is the
generic :meth:`FunctionalOptimizer.update` bit for bit: values, layouts and state."""
from __future__ import annotations

import pytest
import torch

from fedopt.optim import functional as F
from fedopt.optim.core import FunctionalOptimizer


def params(gen, dtype, transposed):
    """[5, 7, 3] and [5, 3]; ``transposed``: the first laid out as a transposed [5, 3, 7]."""
    w = (torch.randn(5, 3, 7, generator=gen, dtype=dtype).transpose(1, 2) if transposed
         else torch.randn(5, 7, 3, generator=gen, dtype=dtype))
    return {"w": w,
            "b": torch.randn(5, 3, generator=gen, dtype=dtype)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("opt", [F.SGD(lr=0.37), F.SGD(lr=0.0), F.SGD(lr=1e-3, dampening=0.5),
                                 F.SGD(lr=0.1, momentum=0.9), F.SGD(lr=0.1, weight_decay=0.01),
                                 F.SGD(lr=torch.full((5,), 0.2, dtype=torch.float64))],
                         ids=["plain", "lr0", "dampening", "momentum", "decay", "per-client-lr"])
def test_update_is_the_generic_update(opt, transposed, dtype):
    gen = torch.Generator().manual_seed(0)
    x = params(gen, dtype, transposed)
    x_ref = dict(x)
    state = opt.init(x, batch_shape=(5,))
    state_ref = opt.init(x, batch_shape=(5,))
    for _ in range(3):
        g = params(gen, dtype, not transposed)
        x, state = opt.update(x, g, state)
        x_ref, state_ref = FunctionalOptimizer.update(opt, x_ref, g, state_ref)
        for k in x:
            assert torch.equal(x[k], x_ref[k]) and x[k].stride() == x_ref[k].stride(), k
        assert torch.equal(state["step"], state_ref["step"])
        assert state["buffers"].keys() == state_ref["buffers"].keys()
        for k in state["buffers"]:
            assert state["buffers"][k].keys() == state_ref["buffers"][k].keys()
            for b in state["buffers"][k]:
                assert torch.equal(state["buffers"][k][b], state_ref["buffers"][k][b])


def test_update_names_a_missing_gradient():
    x = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    opt = F.SGD(lr=0.1)
    with pytest.raises(ValueError, match="no gradient for parameter 'b'"):
        opt.update(x, {"w": torch.ones(2, 3)}, opt.init(x, batch_shape=(2,)))


def test_update_under_autograd_keeps_the_graph():
    """A differentiable update (hypergradients through a step) still works."""
    x = {"w": torch.ones(3, requires_grad=True)}
    new, _ = F.SGD(lr=0.5).update(x, {"w": torch.full((3,), 2.0, requires_grad=True)},
                                  F.SGD(lr=0.5).init(x))
    new["w"].sum().backward()
    assert torch.equal(x["w"].grad, torch.ones(3))
