"""Consensus-based optimization (CBO): N particles move using objective values only.

Pinnau, Totzeck, Tse & Martin (2017); Riedl, Klock, Geldhauser & Fornasier, "Gradient is All You
Need? How Consensus-Based Optimization can be Interpreted as a Stochastic Relaxation of Gradient
Descent" (arXiv 2306.09778); ``../shared/algorithms/seed_extras.md`` §4. With energies
E^i = f(X^i) of the particles X^1..X^N ∈ R^d:

    weights     w_i = exp(−α (E^i − min_j E^j))         (the Gibbs weights, log-sum-exp safe)
    consensus   v_α = Σ_i w_i X^i / Σ_i w_i
    step        X^i ← X^i − λ dt (X^i − v_α) + σ √dt D(X^i − v_α) ξ^i,   ξ^i ~ N(0, I_d)
                D(u) = ‖u‖₂ I  (isotropic)   |   D(u) = diag(|u|)  (anisotropic: u ⊙ ξ)

α → 0 gives the arithmetic mean, α → ∞ the best particle (Laplace principle). For a quadratic
f(y) = ½ yᵀAy − bᵀy and X^i ~ N(x, σ²I) the consensus point of the Gaussian is exactly the proximal
step prox_{τf}(x) = (τA + I)⁻¹(τb + x), τ = ασ² ("consensus hopping" is an implicit gradient
step); with N samples the error is O(1/√ESS), ESS = (Σw)²/Σw².

Shapes: particles [M, N, d] (M independent runs batched), energies [M, N], consensus [M, d].
The noise ξ is keyed by (seed, STREAM_CBO, step, run, particle, coordinate) through
:func:`fedopt.rng.keyed_normal`, or passed in (a test injects the same ξ into ``cbx``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from fedopt.rng import STREAM_CBO, keyed_normal

NOISES = ("isotropic", "anisotropic")


def consensus(x: Tensor, energy: Tensor, alpha: float) -> Tensor:
    """v_α [..., d] of particles x [..., N, d] with energies [..., N] (weights by a softmax of
    −α E, so energies of any size stay finite)."""
    if not alpha >= 0:
        raise ValueError(f"alpha: must be >= 0, got {alpha}")
    w = torch.softmax(-alpha * energy, dim=-1)
    return torch.einsum("...n,...nd->...d", w, x)


def effective_sample_size(energy: Tensor, alpha: float) -> Tensor:
    """ESS = (Σw)²/Σw² of the Gibbs weights [...]: N for α = 0, → 1 as α grows."""
    w = torch.softmax(-alpha * energy, dim=-1)
    return 1.0 / w.pow(2).sum(-1)


def cbo_step(x: Tensor, v: Tensor, xi: Tensor, *, lam: float, sigma: float, dt: float,
             noise: str = "isotropic") -> Tensor:
    """One Euler–Maruyama CBO step of particles x [..., N, d] toward v [..., d] with the
    standard normal draws xi [..., N, d] (module docstring)."""
    if noise not in NOISES:
        raise ValueError(f"noise: one of {NOISES}, got {noise!r}")
    u = x - v.unsqueeze(-2)
    if noise == "isotropic":
        diffusion = u.norm(dim=-1, keepdim=True) * xi
    else:
        diffusion = u * xi
    return x - lam * dt * u + sigma * math.sqrt(dt) * diffusion


def keyed_noise(seed: int, step: int, shape: tuple[int, int, int], dtype=torch.float64
                ) -> Tensor:
    """ξ [M, N, d] of step ``step``: a pure function of (seed, step, run, particle, coordinate)."""
    m, n, d = shape
    z = keyed_normal(seed, STREAM_CBO, int(step), np.arange(m)[:, None, None],
                     np.arange(n)[None, :, None], np.arange(d)[None, None, :])
    return torch.from_numpy(z).to(dtype)


@dataclass(frozen=True)
class CBO:
    """CBO on a batched objective ``f(x [M, N, d]) -> [M, N]``: :meth:`run` takes ``steps``
    steps from particles [M, N, d] and returns the final particles, the consensus points
    [M, d] and the function evaluations made (M·N per step: one per particle)."""

    alpha: float = 1.0
    lam: float = 1.0
    sigma: float = 1.0
    dt: float = 0.01
    noise: str = "isotropic"
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("alpha", "lam", "sigma", "dt"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"{k}: must be finite and >= 0, got {v!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise: one of {NOISES}, got {self.noise!r}")

    def step(self, f: Callable[[Tensor], Tensor], x: Tensor, k: int,
             xi: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(particles after step k, the consensus point they moved toward)."""
        v = consensus(x, f(x), self.alpha)
        if xi is None:
            xi = keyed_noise(self.seed, k, tuple(x.shape)).to(x)
        return cbo_step(x, v, xi, lam=self.lam, sigma=self.sigma, dt=self.dt,
                        noise=self.noise), v

    def run(self, f: Callable[[Tensor], Tensor], x: Tensor, steps: int
            ) -> tuple[Tensor, Tensor, int]:
        queries = 0
        for k in range(steps):
            x, _ = self.step(f, x, k)
            queries += x.shape[0] * x.shape[1]
        v = consensus(x, f(x), self.alpha)
        return x, v, queries + x.shape[0] * x.shape[1]


@dataclass(frozen=True)
class LossOnly:
    """A gradient oracle that only evaluates: G(y) = 0 and ℓ_i(y_i) by the trainer's
    ``batched_loss`` (no gradient). Clients running it with a zero step size return their
    minibatch losses at the points they were sent: how FedCBO's clients rate particles."""

    def gradient(self, ctx, y, batch):
        return {k: torch.zeros_like(v) for k, v in y.items()}, ctx.batched_loss(y, batch)
