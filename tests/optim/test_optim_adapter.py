"""The torch.optim adapter: defaults of the class table, checkpoints that resume the exact
trajectory, param groups, closures, input validation."""
from __future__ import annotations

import copy
import inspect
import io

import pytest
import torch

import fedopt.optim as O
from fedopt.optim import make

from .helpers import FEATURE_KWARGS, regression_data, single_thread, small_mlp  # noqa: F401

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using backward\\(\\) with create_graph=True")

CLASSES = {"sgd": O.SGD, "adam": O.Adam, "adamw": O.AdamW, "diffgrad": O.DiffGrad,
           "adabelief": O.AdaBelief, "adan": O.Adan, "lion": O.Lion, "exadam": O.EXAdam,
           "sophia": O.Sophia, "adahessian": O.AdaHessian, "mfac": O.MFAC,
           "adamtau": O.AdamTau, "yogi": O.Yogi, "adagrad": O.Adagrad}
SECOND_ORDER = {"sophia", "adahessian"}

#: the class/keyword table of the issue, verbatim
TABLE = {
    "sgd": dict(lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
    "diffgrad": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                     weight_decouple=False),
    "adabelief": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0,
                      weight_decouple=True),
    "adan": dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0,
                 weight_decouple=False),
    "lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0),
    "exadam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                   weight_decouple=True),
    "sophia": dict(lr=6e-2, betas=(0.96, 0.99), eps=1e-12, weight_decay=0, p=1e-2,
                   update_period=10, num_samples=1, hessian_distribution="gaussian"),
    "adahessian": dict(lr=0.1, betas=(0.9, 0.999), eps=1e-16, weight_decay=0,
                       hessian_power=1.0, update_period=1, num_samples=1,
                       hessian_distribution="rademacher"),
    "mfac": dict(lr=1e-3, m=32, damp=1e-4, weight_decay=0),
    "adamtau": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                    initial_accumulator_value=0.0, bias_correction=True),
    "yogi": dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0,
                 initial_accumulator_value=1e-6, bias_correction=True),
    "adagrad": dict(lr=1e-2, beta1=0.0, eps=1e-10, weight_decay=0,
                    initial_accumulator_value=0.0),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_defaults_follow_the_class_table(name):
    sig = inspect.signature(CLASSES[name].__init__).parameters
    fn = make(name)
    for key, value in TABLE[name].items():
        assert sig[key].default == value, (name, key)
        assert getattr(fn, key) == value, (name, key)
    extra = set(sig) - set(TABLE[name]) - {"self", "params", "seed", "generator"}
    assert not extra, extra


def run_steps(model, opt, X, Y, steps, second_order):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        ((model(X) - Y) ** 2).mean().backward(create_graph=second_order)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_state_dict_resumes_the_exact_trajectory(name, dtype):
    """50 steps, save (through torch.save/torch.load(weights_only=True)), a fresh optimizer
    loads it, 50 more steps == 100 uninterrupted steps, bitwise."""
    second = name in SECOND_ORDER
    kwargs = dict(FEATURE_KWARGS[name])
    X, Y = regression_data(dtype)
    full = small_mlp(dtype)
    opt_full = CLASSES[name](full.parameters(), **kwargs)
    run_steps(full, opt_full, X, Y, 100, second)

    first = small_mlp(dtype)
    opt_first = CLASSES[name](first.parameters(), **kwargs)
    run_steps(first, opt_first, X, Y, 50, second)
    buffer = io.BytesIO()
    torch.save(opt_first.state_dict(), buffer)
    buffer.seek(0)
    resumed = copy.deepcopy(first)
    opt_resumed = CLASSES[name](resumed.parameters(), **kwargs)
    opt_resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run_steps(resumed, opt_resumed, X, Y, 50, second)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    for state in opt_resumed.state.values():
        if "beta_pows" in state:  # torch would have cast these to the param dtype
            assert all(v.dtype == torch.float64 for v in state["beta_pows"].values())
        assert state["step"].dtype == torch.int64


