"""The local program: plain, frozen data describing what a client computes.

A client i of a round starts from y_{i,0} and takes u_i steps

    y_{i,k+1} = LocalOpt( y_{i,k},  G(y_{i,k}; ξ_{i,k}) + μ (y_{i,k} − y_{i,0}) + c_i )

and returns Δ_i = P(y_{i,u_i} − y_{i,0}). A :class:`LocalProgram` names each piece:

* ``loss`` ℓ(outputs, targets) -> per-sample loss (cross-entropy by default, ``"mse"`` built in,
  or any callable ``f(outputs [N, k], targets [N] or [N, d]) -> [N]``); a minibatch's loss is the
  weighted mean of the per-sample values over its real rows;
* ``metrics`` name -> per-sample callable of the same signature, averaged over the evaluation
  rows (``None``: the task's default, accuracy for classification, none for regression);
* ``oracle`` G, the gradient oracle: :class:`Autograd` (∇ℓ, the default) or :class:`SAM` (the
  quasi-gradient at an ascent point); any object with
  ``gradient(ctx, y, batch) -> (grads, loss)`` plugs in (zeroth-order estimators:
  :class:`fedopt.zo.estimators.ZerothOrder`, through ``batched_loss`` and ``step_keys``);
* the additive corrections: ``prox_mu`` μ ≥ 0, FedProx's proximal term μ(y − y₀); the per-client
  linear terms c_i (SCAFFOLD/FedDyn control variates) are data, passed per job by the algorithm;
* ``postprocess``, a chain of update postprocessors P = P_n ∘ … ∘ P_1 applied to the stacked
  updates Δ [C, ...] before they are returned (:class:`ClipUpdateNorm`; per-layer clipping
  and keyed DP noise: :mod:`fedopt.privacy.postprocess`).

Algorithms supply their program (``Algorithm.local_program()``); the run adds the user's loss and
metrics. The program travels to remote workers as data: it must pickle. Built-ins are named by
strings; a user callable must be picklable by Ray's cloudpickle: functions of ``__main__``,
lambdas and local functions travel by value (with what they capture), a module-level function of
another module by reference (that module must be importable on the workers, e.g. through Ray's
``runtime_env``). :func:`check_shippable` names a field that does not pickle; the Ray executor
calls it before starting workers.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedopt.schema import ConfigError

Params = dict[str, Tensor]
#: a per-sample function of (outputs [N, k], targets [N] or [N, d]) -> [N]
PerSample = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- losses, metrics
def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of logits [N, C] against int64 class labels [N]."""
    return F.cross_entropy(outputs, targets, reduction="none")


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample squared error (1/d) Σ_j (o_j − t_j)² of outputs [N, d] against float targets
    [N, d] or [N] (then d = 1)."""
    if targets.ndim == outputs.ndim - 1:
        targets = targets.unsqueeze(-1)
    return (outputs - targets).pow(2).mean(-1)


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample 1 when argmax(outputs) is the label, else 0 (in the outputs' dtype)."""
    return (outputs.argmax(dim=-1) == targets).to(outputs.dtype)


#: built-in losses and metrics by name (what ``client.loss`` / ``client.metrics`` accept)
LOSSES: dict[str, PerSample] = {"cross_entropy": cross_entropy, "mse": mse}
METRICS: dict[str, PerSample] = {"accuracy": accuracy, "mse": mse}


def default_loss(regression: bool) -> str:
    return "mse" if regression else "cross_entropy"


def default_metrics(regression: bool) -> tuple[str, ...]:
    return () if regression else ("accuracy",)


def _resolve(fn: str | PerSample, table: dict[str, PerSample], field: str) -> PerSample:
    if isinstance(fn, str):
        if fn not in table:
            raise ValueError(f"{field}: unknown name {fn!r}; built in: {', '.join(table)}, "
                             f"or pass a callable f(outputs, targets) -> per-sample values")
        return table[fn]
    if not callable(fn):
        raise ValueError(f"{field}: must be a name or a callable f(outputs, targets) -> "
                         f"per-sample values, got {type(fn).__name__}")
    return fn


