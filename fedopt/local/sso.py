r"""SSO, stochastic surrogate optimization with target-based surrogates (Lavington, Vaswani,
Babanezhad, Schmidt & Le Roux, ICML 2023, arXiv 2302.02607), in the normalization of
``seed_extras.md`` §3.2 where m = 1 is exactly SGD.

Outer step t on the batch B_t (weights w_i, Σ_i w_i = 1 over its real rows): the targets are
queried once,

    z_t = f(θ_t; X_B) (detached),   G_t,i = ∂ℓ_i/∂z at z_t,i,   z̃_t = z_t − η G_t

and m inner steps of any optimizer minimize the surrogate

    g_t(ω) = Σ_i w_i [ ℓ_i(z_t,i) + ⟨G_t,i, f(ω; x_i) − z_t,i⟩ + (1/(2η)) ‖f(ω; x_i) − z_t,i‖² ]
           = (1/(2η)) Σ_i w_i ‖f(ω; x_i) − z̃_t,i‖² + const,

from ω₀ = θ_t (the inner optimizer's state re-initialised each outer step, as the authors'
code does); θ_{t+1} = ω_m. Its gradient is J_f(ω)ᵀ r with the residual
r_i = w_i G_t,i + w_i (f(ω; x_i) − z_t,i)/η; at ω = θ_t the second term is exactly 0, so the first
inner step is the plain SGD step bit for bit. η ≤ 1/L_z (L_z the smoothness of ℓ_i in z: 1/2 for
softmax cross-entropy, 1/4 for the logistic loss) makes g_t majorize the batch loss.

:func:`sso_step` is batched over C clients (the engine's local step); :class:`SSO` is the
plain-PyTorch optimizer wrapper.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
#: forward(params stacked [C, ...], x [C, W, ...]) -> outputs [C, W, k]
Forward = Callable[[Params, Tensor], Tensor]
#: per-client loss of outputs: (outputs [C, W, k]) -> [C]
ClientLoss = Callable[[Tensor], Tensor]


def targets(z: Tensor, client_loss: ClientLoss) -> tuple[Tensor, Tensor]:
    """(Σ_i w_i-weighted target gradients w_i·G_t,i = ∂(Σ_c L_c)/∂z at z, per-client loss [C])."""
    with torch.enable_grad():
        zl = z.detach().requires_grad_(True)
        loss = client_loss(zl)
        (gw,) = torch.autograd.grad(loss.sum(), zl)
    return gw, loss.detach()


def surrogate_value(f: Tensor, z: Tensor, gw: Tensor, w: Tensor, loss: Tensor, eta: float
                    ) -> Tensor:
    """g_t(ω) [C] from outputs f = f(ω; X_B) [C, W, k] (``gw`` = w·G, ``w`` [C, W], ``loss``
    the per-client batch loss at z): Σ_i [w_i ℓ_i(z_i) + ⟨w_i G_i, f_i − z_i⟩ + w_i‖f_i − z_i‖²/(2η)]."""
    d = f - z
    return loss + (gw * d).flatten(1).sum(1) + (w[..., None] * d.pow(2)).flatten(1).sum(1) / (2 * eta)


def sso_step(forward: Forward, client_loss: ClientLoss, y: Params, x: Tensor, w: Tensor,
             inner, inner_steps: int, eta: float,
             extra: Callable[[Params, Params], Params] | None = None
             ) -> tuple[Params, Tensor]:
    """One outer SSO step for C stacked clients: returns (θ_{t+1}, per-client loss at θ_t [C]).

    ``inner``: a :class:`~fedopt.optim.core.FunctionalOptimizer` (fresh state per outer step);
    ``extra(ω, grads) -> grads``: additive terms of the local program (FedProx's μ(ω − y₀), a
    drift correction) added to every inner gradient; ``w`` [C, W] the rows' weights."""
    if inner_steps < 1:
        raise ValueError(f"inner_steps: must be >= 1, got {inner_steps!r}")
    C = w.shape[0]
    state = inner.init(y, batch_shape=(C,))
    omega, z, gw, loss = y, None, None, None
    for j in range(inner_steps):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_(True) for k, v in omega.items()}
            f = forward(leaves, x)
            if z is None:
                z = f.detach()
                gw, loss = targets(z, client_loss)
            r = gw + (w[..., None] * (f.detach() - z)) / eta
            grads = dict(zip(leaves, torch.autograd.grad(f, list(leaves.values()),
                                                         grad_outputs=r)))
        if extra is not None:
            grads = extra(omega, grads)
        omega, state = inner.update(omega, grads, state)
    return omega, loss


class SSO:
    """Plain-PyTorch SSO: ``step(x, y)`` runs one outer step of ``model`` on the batch (x, y)
    with ``inner_steps`` steps of a fresh ``make_inner(params)`` torch optimizer on the
    surrogate. ``loss_fn(outputs, targets) -> per-sample [N]``; returns the batch loss at θ_t.

    Example: ``SSO(model, F.cross_entropy-per-sample, lambda p: torch.optim.SGD(p, lr=0.1),
    inner_steps=10, eta=2.0).step(x, y)``; with inner SGD and ``inner_steps=1`` this is one
    SGD step on the mean batch loss."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 make_inner: Callable, inner_steps: int, eta: float):
        if not int(inner_steps) >= 1:
            raise ValueError(f"inner_steps: must be >= 1, got {inner_steps!r}")
        if not 0 < eta < float("inf"):
            raise ValueError(f"eta: must be a finite number > 0, got {eta!r}")
        self.model, self.loss_fn, self.make_inner = model, loss_fn, make_inner
        self.inner_steps, self.eta = int(inner_steps), float(eta)

    def step(self, x: Tensor, y: Tensor) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = self.make_inner(params)
        n = x.shape[0]
        z = None
        for _ in range(self.inner_steps):
            opt.zero_grad()
            f = self.model(x)
            if z is None:
                z = f.detach()
                zl = z.clone().requires_grad_(True)
                loss = self.loss_fn(zl, y).mean()
                (gw,) = torch.autograd.grad(loss, zl)
            r = gw + (f.detach() - z) / (n * self.eta)
            f.backward(r)
            opt.step()
        return float(loss.detach())
