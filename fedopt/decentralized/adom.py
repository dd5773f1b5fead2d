"""ADOM+ (Kovalev, Shulgin, Richtárik, Rogozin & Gasnikov 2021), the accelerated primal
synchronous baseline of DADAO's comparison, as in AdelNabli/DADAO@eed1ed1 (decentralized.md
§2.3). All variables are ``[n, P]`` float64: x, y, z, m and the companions x_f, y_f, z_f.

Gossip matrix W_g = Lap/λ_max(Lap), mixing Wmix = I − W_g, χ = λ_max(Lap)/λ₂(Lap); with
``multi_consensus`` Wmix = (I − W_g)^Q, Q = ⌈χ ln 2⌉, and χ is then 2 in the constants.
With ν = μ/2: τ₂ = √(μ/L), τ₁ = 1/(√(L/μ) + ½), σ₂ = τ₂/(16χ), σ₁ = 1/(1/σ₂ + ½), η = 1/(Lτ₂),
α = ν, β = 1/(2L), δ = 1/(17L), γ = ν/(14σ₂χ²), θ = ν/(4σ₂), ζ = ½. One round (one per time unit:
every node one gradient):

1. x_g = τ₁x + (1 − τ₁)x_f;  G_i = ∇f_i(x_g,i);
2. y_g = σ₁y + (1 − σ₁)y_f,  z_g = σ₁z + (1 − σ₁)z_f;
3. c₅ = 1/(1 + ηα), c₁ = (1 + ηα)/((1 + θβ)(1 + ηα) + θη), c₂ = θβ + ηθc₅,
   c₃ = θ(βν + η(ν + α)c₅), c₄ = θc₅;
4. y⁺ = c₁(y + c₂G − c₃x_g − c₄x − (θ/ν)(y_g + z_g));
5. x⁺ = c₅(x + ηαx_g − η(G − νx_g − y⁺));
6. u = (γ/ν)(y_g + z_g) + m;  z⁺ = z + γδ(z_g − z) − (I − Wmix)u;  m⁺ = Wmix u;
7. x_f = x_g + τ₂(x⁺ − x),  y_f = y_g + σ₂(y⁺ − y),  z_f = z_g − ζ(I − Wmix)(y_g + z_g);
8. x, y, z, m ← x⁺, y⁺, z⁺, m⁺.

Communications per round: |E| (Q|E| with multi-consensus), the reference code's count — the two
vectors a round mixes travel in one message per edge and gossip step. y and m start at 0 (the
reference code draws them at random; any start converges).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedopt.decentralized.engine import NodeAlgorithm, bind_smoothness
from fedopt.decentralized.graphs import Graph, laplacian, positive_spectrum
from fedopt.schema import ConfigError


class AdomPlus(NodeAlgorithm):
    """ADOM+ (module docstring); ``L``/``mu`` override the data's constants."""

    uses_stream = False

    def __init__(self, graph: Graph, time_budget: float, *, multi_consensus: bool = False,
                 L: float | None = None, mu: float | None = None, **kw):
        super().__init__(graph, time_budget, **kw)
        lap = laplacian(graph)
        lam2, lam_max = positive_spectrum(lap)
        self.chi = lam_max / lam2
        self.q = math.ceil(self.chi * math.log(2)) if multi_consensus else 1
        if multi_consensus:
            self.chi = 2.0
        self.w_g = lap / lam_max
        self._w: Tensor | None = None
        self._L, self._mu = L, mu
        if L is not None and mu is not None:
            self._set_constants(L, mu)

    def _set_constants(self, L: float, mu: float) -> None:
        if not mu > 0:
            raise ConfigError(f"model.l2: ADOM+ needs a strongly convex problem (μ > 0), got "
                              f"μ = {mu:g}; set model.l2 > 0 (or algorithm.mu)")
        nu = mu / 2
        tau2 = math.sqrt(mu / L)
        sigma2 = tau2 / (16 * self.chi)
        eta, alpha, beta = 1 / (L * tau2), nu, 1 / (2 * L)
        theta = nu / (4 * sigma2)
        c5 = 1 / (1 + eta * alpha)
        self.k = {
            "nu": nu, "tau1": 1 / (math.sqrt(L / mu) + 0.5), "tau2": tau2, "sigma2": sigma2,
            "sigma1": 1 / (1 / sigma2 + 0.5), "eta": eta, "alpha": alpha, "beta": beta,
            "delta": 1 / (17 * L), "gamma": nu / (14 * sigma2 * self.chi ** 2), "theta": theta,
            "zeta": 0.5, "c5": c5,
            "c1": (1 + eta * alpha) / ((1 + theta * beta) * (1 + eta * alpha) + theta * eta),
            "c2": theta * beta + eta * theta * c5,
            "c3": theta * (beta * nu + eta * (nu + alpha) * c5), "c4": theta * c5}

    def on_bind(self) -> None:
        bind_smoothness(self)

    def init_nodes(self, x: Tensor) -> dict[str, Tensor]:
        zero = torch.zeros_like(x)
        return {"x": x, "xf": x.clone(), "y": zero.clone(), "yf": zero.clone(),
                "z": zero.clone(), "zf": zero.clone(), "m": zero.clone()}

    def _gossip(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(Wmix v, (I − Wmix) v)."""
        if self._w is None or self._w.device != v.device:
            self._w = torch.as_tensor(self.w_g, dtype=torch.float64, device=v.device)
        out = v
        for _ in range(self.q):
            out = out - self._w @ out
        return out, v - out

    def advance(self, nodes, events, t0: float, t1: float):
        rounds = int(math.floor(t1 + 1e-9)) - int(math.floor(t0 + 1e-9))
        k = self.k
        everyone = np.arange(self.n)
        for _ in range(rounds):
            x, y, z, m = nodes["x"], nodes["y"], nodes["z"], nodes["m"]
            xg = k["tau1"] * x + (1 - k["tau1"]) * nodes["xf"]
            g = self.objective.grads(xg, everyone)
            yg = k["sigma1"] * y + (1 - k["sigma1"]) * nodes["yf"]
            zg = k["sigma1"] * z + (1 - k["sigma1"]) * nodes["zf"]
            yp = k["c1"] * (y + k["c2"] * g - k["c3"] * xg - k["c4"] * x
                            - (k["theta"] / k["nu"]) * (yg + zg))
            xp = k["c5"] * (x + k["eta"] * k["alpha"] * xg - k["eta"] * (g - k["nu"] * xg - yp))
            u = (k["gamma"] / k["nu"]) * (yg + zg) + m
            mix_u, lap_u = self._gossip(u)
            zp = z + k["gamma"] * k["delta"] * (zg - z) - lap_u
            nodes["xf"] = xg + k["tau2"] * (xp - x)
            nodes["yf"] = yg + k["sigma2"] * (yp - y)
            nodes["zf"] = zg - k["zeta"] * self._gossip(yg + zg)[1]
            nodes["x"], nodes["y"], nodes["z"], nodes["m"] = xp, yp, zp, mix_u
        return np.tile(everyone, rounds), rounds * self.q * self.graph.num_edges
