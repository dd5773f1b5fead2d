"""Zeroth-order and gradient-free optimization: estimators as gradient oracles of the local
program (:mod:`fedopt.zo.estimators`), black-box objectives (:mod:`fedopt.zo.objectives`) and
consensus-based optimization (:mod:`fedopt.zo.cbo`). The algorithms (FedZO, FedCBO) live in
:mod:`fedopt.algorithms` like every other family."""
from fedopt.zo.estimators import (ESTIMATORS, EstimatorConfig, ZerothOrder, directions,
                                  estimate, reconstruct)

__all__ = ["ESTIMATORS", "EstimatorConfig", "ZerothOrder", "directions", "estimate",
           "reconstruct"]
