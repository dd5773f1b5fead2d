"""fedopt.optim: the shared local-optimizer core.

* functional optimizers (pure ``init``/``update`` over dicts of tensors, batchable over a
  leading client dim): :mod:`fedopt.optim.functional`, built by name with :func:`make`;
* ``torch.optim``-style classes wrapping them: :class:`SGD`, :class:`Adam`, ... ;
* Hutchinson Hessian-diagonal estimates: :mod:`fedopt.optim.hessian`;
* learning-rate schedules: :mod:`fedopt.optim.schedules`.
"""
from fedopt.optim import functional
from fedopt.optim.adapter import FunctionalAdapter, HessianAdapter
from fedopt.optim.core import FunctionalOptimizer, expand_like, masked_select
from fedopt.optim.hessian import (
    hutchinson_diag, hutchinson_diag_autograd, hvp, hvp_autograd, sample_probes)
from fedopt.optim.optimizers import (
    MFAC, SGD, AdaBelief, Adagrad, AdaHessian, Adam, AdamTau, AdamW, Adan, DiffGrad, EXAdam,
    Lion, Sophia, Yogi)
from fedopt.optim.registry import REGISTRY, from_config, make
from fedopt.optim.schedules import (
    CosineLR, LinearDecayLR, ScheduleLR, StepDecayLR, make_schedule)

__all__ = [
    "functional", "make", "from_config", "REGISTRY", "FunctionalOptimizer", "FunctionalAdapter",
    "HessianAdapter", "expand_like", "masked_select",
    "SGD", "Adam", "AdamW", "DiffGrad", "AdaBelief", "Adan", "Lion", "EXAdam", "Sophia",
    "AdaHessian", "MFAC", "AdamTau", "Yogi", "Adagrad",
    "hutchinson_diag", "hutchinson_diag_autograd", "hvp", "hvp_autograd", "sample_probes",
    "make_schedule", "ScheduleLR", "LinearDecayLR", "CosineLR", "StepDecayLR",
]
