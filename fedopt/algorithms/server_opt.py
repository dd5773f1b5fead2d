"""Server optimizers of the FedOpt family (Reddi et al., "Adaptive Federated Optimization", 2021).

The server treats the aggregated client update Δ_t (new − old, pointing downhill) as a negative
gradient ("pseudo-gradient" −Δ_t). All rules are elementwise:

    FedAvg / FedAvgM (``sgd``):  m_t = β m_{t−1} + Δ_t;  x_{t+1} = x_t + η m_t   (β = momentum;
                                 β = 0, η = 1 is plain FedAvg). Nesterov optional.
    ``paper`` style (the algorithm box; no bias correction, v_{−1} = τ²):
        m_t = β1 m_{t−1} + (1 − β1) Δ_t
        FedAdagrad: v_t = v_{t−1} + Δ_t²
        FedAdam:    v_t = β2 v_{t−1} + (1 − β2) Δ_t²
        FedYogi:    v_t = v_{t−1} − (1 − β2) Δ_t² · sign(v_{t−1} − Δ_t²)
        x_{t+1} = x_t + η m_t / (√v_t + τ)
    ``tff`` style (what the authors' experiments ran: Keras optimizers, v_{−1} = 0):
        FedAdam/FedYogi with bias correction, x_{t+1} = x_t + η √(1−β2^t)/(1−β1^t) · m_t/(√v_t + τ);
        FedAdagrad without a first moment, x_{t+1} = x_t + η Δ_t/(√v_t + τ).

τ is the "adaptivity" hyperparameter (start at 1e-3), not a numerical epsilon.

The math is not written here: each rule is a :mod:`fedopt.optim` functional rule (``sgd``,
``adamtau``, ``yogi``, ``adagrad``, exact rules in docs/optimizers.md) applied to the
pseudo-gradient g = −Δ_t, with τ as its ε (:meth:`ServerOptimizer.rule`). This module holds the
config keys, their validation and the server state's checkpoint layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedopt import tree
from fedopt.optim import FunctionalOptimizer, make as make_optimizer
from fedopt.optim.core import coef_dtype

Params = dict[str, Tensor]

SERVER_OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad")
STYLES = ("paper", "tff")

#: the keys (besides ``name`` and ``lr``) each rule reads; any other key given is an error,
#: never silently ignored. FedAdagrad reads ``betas`` only in the ``paper`` style, and then
#: only β1 (``betas: [β1]``): its v_t = v_{t−1} + Δ_t² has no β2.
RULE_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("betas", "tau", "style"),
    "yogi": ("betas", "tau", "style"),
    "adagrad": ("betas", "tau", "style"),
}

#: what a key means when it is not given (None in the dataclass)
DEFAULTS: dict[str, Any] = {"momentum": 0.0, "nesterov": False, "tau": 1e-3, "style": "paper"}


def _real(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class ServerOptimizer:
    """One server rule and its hyperparameters. ``None`` means "not given": the rule's default
    (``momentum`` 0, ``nesterov`` False, ``tau`` 1e-3, ``style`` "paper", ``betas`` (0.9, 0.99)
    in the paper style, (0.9, 0.999) in the tff style, ``(0.9,)`` for paper-style adagrad).

    Raises ValueError naming ``server_optimizer.<key>`` for a bad value, and for a key the rule
    does not read (:data:`RULE_KEYS`): e.g. ``betas`` with ``sgd``, ``momentum`` with ``adam``,
    ``betas`` with tff-style ``adagrad``; a key given is never silently ignored.
    """

    name: str = "sgd"
    lr: float = 1.0
    momentum: float | None = None
    nesterov: bool | None = None
    betas: tuple[float, ...] | None = None
    tau: float | None = None
    style: str | None = None

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ValueError(f"server_optimizer.name: unknown {self.name!r}; "
                             f"choose one of {', '.join(SERVER_OPTIMIZERS)}")
        if not (_real(self.lr) and self.lr > 0):
            raise ValueError(f"server_optimizer.lr: must be a finite number > 0, got {self.lr!r}")
        used = RULE_KEYS[self.name]
        for key in ("momentum", "nesterov", "betas", "tau", "style"):
            if getattr(self, key) is not None and key not in used:
                raise ValueError(
                    f"server_optimizer.{key}: the {self.name} server optimizer does not use "
                    f"{key} (it reads {', '.join(('lr', *used))}); remove {key}")
        if self.momentum is not None and not (_real(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"server_optimizer.momentum: must be in [0, 1), got {self.momentum!r}")
        if self.nesterov is not None and not isinstance(self.nesterov, bool):
            raise ValueError(f"server_optimizer.nesterov: must be true or false, got {self.nesterov!r}")
        if self.tau is not None and not (_real(self.tau) and self.tau > 0):
            raise ValueError(f"server_optimizer.tau: must be a finite number > 0, got {self.tau!r}")
        if self.style is not None and self.style not in STYLES:
            raise ValueError(f"server_optimizer.style: 'paper' or 'tff', got {self.style!r}")
        if self.betas is not None:
            self._check_betas()
        if self.name == "sgd" and self.nesterov and not self.momentum:
            raise ValueError("server_optimizer.nesterov: needs server_optimizer.momentum > 0")

    def _check_betas(self) -> None:
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not isinstance(betas, (list, tuple)):
            raise ValueError(f"server_optimizer.betas: must be a list of numbers, got {betas!r}")
        if self.name == "adagrad":
            if self.resolved_style == "tff":
                raise ValueError("server_optimizer.betas: tff-style adagrad has no first moment "
                                 "and uses no betas; remove betas (or use style: paper)")
            if len(betas) != 1:
                raise ValueError(f"server_optimizer.betas: adagrad uses only β1 (its "
                                 f"v_t = v_(t-1) + Δ_t² has no β2); give [β1], got {list(betas)}")
        elif len(betas) != 2:
            raise ValueError(f"server_optimizer.betas: {self.name} needs two values [β1, β2], "
                             f"got {list(betas)}")
        for i, b in enumerate(betas):
            if not (_real(b) and 0 <= b < 1):
                raise ValueError(f"server_optimizer.betas[{i}]: must be a number in [0, 1), got {b!r}")

    @property
    def resolved_style(self) -> str:
        return DEFAULTS["style"] if self.style is None else self.style

    @property
    def resolved_tau(self) -> float:
        return DEFAULTS["tau"] if self.tau is None else float(self.tau)

    @property
    def resolved_betas(self) -> tuple[float, float | None]:
        """(β1, β2) of the adaptive rules; β2 is None for adagrad (which has none)."""
        if self.betas is not None:
            b1 = float(self.betas[0])
            return (b1, None) if self.name == "adagrad" else (b1, float(self.betas[1]))
        if self.name == "adagrad":
            return 0.9, None
        return (0.9, 0.99) if self.resolved_style == "paper" else (0.9, 0.999)

    # -- the rule, from the fedopt.optim core ---------------------------------------------------
    def rule(self) -> FunctionalOptimizer:
        """The :mod:`fedopt.optim` rule this server optimizer applies to the pseudo-gradient −Δ_t:
        ``sgd`` (momentum, Nesterov), ``adamtau``/``yogi`` (ε = τ; paper: v_0 = τ², no bias
        correction; tff: v_0 = 0, bias-corrected step size) or ``adagrad`` (ε = τ; paper: β1,
        v_0 = τ²; tff: no first moment, v_0 = 0)."""
        if self.name == "sgd":
            return make_optimizer("sgd", lr=self.lr, nesterov=bool(self.nesterov),
                                  momentum=DEFAULTS["momentum"] if self.momentum is None
                                  else self.momentum)
        b1, b2 = self.resolved_betas
        tau, paper = self.resolved_tau, self.resolved_style == "paper"
        v0 = tau ** 2 if paper else 0.0
        if self.name == "adagrad":
            return make_optimizer("adagrad", lr=self.lr, beta1=b1 if paper else 0.0, eps=tau,
                                  initial_accumulator_value=v0)
        return make_optimizer(_RULES[self.name], lr=self.lr, betas=(b1, b2), eps=tau,
                              initial_accumulator_value=v0, bias_correction=not paper)

    # -- pure state machine ------------------------------------------------------------------
    def init(self, params: Params) -> dict[str, Any]:
        """The state before round 0: sgd keeps the core's state; the adaptive rules keep
        ``{"t": 0, "m": {name: 0}, "v": {name: v_0}}`` (see :meth:`step`)."""
        rule = self.rule()
        if self.name == "sgd":
            return rule.init(params)
        return _server_layout(rule.init(params), 0, None, self._v_name)

    def step(self, params: Params, delta: Params, state: dict[str, Any]) -> tuple[Params, dict]:
        """x_{t+1} = the rule's update of x_t with gradient −Δ_t (pure).

        The adaptive rules' state is ``{"t": t, "m": {name: m_t}, "v": {name: v_t}}`` with m_t
        the first moment of Δ (= −the core's ``exp_avg``; Δ_t itself when the rule has no first
        moment) — the layout checkpoints have always held, so earlier runs resume."""
        rule = self.rule()
        grads = tree.map_tensors(torch.neg, delta)
        if self.name == "sgd":
            return rule.update(params, grads, state)
        new_params, core = rule.update(params, grads, _core_layout(rule, state, params,
                                                                   self._v_name))
        return new_params, _server_layout(core, int(state["t"]) + 1, delta, self._v_name)

    @property
    def _v_name(self) -> str:
        return "sum" if self.name == "adagrad" else "exp_avg_sq"


#: the fedopt.optim rule of each adaptive server optimizer
_RULES = {"adam": "adamtau", "yogi": "yogi"}


def _server_layout(core: dict[str, Any], t: int, delta: Params | None, v_name: str
                   ) -> dict[str, Any]:
    """The core's state as ``{"t", "m", "v"}``: m of Δ = −exp_avg; a rule without a first
    moment has m_t = Δ_t (0 before the first round)."""
    bufs = core["buffers"]

    def m(k: str, b: dict[str, Tensor]) -> Tensor:
        if "exp_avg" in b:
            return -b["exp_avg"]
        return torch.zeros_like(b[v_name]) if delta is None else delta[k]

    return {"t": t, "m": {k: m(k, b) for k, b in bufs.items()},
            "v": {k: b[v_name] for k, b in bufs.items()}}


def _core_layout(rule: FunctionalOptimizer, state: dict[str, Any], params: Params, v_name: str
                 ) -> dict[str, Any]:
    """``{"t", "m", "v"}`` as the core's state (β_i^t recomputed from t in float64)."""
    t = int(state["t"])
    device = next(iter(params.values())).device
    core: dict[str, Any] = {"step": torch.tensor(t, dtype=torch.int64, device=device)}
    if rule.bias_corrected:
        core["beta_pows"] = {f"beta{i + 1}": torch.tensor(float(b) ** t, device=device,
                                                          dtype=coef_dtype(device))
                             for i, b in enumerate(rule.betas)}
    names = rule.buffer_names()
    core["buffers"] = {k: {v_name: state["v"][k],
                           **({"exp_avg": -state["m"][k]} if "exp_avg" in names else {})}
                       for k in params}
    return core