# --------------------------------------------------------------------------- gradient oracles
class Batch(NamedTuple):
    """One local step's minibatch of C clients: features x [C, B, ...], targets y [C, B, ...]
    and weights w [C, B] (each client's row weights divided by its number of real rows, so a
    client's loss is Σ_b w_b ℓ_b; padding rows weigh 0)."""

    x: Tensor
    y: Tensor
    w: Tensor


class StepKeys(NamedTuple):
    """Who the current local step belongs to, for keyed randomness in an oracle (zeroth-order
    directions): the job ``keys`` (one int, or one per client [C]), ``client_ids`` int64 [C]
    (the stack's rows, in order) and the local ``step`` index."""

    keys: int | np.ndarray
    client_ids: np.ndarray
    step: int


class OracleContext(Protocol):
    """What an oracle may ask of the trainer running it (``step_keys``: the current step's
    :class:`StepKeys`, set by the trainer before each oracle call)."""

    seed: int
    step_keys: StepKeys | None

    def batched_grad(self, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        """Per-client ∇ℓ_i(y_i) (stacked like ``y``) and losses ℓ_i [C]."""

    def batched_loss(self, y: Params, batch: Batch) -> Tensor:
        """Per-client losses ℓ_i(y_i) [C], without gradients."""


@runtime_checkable
class GradientOracle(Protocol):
    """``gradient(ctx, y, batch) -> (G(y) stacked like y, per-client loss ℓ_i(y_i) [C])``."""

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]: ...


@dataclass(frozen=True)
class Autograd:
    """G(y) = ∇ℓ(y), one batched backward pass."""

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        return ctx.batched_grad(y, batch)


def _global_norm(tree: Params) -> Tensor:
    """Per-client L2 norm over every tensor of a stacked tree [C, ...] -> [C]."""
    return sum(t.pow(2).flatten(1).sum(-1) for t in tree.values()).sqrt()


def _per_client(scale: Tensor, v: Tensor) -> Tensor:
    return scale.view((-1,) + (1,) * (v.ndim - 1)) * v


@dataclass(frozen=True)
class SAM:
    """FedSAM's / FedSpeed's quasi-gradient G(y) = (1 − α) g₁ + α ∇ℓ(y + e), g₁ = ∇ℓ(y), at the
    ascent point e = ρ g₁/‖g₁‖ (``normalize``, per client, global L2 norm) or e = ρ g₁.
    ρ = 0 or α = 0 is plain autograd (one pass)."""

    rho: float
    alpha: float = 1.0
    normalize: bool = True

    def __post_init__(self) -> None:
        if not self.rho >= 0 or math.isinf(self.rho):
            raise ValueError(f"sam_rho: must be finite and >= 0, got {self.rho}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"sam_alpha: must be in [0, 1], got {self.alpha}")
        object.__setattr__(self, "rho", float(self.rho))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "normalize", bool(self.normalize))

    def gradient(self, ctx: OracleContext, y: Params, batch: Batch) -> tuple[Params, Tensor]:
        g1, loss = ctx.batched_grad(y, batch)
        if self.rho == 0 or self.alpha == 0:
            return g1, loss
        if self.normalize:
            scale = self.rho / _global_norm(g1).clamp_min(1e-12)
            e = {k: _per_client(scale, v) for k, v in g1.items()}
        else:
            e = {k: self.rho * v for k, v in g1.items()}
        g2, _ = ctx.batched_grad({k: v + e[k] for k, v in y.items()}, batch)
        a = self.alpha
        if a == 1.0:
            return g2, loss
        return {k: (1 - a) * g1[k] + a * g2[k] for k in g1}, loss


# --------------------------------------------------------------------------- postprocessors
@dataclass(frozen=True)
class UpdateInfo:
    """Who the stacked updates belong to: ``client_ids`` [C] and the job keys (the round, or
    one key per client) — what a keyed noise draw needs — and the trainer's ``seed``."""

    client_ids: np.ndarray
    keys: int | np.ndarray
    seed: int


