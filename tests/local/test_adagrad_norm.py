"""AdaGrad-Norm against its formula, per client in one stack, and as a torch-style optimizer."""
import torch

from fedopt.optim import make
from fedopt.optim.optimizers import AdagradNorm


def test_functional_rule_equals_the_formula_per_client():
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(3, 4, 2, generator=g, dtype=torch.float64),
         "b": torch.randn(3, 5, generator=g, dtype=torch.float64)}
    lr = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    opt = make("adagradnorm", lr=lr, weight_decay=0.01, initial_accumulator_value=0.5)
    state = opt.init(x, batch_shape=(3,))
    ref = {k: v.clone() for k, v in x.items()}
    v = torch.full((3,), 0.5, dtype=torch.float64)
    for t in range(20):
        grads = {k: torch.randn(val.shape, generator=g, dtype=torch.float64)
                 for k, val in x.items()}
        x, state = opt.update(x, grads, state)
        gd = {k: grads[k] + 0.01 * ref[k] for k in ref}
        for c in range(3):
            v[c] += sum(float(gd[k][c].pow(2).sum()) for k in gd)
            for k in ref:
                ref[k][c] = ref[k][c] - lr[c] * gd[k][c] / (v[c].sqrt() + 1e-10)
    for k in ref:
        torch.testing.assert_close(x[k], ref[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(state["v"], v, rtol=1e-13, atol=0)


def test_torch_style_class_moves_like_the_functional_rule():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    q = {"p": p.detach().clone()}
    opt = AdagradNorm([p], lr=0.3)
    f = make("adagradnorm", lr=0.3)
    st = f.init(q)
    for _ in range(5):
        grad = torch.randn(6, dtype=torch.float64)
        p.grad = grad.clone()
        opt.step()
        q, st = f.update(q, {"p": grad}, st)
    torch.testing.assert_close(p.detach(), q["p"], rtol=0, atol=1e-14)
