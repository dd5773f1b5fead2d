"""The functional core every local optimizer is written in.

An optimizer is a :class:`FunctionalOptimizer`: hyperparameters plus two pure functions over
dicts of tensors (optax-style),

    state = opt.init(params, batch_shape=())
    new_params, new_state = opt.update(params, grads, state, hessian=None)

``params``/``grads`` map parameter names to tensors. Every tensor may carry leading *batch*
dimensions (``batch_shape``, e.g. ``(C,)`` for C simulated clients stacked together); the math
is elementwise, so one call updates all clients at once and equals C separate calls. The step
counter ``state["step"]`` (int64) has shape ``batch_shape`` (one counter per client), so clients
whose local work is finished can be frozen with :func:`masked_select` and keep their own bias
corrections.

Hyperparameters may be Python floats or tensors of shape ``batch_shape`` (per-client values);
:func:`expand_like` broadcasts them against a parameter tensor.

State layout (plain nested dicts of tensors, so it batches, masks and checkpoints for free)::

    {"step": int64[B],                       # t, the number of steps taken
     "beta_pows": {"beta1": f64[B], ...},    # beta_i^t, only for bias-corrected optimizers
     "buffers": {param_name: {buffer_name: Tensor[B, *shape]}}}

Bias corrections use the running products ``beta_i^t`` kept in float64 (exact multiplications),
rather than ``pow`` on the step: the vectorized and scalar CPU kernels of ``pow`` differ in the
last ulp, which would make a batched update differ from per-client updates.

Per update, the optimizer first computes its per-client *coefficients* once (bias-corrected step
sizes, ``1 - beta``, ... in float64, or Python floats when nothing is per-client), then the
elementwise math of :meth:`FunctionalOptimizer.update_tensor` runs per tensor with these
coefficients cast to the tensor's dtype (as torch.optim casts its Python-double scalars).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from fedopt import tree

Params = dict[str, Tensor]
State = dict[str, Any]
Scalar = float | Tensor


def expand_like(value: float | Tensor, x: Tensor, batch_ndim: int) -> float | Tensor:
    """Broadcast a scalar or per-client hyperparameter/step tensor against ``x``.

    A tensor of shape ``batch_shape`` (``batch_ndim`` dims) becomes
    ``batch_shape + (1,) * (x.ndim - batch_ndim)``; Python numbers pass through.
    """
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    if value.ndim != batch_ndim:
        raise ValueError(
            f"per-client hyperparameter has shape {tuple(value.shape)}, expected the batch shape "
            f"of {batch_ndim} leading dims of a tensor of shape {tuple(x.shape)}"
        )
    return value.reshape(value.shape + (1,) * (x.ndim - batch_ndim)).to(x.dtype)


def masked_select(mask: Tensor, new: Any, old: Any) -> Any:
    """``where(mask, new, old)`` over matching trees of tensors; ``mask`` has the batch shape.

    Clients where ``mask`` is False keep ``old`` exactly (params and every state tensor).
    """
    def pick(n: Tensor, o: Tensor) -> Tensor:
        return torch.where(mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim)), n, o)

    return tree.zip_map(pick, new, old)


def check_hparam(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = True, high_inclusive: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``low <= value < high`` (bounds optional).

    ``value`` may be a number or a (per-client) tensor; every entry is checked.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"invalid {name}: {value!r} (need a number or a tensor of numbers)")
    if isinstance(value, Tensor) and (value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"invalid {name}: tensor of dtype {value.dtype} (need a real dtype)")
    vals = value.detach().flatten().tolist() if isinstance(value, Tensor) else [value]
    for v in vals:
        bad = v != v  # NaN
        if low is not None:
            bad |= v < low if low_inclusive else v <= low
        if high is not None:
            bad |= v > high if high_inclusive else v >= high
        if bad:
            lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
            hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
            raise ValueError(f"invalid {name}: {v!r} (need {lo}{name}{hi})")


def check_int(name: str, value: Any, *, low: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a Python int ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"invalid {name}: {value!r} (need an integer >= {low})")


def is_zero(value: Scalar) -> bool:
    """True only for a Python number equal to 0 (a tensor might be per-client nonzero)."""
    return not isinstance(value, Tensor) and value == 0


def as_float64(value: Scalar) -> Scalar:
    """Python numbers stay numbers; tensors become float64 (exact for float32/float64)."""
    return value.to(torch.float64) if isinstance(value, Tensor) else float(value)


def fdiv(num: Scalar, den: Tensor) -> Tensor:
    """``num / den`` by true division even when ``num`` is a Python number (torch computes
    ``float / tensor`` as ``reciprocal(tensor) * float``, rounding differently from the
    tensor / tensor division used when ``num`` is a per-client tensor)."""
    if not isinstance(num, Tensor):
        num = torch.full_like(den, num)
    return num / den


def lin(a: Tensor, ca: Scalar, b: Tensor, cb: Scalar) -> Tensor:
    """``ca * a + cb * b`` as a new tensor (inputs untouched), rounded exactly as written.

    The update rules build their results in place on temporaries they own (``mul_``/``add_``
    on a fresh tensor round exactly like the out-of-place ops); on CPU this avoids the page
    faults of fresh large allocations (several times faster), on GPU it lowers peak memory.
    """
    out = a * ca
    return out.add_(b * cb)


def subtract_from(x: Tensor, u: Tensor) -> Tensor:
    """``x - u`` written into the temporary ``u``: one pass, ``torch.sub(x, u, out=u)``
    (``u.neg_().add_(x)``, bitwise the same, takes two passes over memory: 25 % slower on
    the CNN's stacked update). Under autograd (``out=`` has no derivative) the two-pass form."""
    if (torch.is_grad_enabled() and (x.requires_grad or u.requires_grad)
            or x.shape != u.shape or x.dtype != u.dtype or _transformed(x) or _transformed(u)):
        return u.neg_().add_(x)
    return torch.sub(x, u, out=u)


def _transformed(t: Tensor) -> bool:
    """Whether ``t`` is wrapped by a torch.func transform (vmap, grad), where ``out=`` fails."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def coef_dtype(device: torch.device) -> torch.dtype:
    """dtype of the per-client coefficients: float64 where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


class StepContext:
    """What one update shares across tensors: the new step t (int64, batch-shaped) and the
    per-client coefficients, handed out cast to each tensor's dtype and broadcast against it."""

    def __init__(self, step: Tensor, coefs: Mapping[str, Scalar]) -> None:
        self.step = step
        self.batch_ndim = step.ndim
        self._coefs = coefs
        self._cast: dict[tuple, Tensor] = {}

    def __call__(self, name: str, x: Tensor) -> Scalar:
        """Coefficient ``name`` ready to combine with ``x`` (same dtype/device, broadcastable)."""
        return self.value(self._coefs[name], x, name)

    def value(self, value: Scalar, x: Tensor, key: Any = None) -> Scalar:
        """A float stays a float; a batch-shaped tensor is cast to ``x``'s dtype and reshaped
        to ``batch_shape + (1,) * (x.ndim - batch_ndim)`` (cast once per dtype, then cached)."""
        if not isinstance(value, Tensor):
            return value
        ck = (id(value) if key is None else key, x.dtype, x.device)
        cast = self._cast.get(ck)
        if cast is None:
            cast = value.to(device=x.device, dtype=x.dtype)
            if key is not None:
                self._cast[ck] = cast
        if cast.ndim == 0:
            return cast
        return expand_like(cast, x, self.batch_ndim)

    def mask(self, cond: Tensor, x: Tensor) -> Tensor:
        """A batch-shaped boolean tensor, broadcast against ``x``."""
        return cond.reshape(cond.shape + (1,) * (x.ndim - cond.ndim))

    def first(self, x: Tensor) -> Tensor:
        """``t == 1`` per client, broadcast against ``x``."""
        return self.mask(self.step == 1, x)


@dataclass(frozen=True)
class FunctionalOptimizer:
    """Base class: hyperparameters as dataclass fields, math in :meth:`update_tensor`.

    Subclasses declare ``buffers`` (names of per-parameter state tensors, zero-initialised),
    ``bias_corrected`` (keep running powers of ``betas`` in the state), and implement
    :meth:`coefficients` and :meth:`update_tensor`. Non-elementwise optimizers (M-FAC)
    override ``init``/``update`` instead.
    """

    buffers: ClassVar[tuple[str, ...]] = ()
    #: True for Sophia/AdaHessian: ``update`` expects a Hutchinson Hessian-diagonal estimate
    #: on the steps where ``needs_hessian_at(step)`` holds.
    needs_hessian: ClassVar[bool] = False
    elementwise: ClassVar[bool] = True
    #: keep ``state["beta_pows"]["beta{i}"] = beta_i^t`` for every entry of ``self.betas``
    #: (a subclass may make it a property of its hyperparameters, as AdamTau and Yogi do).
    bias_corrected: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if hasattr(self, "betas") and isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad hyperparameter."""

    def replace(self, **changes: Any) -> "FunctionalOptimizer":
        """A copy with some hyperparameters changed (e.g. ``lr`` from a schedule); validated."""
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- state -------------------------------------------------------------------------------
    def buffer_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state buffers (may depend on hyperparameters)."""
        return self.buffers

    def init_tensor(self, x: Tensor) -> dict[str, Tensor]:
        return {b: torch.zeros_like(x) for b in self.buffer_names()}

    def init(self, params: Params, batch_shape: tuple[int, ...] = ()) -> State:
        """Zero state: ``step`` = 0 per client, unit beta powers, zero buffers."""
        batch_shape = tuple(batch_shape)
        check_batch_shape(params, batch_shape)
        device = next(iter(params.values())).device if params else torch.device("cpu")
        state: State = {"step": torch.zeros(batch_shape, dtype=torch.int64, device=device)}
        if self.bias_corrected:
            state["beta_pows"] = {
                f"beta{i + 1}": torch.ones(batch_shape, dtype=coef_dtype(device), device=device)
                for i in range(len(self.betas))}
        state["buffers"] = {name: self.init_tensor(x) for name, x in params.items()}
        return state

    # -- math --------------------------------------------------------------------------------
    def coefficients(self, beta_pows: Mapping[str, Tensor]) -> dict[str, Scalar]:
        """Per-client scalars of this step (Python floats or float64 batch-shaped tensors),
        computed once per update from the hyperparameters and ``beta_pows`` (= beta_i^t)."""
        return {}

    def update_tensor(self, x: Tensor, g: Tensor, buf: dict[str, Tensor], c: StepContext,
                      h: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """One step for one tensor: returns the new tensor and its new buffers. ``c(name, x)``
        gives the coefficients; ``h`` is the Hessian-diagonal estimate or None."""
        raise NotImplementedError

    def check_hparam_shapes(self, batch_shape: tuple[int, ...]) -> None:
        """Tensor hyperparameters must be 0-dim or of shape ``batch_shape`` (ValueError)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                if isinstance(v, Tensor) and v.ndim and tuple(v.shape) != tuple(batch_shape):
                    label = f"{f.name}[{i}]" if isinstance(value, tuple) else f.name
                    raise ValueError(f"{self.name}: per-client {label} has shape "
                                     f"{tuple(v.shape)}, expected () or the batch shape "
                                     f"{tuple(batch_shape)}")

    def update(self, params: Params, grads: Params, state: State,
               hessian: Params | None = None) -> tuple[Params, State]:
        """Apply one step to every tensor. Pure: inputs are not modified."""
        step = state["step"] + 1
        self.check_hparam_shapes(step.shape)
        new_state: State = {"step": step}
        beta_pows: dict[str, Tensor] = {}
        if self.bias_corrected:
            beta_pows = {k: v * as_float64(self.betas[int(k[4:]) - 1])
                         for k, v in state["beta_pows"].items()}
            new_state["beta_pows"] = beta_pows
        ctx = StepContext(step, self.coefficients(beta_pows))
        new_params: Params = {}
        new_bufs: dict[str, dict[str, Tensor]] = {}
        for name, x in params.items():
            if name not in grads:
                raise ValueError(f"{self.name}: no gradient for parameter {name!r}")
            h = None if hessian is None else hessian.get(name)
            new_params[name], new_bufs[name] = self.update_tensor(
                x, grads[name], state["buffers"][name], ctx, h)
        new_state["buffers"] = new_bufs
        return new_params, new_state

    def needs_hessian_at(self, step: int) -> bool:
        """Whether the step numbered ``step`` (1-based) wants a fresh Hessian estimate."""
        return False


def check_batch_shape(params: Mapping[str, Tensor], batch_shape: tuple[int, ...]) -> None:
    """Every tensor must start with ``batch_shape``; raise ``ValueError`` naming the first that
    does not."""
    n = len(batch_shape)
    for name, x in params.items():
        if tuple(x.shape[:n]) != batch_shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(x.shape)}, which does not "
                             f"start with batch_shape {batch_shape}")