@runtime_checkable
class UpdatePostprocessor(Protocol):
    """``apply(delta, info) -> delta'``: stacked client updates Δ [C, ...] to the updates the
    clients return (vectorized over C; must not modify ``delta`` in place)."""

    def apply(self, delta: Params, info: UpdateInfo) -> Params: ...


@dataclass(frozen=True)
class ClipUpdateNorm:
    """Per-client L2 clipping Δ_i ← Δ_i · min(1, c / ‖Δ_i‖), ‖·‖ the global norm over every
    parameter of client i (DP-FedAvg's clipping; c = ``max_norm`` > 0)."""

    max_norm: float

    def __post_init__(self) -> None:
        if not (self.max_norm > 0) or math.isinf(self.max_norm):
            raise ValueError(f"max_norm: must be finite and > 0, got {self.max_norm}")

    def apply(self, delta: Params, info: UpdateInfo) -> Params:
        norm = _global_norm(delta)
        scale = (self.max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp(max=1.0)
        return {k: _per_client(scale, v) for k, v in delta.items()}


# --------------------------------------------------------------------------- the program
@dataclass(frozen=True)
class LocalProgram:
    """What a client computes (module docstring). Frozen; ``dataclasses.replace`` derives one.

    ``loss``: a built-in name (``"cross_entropy"``, ``"mse"``), a per-sample callable, or None
    (the task's default: cross-entropy for class labels, mse for float targets). ``metrics``: a
    mapping (or sequence of pairs / names) name -> built-in name or per-sample callable, or None
    (the task's default); stored as a tuple of (name, fn) pairs. ``oracle``: a
    :class:`GradientOracle`. ``prox_mu``: μ ≥ 0. ``postprocess``: a tuple of
    :class:`UpdatePostprocessor`. ``training``: None (plain minibatch steps) or a
    :class:`fedopt.local.config.LocalTraining` (adaptive batch sizes, batch-scaled lr, SSO outer
    steps, curricula; run by :mod:`fedopt.local.engine`). ValueError naming the field for
    anything else.
    """

    loss: str | PerSample | None = None
    metrics: Any = None
    oracle: GradientOracle = Autograd()
    prox_mu: float = 0.0
    postprocess: tuple[UpdatePostprocessor, ...] = ()
    training: Any = None

    def __post_init__(self) -> None:
        if self.loss is not None:
            _resolve(self.loss, LOSSES, "loss")
        if self.metrics is not None:
            object.__setattr__(self, "metrics", _metric_pairs(self.metrics))
        if not isinstance(self.oracle, GradientOracle):
            raise ValueError(f"oracle: needs a gradient(ctx, y, batch) method, got "
                             f"{type(self.oracle).__name__}")
        mu = self.prox_mu
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0 \
                or math.isinf(mu):
            raise ValueError(f"prox_mu: must be finite and >= 0, got {mu!r}")
        object.__setattr__(self, "prox_mu", float(mu))
        post = tuple(self.postprocess) if isinstance(self.postprocess, (list, tuple)) \
            else (self.postprocess,)
        for i, p in enumerate(post):
            if not isinstance(p, UpdatePostprocessor):
                raise ValueError(f"postprocess[{i}]: needs an apply(delta, info) method, got "
                                 f"{type(p).__name__}")
        object.__setattr__(self, "postprocess", post)

    # -- resolved pieces ---------------------------------------------------------------------
    def for_task(self, regression: bool) -> "LocalProgram":
        """This program with the task's defaults filled in for ``loss``/``metrics`` left None."""
        return dataclasses.replace(
            self, loss=default_loss(regression) if self.loss is None else self.loss,
            metrics=default_metrics(regression) if self.metrics is None else self.metrics)

    @property
    def loss_fn(self) -> PerSample:
        """The per-sample loss (cross-entropy when ``loss`` is None)."""
        return _resolve("cross_entropy" if self.loss is None else self.loss, LOSSES, "loss")

    def metric_fns(self, regression: bool = False) -> dict[str, PerSample]:
        """name -> per-sample metric (the task's defaults when ``metrics`` is None)."""
        pairs = _metric_pairs(default_metrics(regression)) if self.metrics is None \
            else self.metrics
        return {name: _resolve(fn, METRICS, f"metrics.{name}") for name, fn in pairs}

    def finalize(self, delta: Params, info: UpdateInfo) -> Params:
        """The postprocessor chain applied to the stacked updates, in order."""
        for p in self.postprocess:
            delta = p.apply(delta, info)
        return delta


def _metric_pairs(metrics: Any) -> tuple[tuple[str, str | PerSample], ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    items = metrics.items() if isinstance(metrics, Mapping) else metrics
    out = []
    try:
        for item in items:
            name, fn = (item, item) if isinstance(item, str) else item
            if not isinstance(name, str) or not name:
                raise ValueError(f"metrics: names must be non-empty strings, got {name!r}")
            if name == "loss":
                raise ValueError("metrics.loss: 'loss' is the loss's own column; name the "
                                 "metric otherwise")
            _resolve(fn, METRICS, f"metrics.{name}")
            out.append((name, fn))
    except TypeError:
        raise ValueError(f"metrics: a mapping name -> metric, a list of names, or None; got "
                         f"{type(metrics).__name__}") from None
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"metrics: names must be distinct, got {names}")
    return tuple(out)


def check_shippable(program: LocalProgram) -> None:
    """:class:`~fedopt.schema.ConfigError` naming the field (``loss``, ``metrics.<name>``,
    ``oracle``, ``postprocess[i]``) that Ray's cloudpickle cannot serialise: what a remote
    worker could not receive."""
    try:
        from ray import cloudpickle as pickler
    except ImportError:  # pragma: no cover - without Ray, the stdlib pickle rules
        import pickle as pickler
    parts: list[tuple[str, Any]] = [("loss", program.loss), ("oracle", program.oracle)]
    parts += [(f"metrics.{n}", fn) for n, fn in (program.metrics or ())]
    parts += [(f"postprocess[{i}]", p) for i, p in enumerate(program.postprocess)]
    for field, value in parts:
        try:
            pickler.dumps(value)
        except Exception as e:
            raise ConfigError(f"{field}: cannot be shipped to remote workers, it does not pickle "
                             f"({type(e).__name__}: {e}); use a function of a module the "
                             f"workers import, one defined in __main__ or a lambda (sent by "
                             f"value), or a picklable object") from None


#: built-in losses / metrics that need class labels (the other built-ins need float targets)
_FOR_LABELS = frozenset({"cross_entropy", "accuracy"})


def check_task_fit(key: str, value: Any, field: str, regression: bool,
                   regression_by_name: bool) -> None:
    """ConfigError naming ``field`` when the built-in ``loss``/``metrics`` named in ``value``
    do not fit the targets (cross_entropy and accuracy need class labels, mse float targets),
    or when a user's data holds float targets (``regression`` without ``regression_by_name``,
    i.e. not ``data.name: regression``) and no loss says so: a regression run is confirmed by a
    loss, never inferred silently from a file's dtype. ``key``: "loss" or "metrics"."""
    names = [value] if isinstance(value, str) else (
        [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else [])
    for name in names:
        if (name in _FOR_LABELS) == regression:
            need = "class labels" if name in _FOR_LABELS else "float regression targets"
            has = "float regression targets" if regression else "integer class labels"
            raise ConfigError(f"{field}: {name} needs {need}, but the data set has {has}")
    if key == "loss" and value is None and regression and not regression_by_name:
        raise ConfigError(
            "client.loss: the data set's targets are floats (2-D, or with fractional values), "
            "i.e. regression targets; confirm a regression run with client.loss: mse (or "
            "fedopt.run(..., loss=...)), or store the labels as integers")
