"""Shared hyperparameter checks; each raises ``ValueError`` naming the offending field."""
from __future__ import annotations

from typing import Any

from fedopt.optim.core import check_hparam, check_int

DISTRIBUTIONS = ("gaussian", "rademacher")


def check_lr(lr: Any) -> None:
    """``0 <= lr < inf`` (number or per-client tensor); ValueError naming ``lr`` otherwise.

    0 is accepted here because a schedule legitimately reaches it (linear decay to zero,
    ``lr_decay ** round`` underflowing) and torch's own optimizers accept it; a learning rate
    a user configures must be > 0, which :mod:`fedopt.config` checks for every client and
    server optimizer."""
    check_hparam("lr", lr, low=0.0, high=float("inf"))


def check_eps(eps: Any, name: str = "eps") -> None:
    check_hparam(name, eps, low=0.0, low_inclusive=False)


def check_weight_decay(weight_decay: Any) -> None:
    check_hparam("weight_decay", weight_decay, low=0.0)


def check_betas(betas: Any, n: int) -> None:
    """``betas`` is a tuple of ``n`` numbers (or per-client tensors), each in [0, 1)."""
    if not isinstance(betas, tuple) or len(betas) != n:
        raise ValueError(f"invalid betas: {betas!r} (need a tuple of {n} values in [0, 1))")
    for i, b in enumerate(betas):
        check_hparam(f"betas[{i}]", b, low=0.0, high=1.0)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}: {value!r} (need True or False)")


def check_hessian_options(update_period: Any, num_samples: Any, distribution: Any) -> None:
    check_int("update_period", update_period, low=1)
    check_int("num_samples", num_samples, low=1)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"invalid hessian_distribution: {distribution!r} "
                         f"(need one of {', '.join(DISTRIBUTIONS)})")
