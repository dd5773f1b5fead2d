"""``make(name, **kwargs)``: functional optimizers by lowercase name."""
from __future__ import annotations

import dataclasses
from typing import Any

from fedopt.optim import functional as F
from fedopt.optim.core import FunctionalOptimizer

REGISTRY: dict[str, type[FunctionalOptimizer]] = {
    "sgd": F.SGD, "adam": F.Adam, "adamw": F.AdamW, "diffgrad": F.DiffGrad,
    "adabelief": F.AdaBelief, "adan": F.Adan, "lion": F.Lion, "exadam": F.EXAdam,
    "sophia": F.Sophia, "adahessian": F.AdaHessian, "mfac": F.MFAC,
    "adamtau": F.AdamTau, "yogi": F.Yogi, "adagrad": F.Adagrad, "adagradnorm": F.AdagradNorm,
}


def make(name: str, **kwargs: Any) -> FunctionalOptimizer:
    """Build the functional optimizer ``name`` (case-insensitive) with keyword hyperparameters
    (names and defaults as the torch-style classes). Unknown names/keywords and bad values raise
    ``ValueError`` naming them."""
    key = name.lower() if isinstance(name, str) else name
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(REGISTRY)}")
    cls = REGISTRY[key]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"{key}: unknown keyword(s) {unknown}; valid keywords: {fields}")
    if "betas" in kwargs and isinstance(kwargs["betas"], list):
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def from_config(spec: dict[str, Any]) -> FunctionalOptimizer:
    """The optimizer of a config section ``{name: adam, lr: 0.01, betas: [0.9, 0.99], ...}``."""
    spec = dict(spec)
    return make(spec.pop("name"), **spec)
