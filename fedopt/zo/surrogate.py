"""FZooS's surrogates: the Gaussian-process gradient posterior of a client's black box, and the
random-Fourier-feature (RFF) surrogate whose coefficients clients exchange (Shu, Lin, Dai & Low,
"Federated Zeroth-Order Optimization using Trajectory-Informed Surrogate Gradients",
arXiv 2308.04077; ``../shared/algorithms/zeroth_order.md`` §3.3).

**GP gradient** (SE kernel k(x, x') = s² exp(−‖x − x'‖²/(2ℓ²)), nugget σ²): conditioned on
X [n, d], y [n], with K = k(X, X) + σ²I and α = K⁻¹y,

    ∇μ(x)   = Σ_n ∂k(x, x_n)/∂x · α_n,     ∂k(x, x_n)/∂x = −(x − x_n)/ℓ² · k(x, x_n)
    Cov∇(x) = (s²/ℓ²) I − G(x)ᵀ K⁻¹ G(x),  G(x)[n, :] = ∂k(x, x_n)/∂x

(Cholesky in float64). :func:`fit_lengthscale` picks ℓ by the marginal likelihood over a grid
(ML-II, as the authors' code does for its Matérn kernel with restarts; SE and a grid here).

**RFF surrogate** (shared Ω ∈ R^{d×M} with columns ω_m ~ N(0, ℓ⁻² I), b_m ~ U[0, 2π], drawn from
a shared seed so every party has the same features): φ(x) = √(2/M) cos(Ωᵀx + b),
φ(x)ᵀφ(x') → exp(−‖x − x'‖²/(2ℓ²)) as M grows (error O(1/√M)). A client fits
a = argmin ‖Φa − ỹ‖² + λ‖a‖² = Φᵀ(ΦΦᵀ + λI)⁻¹ỹ (the n×n dual form, n ≪ M) and its surrogate
gradient is ∇f̂(x) = J(x)ᵀa = −√(2/M) Σ_m a_m sin(ω_mᵀx + b_m) ω_m: linear in a, so the server's
Σ_i w_i ∇f̂_i = J(x)ᵀ(Σ_i w_i a_i) comes from averaged coefficients (M floats per client).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def se_kernel(a: Tensor, b: Tensor, lengthscale: float, amplitude: float = 1.0) -> Tensor:
    """k(a_i, b_j) = s² exp(−‖a_i − b_j‖²/(2ℓ²)): a [..., n, d], b [..., m, d] -> [..., n, m]."""
    d2 = (a.pow(2).sum(-1).unsqueeze(-1) + b.pow(2).sum(-1).unsqueeze(-2)
          - 2 * a @ b.transpose(-1, -2)).clamp_min(0)
    return amplitude * torch.exp(-0.5 * d2 / lengthscale ** 2)


@dataclass
class GPGradient:
    """An exact GP (SE kernel) conditioned on ``x`` [n, d], ``y`` [n]: :meth:`mean_grad` and
    :meth:`cov_trace` of the gradient posterior (module docstring)."""

    x: Tensor
    y: Tensor
    lengthscale: float
    amplitude: float = 1.0
    noise: float = 1e-6

    def __post_init__(self) -> None:
        k = se_kernel(self.x, self.x, self.lengthscale, self.amplitude)
        k = k + self.noise * torch.eye(len(self.x), dtype=k.dtype, device=k.device)
        self.chol = torch.linalg.cholesky(k)
        self.alpha = torch.cholesky_solve(self.y.unsqueeze(-1), self.chol).squeeze(-1)

    def mean_grad(self, pts: Tensor) -> Tensor:
        """∇μ(p) [P, d] for points p [P, d]: −(1/ℓ²)[(Σ_n k_n α_n) p − Σ_n k_n α_n x_n], with
        k_n = k(p, x_n) (no [P, n, d] temporaries)."""
        ka = se_kernel(pts, self.x, self.lengthscale, self.amplitude) * self.alpha   # [P, n]
        return -(ka.sum(1, keepdim=True) * pts - ka @ self.x) / self.lengthscale ** 2

    def cov_trace(self, pts: Tensor) -> Tensor:
        """tr Cov∇(p) [P] = d s²/ℓ² − tr(G(p)ᵀK⁻¹G(p)); expanding
        Σ_k (p − x_n)_k (p − x_m)_k = ‖p‖² − p·x_n − p·x_m + x_n·x_m gives
        tr(GᵀK⁻¹G) = ℓ⁻⁴ [‖p‖² kᵀK⁻¹k − 2 (k ⊙ Xp)ᵀK⁻¹k + kᵀ(K⁻¹ ⊙ XXᵀ)k]: O(P n²) work."""
        if not hasattr(self, "_kinv"):
            self._kinv = torch.cholesky_inverse(self.chol)
            self._kinv_gram = self._kinv * (self.x @ self.x.T)
        k = se_kernel(pts, self.x, self.lengthscale, self.amplitude)                # [P, n]
        a = k @ self._kinv
        xp = pts @ self.x.T
        quad = (pts.pow(2).sum(1) * (a * k).sum(1) - 2 * (a * k * xp).sum(1)
                + ((k @ self._kinv_gram) * k).sum(1)) / self.lengthscale ** 4
        return pts.shape[1] * self.amplitude / self.lengthscale ** 2 - quad


def log_marginal_likelihood(x: Tensor, y: Tensor, lengthscale: float, amplitude: float = 1.0,
                            noise: float = 1e-6) -> float:
    k = se_kernel(x, x, lengthscale, amplitude) + noise * torch.eye(len(x), dtype=x.dtype)
    chol = torch.linalg.cholesky_ex(k)
    if chol.info.item() != 0:
        return -math.inf
    alpha = torch.cholesky_solve(y.unsqueeze(-1), chol.L).squeeze(-1)
    return float(-0.5 * y @ alpha - torch.log(torch.diagonal(chol.L)).sum()
                 - 0.5 * len(y) * math.log(2 * math.pi))


def fit_lengthscale(x: Tensor, y: Tensor, noise: float = 1e-6, grid: int = 13) -> float:
    """ML-II lengthscale of an SE GP with unit amplitude on (x, y − mean y): the best of ``grid``
    values log-spaced over [median pairwise distance / 8, ×8]."""
    d = torch.cdist(x, x)
    med = float(d[d > 0].median()) if (d > 0).any() else 1.0
    yc = y - y.mean()
    best, best_ll = med, -math.inf
    for ls in torch.logspace(math.log10(med / 8), math.log10(med * 8), grid).tolist():
        ll = log_marginal_likelihood(x, yc, ls, 1.0, noise)
        if ll > best_ll:
            best, best_ll = ls, ll
    return best


@dataclass
class RandomFeatures:
    """Shared RFF map of an SE kernel of lengthscale ℓ: Ω [d, M], b [M] from ``seed``."""

    d: int
    m: int
    lengthscale: float = 1.0
    seed: int = 0
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(int(self.seed))
        self.omega = torch.randn(self.d, self.m, generator=g, dtype=self.dtype) / self.lengthscale
        self.b = 2 * math.pi * torch.rand(self.m, generator=g, dtype=self.dtype)

    def features(self, x: Tensor) -> Tensor:
        """φ(x) [..., M] for x [..., d]."""
        return math.sqrt(2.0 / self.m) * torch.cos(x @ self.omega + self.b)

    def grad(self, x: Tensor, a: Tensor) -> Tensor:
        """J(x)ᵀa [..., d] = −√(2/M) Σ_m a_m sin(ω_mᵀx + b_m) ω_m for x [..., d], a [..., M]."""
        s = -math.sqrt(2.0 / self.m) * torch.sin(x @ self.omega + self.b) * a
        return s @ self.omega.T

    def fit(self, x: Tensor, y: Tensor, ridge: float = 1e-6) -> Tensor:
        """a [M] = Φᵀ(ΦΦᵀ + λI)⁻¹y (ridge λ > 0; the minimum-norm solution as λ → 0)."""
        phi = self.features(x)
        k = phi @ phi.T + ridge * torch.eye(len(x), dtype=phi.dtype)
        return phi.T @ torch.linalg.solve(k, y)
