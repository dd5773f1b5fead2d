"""A user's own nn.Module or factory: accepted when vmap-friendly, rejected with a clear reason."""
import pytest
import torch
from torch import nn

from fedopt.models import build_model, check_model


class Tiny(nn.Module):
    def __init__(self, d=4, c=3):
        super().__init__()
        self.fc = nn.Linear(d, c)
        self.norm = nn.GroupNorm(1, c)  # fine: no running statistics
        self.register_buffer("scale", torch.tensor(2.0))  # constant buffer: fine

    def forward(self, x):
        return self.norm(self.fc(x)) * self.scale


def test_user_module_is_accepted_as_given():
    m = Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = build_model(m, (4,), 3, seed=123)
    assert out is m
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # not re-initialised


def test_factory_is_seeded():
    state = torch.get_rng_state()
    a = build_model(lambda shape, c: Tiny(shape[0], c), (4,), 3, seed=5)
    b = build_model(lambda shape, c: Tiny(shape[0], c), (4,), 3, seed=5)
    c = build_model(lambda shape, c: Tiny(shape[0], c), (4,), 3, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.fc(x))


class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return nn.functional.dropout(self.fc(x), 0.5, training=True)


class CountsCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


class WrongOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


class UsesItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        out = self.fc(x)
        return out * 2 if out.sum().item() > 0 else out  # data-dependent Python control flow


@pytest.mark.parametrize("module,match", [
    (WithBatchNorm(), "running statistics"),
    (WithDropout(), "not deterministic"),
    (CountsCalls(), "buffer 'calls' changed"),
    (WrongOutput(), r"expected \(16, 3\)"),
    (UsesItem(), "vmap"),
])
def test_unfriendly_modules_are_rejected(module, match):
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        build_model(module, (4,), 3)
    assert torch.equal(torch.get_rng_state(), state)  # the check ran on a forked RNG


def test_check_model_on_builtin_cnn():
    check_model(build_model({"name": "cnn", "channels": [2, 2], "hidden": 4}, (1, 8, 8), 3),
                (1, 8, 8), 3)


class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class WritesBufferWhenTraining(_Base):
    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        if torch.is_grad_enabled():        # invisible to a no-grad forward
            self.steps += 1
        return self.fc(x)


class IntParam(_Base):
    def __init__(self):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3, dtype=torch.int32), requires_grad=False)

    def forward(self, x):
        return self.fc(x) + self.offset


class BadBatched(_Base):
    def batched_forward(self, params, x):
        return torch.bmm(x, params["fc.weight"].transpose(1, 2))   # bias forgotten


class IntLogits(_Base):
    def forward(self, x):
        return self.fc(x).round().long()


def _frozen():
    m = _Base()
    m.requires_grad_(False)
    return m


@pytest.mark.parametrize("model,match", [
    (WritesBufferWhenTraining(), r"would mutate a captured Tensor"),   # a buffer write
    (IntParam(), r"parameter 'offset' has dtype torch.int32"),
    (BadBatched(), r"batched_forward\(params, x\) does not match"),
    (IntLogits(), r"output dtype torch.int64"),
    (_frozen(), "no trainable parameters"),
])
def test_more_models_the_engine_cannot_train_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        build_model(model, (4,), 3)


def test_builtin_model_sized_on_meta_before_it_is_allocated():
    from fedopt.models.registry import check_model_size
    from fedopt.models import MLP

    # MLP [784 -> 200 -> 200 -> C]: 784*200+200 + 200*200+200 + 200*C+C = 197,200 + 201*C
    n = check_model_size(lambda: MLP((784,), 10), "mlp", (784,), 10, torch.float32)
    assert n == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    with pytest.raises(ValueError, match=r"model.name: mlp for input shape \[784\] and "
                                         r"1000000000000 classes \(data.num_classes\) has "
                                         r"201,000,000,197,200 parameters"):
        build_model({"name": "mlp"}, (784,), 10**12)
