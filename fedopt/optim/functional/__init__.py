"""Functional (pure, batchable) optimizers: ``init``/``update`` over dicts of tensors.

The class names mirror the ``torch.optim``-style adapters of :mod:`fedopt.optim`; use them as
``from fedopt.optim import functional as F; opt = F.Adam(lr=1e-3)`` or via
:func:`fedopt.optim.make`.
"""
from fedopt.optim.functional.adabelief import AdaBelief
from fedopt.optim.functional.adahessian import AdaHessian
from fedopt.optim.functional.adam import Adam, AdamW
from fedopt.optim.functional.adagrad_norm import AdagradNorm
from fedopt.optim.functional.adaptive import Adagrad, AdamTau, Yogi
from fedopt.optim.functional.adan import Adan
from fedopt.optim.functional.diffgrad import DiffGrad
from fedopt.optim.functional.exadam import EXAdam
from fedopt.optim.functional.lion import Lion
from fedopt.optim.functional.mfac import MFAC
from fedopt.optim.functional.sgd import SGD
from fedopt.optim.functional.sophia import Sophia

__all__ = ["SGD", "Adam", "AdamW", "DiffGrad", "AdaBelief", "Adan", "Lion", "EXAdam", "Sophia",
           "AdaHessian", "MFAC", "AdamTau", "Yogi", "Adagrad",
           "AdagradNorm"]
