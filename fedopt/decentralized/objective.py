"""The nodes' losses: node i is the data set's client i, with its own training rows D_i.

    f_i(x) = (1/n_i) Σ_{r∈D_i} ℓ(h(x; a_r), b_r) + (λ/2)‖x‖²,     f(x) = (1/n) Σ_i f_i(x)

(ℓ the run's per-sample loss — cross-entropy for class labels, mse for float targets —, h the
model, λ = ``model.l2``; the global objective is the *mean* of the node losses,
decentralized.md §5). Parameters travel flat: a node's model is a float64 vector ``[P]``
(the model's parameters in ``named_parameters`` order), a stack of nodes ``[m, P]``.

* :meth:`NodeObjective.grads` — ``[m, P]`` ∇f_{i_k}(x_k) for per-node points (one batched
  forward/backward pass over the nodes' full rows, chunked to bound memory);
* :meth:`NodeObjective.value` — f(x) at one point (float);
* :meth:`NodeObjective.solve` — x* and f* by a centralized float64 Newton method with
  backtracking, for the built-in linear model (``logreg``: softmax or least-squares regression,
  convex; strongly convex when λ > 0 or the rows span the features); None for other models;
* :meth:`NodeObjective.smoothness` — per-node (L_i, μ_i) of the linear model:
  L_i = c·λ_max(Ã_iᵀÃ_i/n_i) + λ and μ_i = c'·λ_min(Ã_iᵀÃ_i/n_i) + λ, Ã_i the rows with a
  column of ones (the bias), c = ½ for cross-entropy (the softmax Jacobian diag(p) − ppᵀ has
  eigenvalues ≤ ½), c' = 0 there (no global lower curvature), and c = c' = 2/k for mse over k
  outputs (Hessian 2/k·I in the outputs). These are bounds of the Hessian over the whole space,
  which is what DADAO's constants need (§5: not the reference code's trace bound).

Everything is float64 on the run's device, whatever ``executor.dtype`` is.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: rows gathered at once when computing gradients (bounds the padded [m, width, ...] batch)
GRADIENT_ROWS = 1 << 20


class NodeObjective:
    """The n node losses of a :class:`~fedopt.data.FederatedDataset` under a model and a
    per-sample loss (see the module docstring). ``fmodel``: a
    :class:`~fedopt.engine.local.FunctionalModel`; ``loss_fn``: per-sample loss;
    ``names_shapes``: the parameters' (name, shape) in order; ``linear``: whether the model is
    the built-in ``logreg`` (enables :meth:`solve` and :meth:`smoothness`)."""

    def __init__(self, data: Any, fmodel: Any, loss_fn: Any, names_shapes: list[tuple[str, tuple]],
                 l2: float = 0.0, linear: bool = False, loss_name: str | None = None):
        self.x = data.x.to(torch.float64)
        self.y = data.y.to(torch.float64) if data.y.is_floating_point() else data.y
        self.offsets = data.offsets.cpu().numpy().astype(np.int64)
        self.counts = np.diff(self.offsets)
        if (self.counts == 0).any():
            i = int(np.flatnonzero(self.counts == 0)[0])
            raise ValueError(f"data: node {i} has no training rows; every node needs a loss")
        self.n = len(self.counts)
        self.fmodel, self.loss_fn = fmodel, loss_fn
        self.names_shapes = names_shapes
        self.sizes = [math.prod(s) for _, s in names_shapes]
        self.dim = int(sum(self.sizes))
        self.l2 = float(l2)
        self.linear = linear
        self.loss_name = loss_name
        self.device = self.x.device
        #: bool ``[n]``: the nodes whose rows this objective holds (None: all; see
        #: :meth:`restricted`)
        self.held: np.ndarray | None = None

    def restricted(self, nodes: np.ndarray) -> "NodeObjective":
        """A copy holding only ``nodes``' rows (a node actor's own nodes): x, y keep those
        rows, copied, and ``offsets`` are remapped so that every other node has zero rows,

            offsets'[i+1] − offsets'[i] = n_i · [i ∈ nodes],

        so :meth:`grads` / :meth:`losses` of held nodes are bit for bit the full objective's
        (the same rows, gathered the same way). Asking for any other node raises ValueError;
        :meth:`value`, :meth:`solve` and the other whole-objective quantities need every node."""
        keep = np.zeros(self.n, dtype=bool)
        keep[np.asarray(nodes, dtype=np.int64)] = True
        rows = np.concatenate([np.zeros(0, dtype=np.int64)] +
                              [np.arange(self.offsets[i], self.offsets[i + 1])
                               for i in np.flatnonzero(keep)])
        idx = torch.as_tensor(rows, device=self.device)
        out = copy.copy(self)
        out.x, out.y = self.x[idx], self.y[idx]
        out.counts = np.where(keep, self.counts, 0)
        out.offsets = np.concatenate([[0], np.cumsum(out.counts)]).astype(np.int64)
        out.held = keep
        return out

    # -- flat <-> params ---------------------------------------------------------------------
    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``[m, P]`` -> ``{name: [m, *shape]}`` (views)."""
        out, lo = {}, 0
        for (name, shape), size in zip(self.names_shapes, self.sizes):
            out[name] = flat[:, lo:lo + size].reshape((flat.shape[0],) + tuple(shape))
            lo += size
        return out

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """``{name: [*shape]}`` -> float64 ``[P]``."""
        return torch.cat([params[name].reshape(-1).to(torch.float64)
                          for name, _ in self.names_shapes])

    # -- oracles -----------------------------------------------------------------------------
    def _rows(self, nodes: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        if self.held is not None and not self.held[nodes].all():
            missing = np.asarray(nodes)[~self.held[nodes]]
            raise ValueError(f"nodes {missing.tolist()}: their rows are not held here (an "
                             f"objective restricted to {int(self.held.sum())} nodes)")
        cn = self.counts[nodes]
        width = int(cn.max())
        pos = np.arange(width)[None, :]
        rows = self.offsets[nodes][:, None] + np.minimum(pos, cn[:, None] - 1)
        rt = torch.as_tensor(rows, device=self.device).flatten()
        xb = self.x.index_select(0, rt).view(rows.shape + tuple(self.x.shape[1:]))
        yb = self.y.index_select(0, rt).view(rows.shape + tuple(self.y.shape[1:]))
        wn = torch.as_tensor((pos < cn[:, None]) / cn[:, None], dtype=torch.float64,
                             device=self.device)
        return xb, yb, wn

    def _losses(self, flat: Tensor, nodes: np.ndarray) -> Tensor:
        xb, yb, wn = self._rows(nodes)
        out = self.fmodel.batched_forward(self.unflatten(flat), xb)
        per = self.loss_fn(out.flatten(0, 1), yb.flatten(0, 1)).view_as(wn)
        return (per * wn).sum(1) + 0.5 * self.l2 * flat.pow(2).sum(1)

    def grads(self, flat: Tensor, nodes: np.ndarray) -> Tensor:
        """float64 ``[m, P]``: ∇f_{nodes[k]}(flat[k]) (full local gradients, l2 included)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        if len(nodes) == 0:
            return flat.new_zeros((0, self.dim))
        chunk = max(1, GRADIENT_ROWS // max(int(self.counts[nodes].max()), 1))
        parts = []
        for lo in range(0, len(nodes), chunk):
            with torch.enable_grad():
                leaf = flat[lo:lo + chunk].detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._losses(leaf, nodes[lo:lo + chunk]).sum(), leaf)
            parts.append(g)
        return torch.cat(parts)

    def losses(self, flat: Tensor, nodes: np.ndarray) -> Tensor:
        """float64 ``[m]``: f_{nodes[k]}(flat[k])."""
        nodes = np.asarray(nodes, dtype=np.int64)
        chunk = max(1, GRADIENT_ROWS // max(int(self.counts.max()), 1))
        with torch.no_grad():
            return torch.cat([self._losses(flat[lo:lo + chunk], nodes[lo:lo + chunk])
                              for lo in range(0, len(nodes), chunk)])

    def value(self, x: Tensor) -> float:
        """f(x) = (1/n) Σ_i f_i(x) at one point ``x`` ``[P]``."""
        nodes = np.arange(self.n)
        return float(self.losses(x.unsqueeze(0).expand(self.n, -1), nodes).mean())

    def mean_grad(self, x: Tensor) -> Tensor:
        """∇f(x) = (1/n) Σ_i ∇f_i(x), ``[P]``."""
        return self.grads(x.unsqueeze(0).expand(self.n, -1).contiguous(),
                          np.arange(self.n)).mean(0)

    # -- the centralized reference -----------------------------------------------------------
    def solve(self, x0: Tensor, tol: float = 1e-13, max_iter: int = 100
              ) -> tuple[Tensor, float] | None:
        """(x*, f*) by Newton's method with backtracking (float64), from ``x0``; None unless the
        model is the built-in linear one (cross-entropy or mse) with at most 5,000 parameters.
        The Hessian is the closed form of :meth:`hessian`."""
        if not self.linear or self.dim > 5000 or self.loss_name not in ("cross_entropy", "mse"):
            return None
        x = x0.to(torch.float64).clone()
        fx = self.value(x)
        for _ in range(max_iter):
            g = self.mean_grad(x)
            if float(g.norm()) <= tol * max(1.0, abs(fx)):
                break
            step = torch.linalg.solve(self.hessian(x), g)
            t = 1.0
            while True:
                xn = x - t * step
                fn = self.value(xn)
                if fn <= fx - 1e-4 * t * float(g @ step) or t < 1e-10:
                    break
                t *= 0.5
            if fn >= fx and t < 1e-10:
                break
            x, fx = xn, fn
        return x, fx

    def hessian(self, x: Tensor) -> Tensor:
        """∇²f(x) ``[P, P]`` of the linear model ``o = W a + b`` (flat ``[vec(W), b]``,
        W row-major ``[k, d]``): Σ_r w_r (H_ℓ(o_r) ⊗ ã_r ã_rᵀ) + λI with ã_r = [a_r; 1],
        w_r = 1/(n n_i) for a row of node i, and H_ℓ = diag(p_r) − p_r p_rᵀ (softmax
        cross-entropy, p_r = softmax(o_r)) or (2/k)·I (mse over k outputs)."""
        k = self.sizes[-1]
        d = self.dim // k - 1
        a = self.x.reshape(self.x.shape[0], -1)
        at = torch.cat([a, torch.ones_like(a[:, :1])], 1)                    # [N, d+1]
        node = np.repeat(np.arange(self.n), self.counts)
        w = torch.as_tensor(1.0 / (self.n * self.counts[node]), dtype=torch.float64,
                            device=self.device)
        wmat, b = x[:k * d].reshape(k, d), x[k * d:]
        o = a @ wmat.T + b
        hq = torch.zeros(k, d + 1, k, d + 1, dtype=torch.float64, device=self.device)
        if self.loss_name == "mse":
            g = (at * w[:, None]).T @ at
            for c in range(k):
                hq[c, :, c, :] = (2.0 / k) * g
        else:
            p = torch.softmax(o, 1)
            for c in range(k):        # Σ_r w_r p_rc ã_r ã_rᵀ on the diagonal blocks
                hq[c, :, c, :] = (at * (w * p[:, c])[:, None]).T @ at
        hq = hq.reshape(k * (d + 1), k * (d + 1))
        if self.loss_name != "mse":   # − Σ_r w_r (p_r ⊗ ã_r)(p_r ⊗ ã_r)ᵀ
            v = (p[:, :, None] * at[:, None, :]).reshape(len(w), -1) * w.sqrt()[:, None]
            hq = hq - v.T @ v
        # flat index of Θ = [W | b] entries: W[c, j] -> c·d + j, b[c] -> k·d + c
        c_idx = torch.arange(k).repeat_interleave(d + 1)
        j_idx = torch.arange(d + 1).repeat(k)
        perm = torch.where(j_idx < d, c_idx * d + j_idx, k * d + c_idx).to(self.device)
        h = torch.empty_like(hq)
        h[perm[:, None], perm[None, :]] = hq
        return h + self.l2 * torch.eye(self.dim, dtype=torch.float64, device=self.device)

    def smoothness(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-node (L_i, μ_i) float64 ``[n]`` of the linear model (module docstring)."""
        if not self.linear:
            raise ValueError("smoothness constants are known only for the built-in linear model")
        k = self.sizes[-1]   # outputs (the bias's length)
        if self.loss_name == "mse":
            c_hi = c_lo = 2.0 / k
        elif self.loss_name == "cross_entropy":
            c_hi, c_lo = 0.5, 0.0
        else:
            raise ValueError(f"smoothness constants are known for cross_entropy and mse, not "
                             f"{self.loss_name!r}")
        big, small = np.empty(self.n), np.empty(self.n)
        for i in range(self.n):
            a = self.x[self.offsets[i]:self.offsets[i + 1]].reshape(int(self.counts[i]), -1)
            a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
            ev = torch.linalg.eigvalsh(a.T @ a / a.shape[0])
            big[i] = c_hi * float(ev[-1]) + self.l2
            small[i] = c_lo * max(float(ev[0]), 0.0) + self.l2
        return big, small
