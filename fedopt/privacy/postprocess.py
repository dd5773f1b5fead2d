"""Clipping and keyed Gaussian noise for client updates, and the server's noise on the aggregate.

Client side, :class:`~fedopt.engine.program.UpdatePostprocessor` s that chain in a
:class:`~fedopt.engine.program.LocalProgram` (``postprocess=(clip, noise)``: P = noise ∘ clip)
and act on the stacked updates Δ [C, ...] wherever the clients run (in-process or on Ray
workers; they are plain frozen dataclasses and pickle):

* flat clipping is :class:`~fedopt.engine.program.ClipUpdateNorm` (one global L2 norm per
  client, Δ_i ← Δ_i·min(1, C/‖Δ_i‖));
* :class:`ClipPerLayer`: each of the L tensors ("layers") clipped to C_l = C/√L, so
  ‖Δ_i‖ ≤ (Σ_l C_l²)^½ = C (McMahan et al., ICLR 2018, per-layer clipping, equal split);
* :class:`GaussianUpdateNoise`: client i adds ν_i ~ N(0, σ² I) (local / distributed DP), drawn
  from (seed, key_i, client_i) — the round for synchronous algorithms.

Server side, :func:`central_noise`: ν ~ N(0, σ² I) added to the aggregate, drawn from
(seed, round). All draws are :func:`fedopt.rng.keyed_normal` (float64, Box–Muller on SplitMix64
bits), the same bits on every host and executor, cast to the parameters' dtype and device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedopt.engine.program import UpdateInfo
from fedopt.rng import STREAM_DP_CENTRAL, STREAM_DP_CLIENT, keyed_normal

Params = dict[str, Tensor]


def keyed_gaussian(seed: int, stream: int, keys: np.ndarray, client_ids: np.ndarray,
                   like: Params) -> Params:
    """Standard normal draws stacked like ``like`` ([C, *shape] per name, its dtype/device):
    row c's element k of tensor j (in ``like``'s order) is keyed by
    (seed, stream, keys[c], client_ids[c], j, k). ``keys``/``client_ids``: int64 [C]."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 1)
    ids = np.asarray(client_ids, dtype=np.int64).reshape(-1, 1)
    out = {}
    for j, (name, v) in enumerate(like.items()):
        size = int(np.prod(v.shape[1:], dtype=np.int64))
        z = keyed_normal(seed, stream, keys, ids, j, np.arange(size, dtype=np.int64)[None, :])
        out[name] = torch.from_numpy(z).to(dtype=v.dtype, device=v.device).view(v.shape)
    return out


def _per_row_keys(info: UpdateInfo, count: int) -> np.ndarray:
    keys = np.asarray(info.keys, dtype=np.int64)
    return np.full(count, int(keys)) if keys.ndim == 0 else keys


def _check_positive(value: float, field: str) -> None:
    if not (value > 0) or math.isinf(value):
        raise ValueError(f"{field}: must be finite and > 0, got {value!r}")


@dataclass(frozen=True)
class ClipPerLayer:
    """Per-client, per-tensor L2 clipping Δ_{i,l} ← Δ_{i,l}·min(1, C_l/‖Δ_{i,l}‖) with
    C_l = ``max_norm``/√L over the L tensors of the update, so ‖Δ_i‖ ≤ ``max_norm``."""

    max_norm: float

    def __post_init__(self) -> None:
        _check_positive(self.max_norm, "max_norm")

    def apply(self, delta: Params, info: UpdateInfo) -> Params:
        bound = self.max_norm / math.sqrt(len(delta))
        out = {}
        for name, v in delta.items():
            norm = v.flatten(1).norm(dim=1)
            scale = (bound / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)
            out[name] = scale.view((-1,) + (1,) * (v.ndim - 1)) * v
        return out


@dataclass(frozen=True)
class GaussianUpdateNoise:
    """Each client adds its own Gaussian noise to its update: Δ_i ← Δ_i + σ ν_i,
    ν_i ~ N(0, I) keyed by (seed, key_i, client_i) (:func:`keyed_gaussian`); σ = ``std`` ≥ 0
    (0: the update unchanged, the same tensors)."""

    std: float

    def __post_init__(self) -> None:
        if not (self.std >= 0) or math.isinf(self.std):
            raise ValueError(f"std: must be finite and >= 0, got {self.std!r}")

    def apply(self, delta: Params, info: UpdateInfo) -> Params:
        if self.std == 0:
            return delta
        count = next(iter(delta.values())).shape[0]
        nu = keyed_gaussian(info.seed, STREAM_DP_CLIENT, _per_row_keys(info, count),
                            info.client_ids, delta)
        return {k: v + self.std * nu[k] for k, v in delta.items()}


def central_noise(aggregate: Params, std: float, seed: int, round_idx: int) -> Params:
    """The server's release Δ + σ ν, ν ~ N(0, I) keyed by (seed, round) (shapes, dtype and
    device of ``aggregate``, unstacked); σ = ``std`` ≥ 0 (0: ``aggregate`` itself)."""
    if not (std >= 0) or math.isinf(std):
        raise ValueError(f"std: must be finite and >= 0, got {std!r}")
    if std == 0:
        return aggregate
    stacked = {k: v.unsqueeze(0) for k, v in aggregate.items()}
    nu = keyed_gaussian(seed, STREAM_DP_CENTRAL, np.array([round_idx]), np.array([-1]), stacked)
    return {k: v + std * nu[k][0] for k, v in aggregate.items()}
