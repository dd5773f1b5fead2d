"""Shared fixtures-as-functions for the fedopt.optim tests (no conftest: the lead owns it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

ALL_NAMES = ["sgd", "adam", "adamw", "diffgrad", "adabelief", "adan", "lion", "exadam",
             "sophia", "adahessian", "mfac", "adamtau", "yogi", "adagrad"]
HESSIAN_NAMES = {"sophia", "adahessian"}

#: hyperparameters exercising the interesting branches (decay, momentum, ...) of each rule
FEATURE_KWARGS: dict[str, dict] = {
    "sgd": dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "adam": dict(lr=0.01, weight_decay=0.01),
    "adamw": dict(lr=0.01, weight_decay=0.1),
    "diffgrad": dict(lr=0.01, weight_decay=0.01),
    "adabelief": dict(lr=0.01, weight_decay=0.01),
    "adan": dict(lr=0.01, weight_decay=0.01),
    "lion": dict(lr=1e-3, weight_decay=0.1),
    "exadam": dict(lr=0.01, weight_decay=0.01),
    "sophia": dict(lr=0.01, weight_decay=0.01, p=0.5, update_period=2),
    "adahessian": dict(lr=0.01, weight_decay=0.01, update_period=2),
    "mfac": dict(lr=1e-3, m=4, damp=0.1, weight_decay=0.01),
    "adamtau": dict(lr=0.01, eps=1e-3, weight_decay=0.01, initial_accumulator_value=1e-4),
    "yogi": dict(lr=0.01, weight_decay=0.01),
    "adagrad": dict(lr=0.05, beta1=0.5, eps=1e-3, weight_decay=0.01,
                    initial_accumulator_value=0.1),
}


def small_mlp(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def regression_data(dtype: torch.dtype, seed: int = 1, n: int = 64):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=dtype)
    Y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=gen, dtype=dtype)
    return X, Y


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train(model: nn.Module, opt: torch.optim.Optimizer, X, Y, steps: int,
          create_graph: bool = False) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = ((model(X) - Y) ** 2).mean()
        loss.backward(create_graph=create_graph)
        losses.append(loss.item())
        opt.step()
    return losses


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: torch's intra-op thread pool only adds contention (50x slower on a busy
    2-core box). Import this fixture into a test module to make it autouse there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
