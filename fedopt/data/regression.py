"""A synthetic federated regression data set: a linear model plus noise per client.

Client k (k = 0..K−1) holds r rows (``samples_per_client``) with features x ~ N(0, I_d) and
targets

    t = W_kᵀ x + b_k + σ ε,   W_k = W + h U_k,   b_k = h c_k,   ε ~ N(0, I_p)

with a shared W [d, p] ~ N(0, 1/d), client perturbations U_k [d, p] ~ N(0, 1/d) and c_k ~ N(0, 1)
(``heterogeneity`` h ≥ 0: h = 0 is one model for every client), noise σ = ``noise``. Each
client's rows are split ``test_fraction`` to test (per client, as for every data set). Targets
are float32, ``[n]`` when p = ``num_targets`` = 1, else ``[n, p]``; ``num_classes`` (the model's
output width) is p. Everything is keyed by the seed (independent streams for the model, the
rows and the split). The least-squares objective of a linear model on it has a closed form,
which makes it the test problem of the regression path (mse loss) and of the families that
need least squares (zeroth-order, decentralized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedopt.data.assemble import assemble
from fedopt.data.checks import TestFraction, seed_streams
from fedopt.data.dataset import FederatedDataset
from fedopt.memory import available_memory_bytes
from fedopt.schema import ConfigError, NonNegativeFloat, PositiveInt, Schema, parse


class RegressionData(Schema):
    """``data: {name: regression, ...}``: per-client linear models plus noise (module
    docstring)."""

    what = "data set 'regression'"
    name: Literal["regression"] = "regression"
    num_clients: PositiveInt = 20
    num_features: PositiveInt = Field(10, description="d, the feature width")
    num_targets: PositiveInt = Field(1, description="p, the target width (1: targets [n])")
    samples_per_client: PositiveInt = Field(50, description="rows per client before the split")
    heterogeneity: NonNegativeFloat = Field(0.5, description="h: W_k = W + h U_k, b_k = h c_k")
    noise: NonNegativeFloat = Field(0.1, description="σ, the target noise's standard deviation")
    test_fraction: TestFraction = 0.2


@dataclass(frozen=True)
class RegressionModel:
    """The generating parameters: ``W [K, d, p]`` and ``b [K, p]`` (float64)."""

    W: np.ndarray
    b: np.ndarray


def check_regression_memory(k: RegressionData) -> None:
    """ConfigError naming ``data.num_clients`` when building the set would need more than the
    free memory: per client W_k, b_k (float64) and per row its features (float32, plus the
    float64 copy the targets are computed from), targets (float64 while drawn, then float32)."""
    d, p = k.num_features, k.num_targets
    rows = float(k.num_clients) * k.samples_per_client
    need = k.num_clients * (16.0 * d * p + 8.0 * p) + rows * (16.0 * d + 28.0 * p + 16.0)
    free = available_memory_bytes(torch.device("cpu"))
    if need > free:
        raise ConfigError(f"data.num_clients: {k.num_clients} clients of "
                          f"{k.samples_per_client} rows (data.samples_per_client) with {d} "
                          f"features and {p} targets need about {need / 2**30:.1f} GiB, more "
                          f"than the {free / 2**30:.1f} GiB of free memory")


def regression_with_model(seed: int, **keys) -> tuple[FederatedDataset, RegressionModel]:
    """The data set and the models that generated it; keys as in :class:`RegressionData`
    (ConfigError naming ``data.<key>`` for a bad one, or ``data.num_clients`` when it would not
    fit in memory)."""
    k = parse(RegressionData, {"name": "regression", **keys}, "data")
    check_regression_memory(k)
    n_cl, d, p, r = k.num_clients, k.num_features, k.num_targets, k.samples_per_client
    rng_model, rng_x, rng_split = seed_streams(seed, 3)
    w = rng_model.normal(0.0, d ** -0.5, size=(d, p))
    W = w + k.heterogeneity * rng_model.normal(0.0, d ** -0.5, size=(n_cl, d, p))
    b = k.heterogeneity * rng_model.normal(0.0, 1.0, size=(n_cl, p))
    x = rng_x.standard_normal((n_cl, r, d)).astype(np.float32)
    t = np.einsum("krd,kdp->krp", x.astype(np.float64), W) + b[:, None, :]
    t += k.noise * rng_x.standard_normal(t.shape)
    y = t.reshape(n_cl * r, p).astype(np.float32)
    client = np.repeat(np.arange(n_cl, dtype=np.int64), r)
    data = assemble(x.reshape(n_cl * r, d), y[:, 0] if p == 1 else y, client, n_cl,
                    num_classes=p, name=f"regression(h={k.heterogeneity:g},σ={k.noise:g})",
                    test_fraction=k.test_fraction, rng=rng_split)
    return data, RegressionModel(W=W, b=b)


def build_regression(seed: int, **keys) -> FederatedDataset:
    """The synthetic regression data set (keys as in :class:`RegressionData`)."""
    return regression_with_model(seed, **keys)[0]