@pytest.mark.parametrize("ours,ref,kwargs", [
    (O.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (O.Adam, torch.optim.Adam, dict(lr=0.01)),
    (O.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
])
def test_param_groups_with_own_lr_and_weight_decay(ours, ref, kwargs):
    """Groups overriding lr/weight_decay behave as torch.optim's groups do."""
    def run(cls, extra):
        model = small_mlp(torch.float64)
        X, Y = regression_data(torch.float64)
        groups = [{"params": model[0].parameters(), "lr": 0.003, "weight_decay": 0.5},
                  {"params": model[2].parameters()}]
        opt = cls(groups, **kwargs, **extra)
        run_steps(model, opt, X, Y, 30, False)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), opt
    x_ours, opt = run(ours, {})
    x_ref, _ = run(ref, {"foreach": False})
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["lr"] == 0.003 and opt.param_groups[1]["lr"] == kwargs["lr"]


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    x = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = O.SGD([x], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert loss.item() == 25.0
    torch.testing.assert_close(x.detach(), torch.tensor([2.4, -3.2], dtype=torch.float64))
    assert opt.step() is None


def test_params_without_grad_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = O.Adam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and len(opt.state[b]) == 0
    assert not torch.equal(a.detach(), torch.ones(2))


def test_state_does_not_alias_the_gradient():
    """DiffGrad/Adan keep g_prev: zeroing .grad in place must not change it."""
    for cls in (O.DiffGrad, O.Adan):
        x = torch.nn.Parameter(torch.ones(3))
        opt = cls([x])
        x.grad = torch.full((3,), 2.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        assert torch.equal(opt.state[x]["previous_grad"], torch.full((3,), 2.0))


@pytest.mark.parametrize("name", list(CLASSES))
def test_sparse_gradients_and_complex_params_are_rejected(name):
    with pytest.raises(ValueError, match=f"{CLASSES[name].__name__}.*complex"):
        CLASSES[name]([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = CLASSES[name](emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=f"{CLASSES[name].__name__}.*sparse"):
        opt.step()


BAD = [
    ("sgd", dict(lr=-0.1), "lr"),
    ("sgd", dict(momentum=-0.5), "momentum"),
    ("sgd", dict(weight_decay=-1.0), "weight_decay"),
    ("sgd", dict(nesterov=True), "momentum"),
    ("sgd", dict(nesterov=True, momentum=0.9, dampening=0.1), "dampening"),
    ("adam", dict(lr=-1e-3), "lr"),
    ("adam", dict(betas=(1.0, 0.999)), "betas"),
    ("adam", dict(betas=(0.9, -0.1)), "betas"),
    ("adam", dict(betas=(0.9,)), "betas"),
    ("adam", dict(eps=0.0), "eps"),
    ("adam", dict(eps=-1e-8), "eps"),
    ("adamw", dict(weight_decay=-0.01), "weight_decay"),
    ("diffgrad", dict(betas=(0.9, 1.5)), "betas"),
    ("adabelief", dict(eps=0.0), "eps"),
    ("adan", dict(betas=(0.98, 0.92)), "betas"),
    ("adan", dict(lr=float("nan")), "lr"),
    ("lion", dict(betas=(0.9, 1.0)), "betas"),
    ("exadam", dict(weight_decay=-1.0), "weight_decay"),
    ("sophia", dict(p=0.0), "p"),
    ("sophia", dict(p=-1.0), "p"),
    ("sophia", dict(update_period=0), "update_period"),
    ("sophia", dict(num_samples=0), "num_samples"),
    ("sophia", dict(hessian_distribution="uniform"), "hessian_distribution"),
    ("adahessian", dict(hessian_power=0.0), "hessian_power"),
    ("adahessian", dict(hessian_power=1.5), "hessian_power"),
    ("adahessian", dict(update_period=0), "update_period"),
    ("mfac", dict(m=0), "m"),
    ("mfac", dict(damp=0.0), "damp"),
    ("mfac", dict(lr=-1.0), "lr"),
    ("adamtau", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    ("adamtau", dict(bias_correction=1), "bias_correction"),
    ("yogi", dict(betas=(0.9,)), "betas"),
    ("yogi", dict(eps=0.0), "eps"),
    ("yogi", dict(initial_accumulator_value=torch.ones(2)), "initial_accumulator_value"),
    ("adagrad", dict(beta1=1.0), "beta1"),
    ("adagrad", dict(eps=-1.0), "eps"),
    ("adagrad", dict(initial_accumulator_value=float("inf")), "initial_accumulator_value"),
]


@pytest.mark.parametrize("name,kwargs,field", BAD,
                         ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(BAD)])
def test_bad_hyperparameters_raise_value_error_naming_the_field(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make(name, **kwargs)
    with pytest.raises(ValueError, match=field):
        CLASSES[name]([torch.nn.Parameter(torch.ones(2))], **kwargs)
    with pytest.raises(ValueError, match=field):
        make(name).replace(**kwargs)


def test_bad_group_hyperparameter_and_unknown_names():
    opt = O.Adam([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": -1.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="adamw"):  # lists the valid names
        make("adamx")
    with pytest.raises(ValueError, match="amsgrad"):
        make("adam", amsgard=True)
    assert type(make("AdamW")) is O.functional.AdamW
