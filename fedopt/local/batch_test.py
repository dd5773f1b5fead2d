r"""Adaptive batch sizes (AdAdaGrad; Lau, Liu & Kolar, arXiv 2402.11215, 2024): the norm test
(Byrd et al. 2012) and the augmented inner-product test (Bollapragada et al. 2018).

At iterate x_k with minibatch B_k of b rows and per-example gradients g_i = ∇ℓ(x_k; ξ_i):

    ḡ = (1/b) Σ_i g_i
    V      = (1/(b−1)) Σ_i ‖g_i − ḡ‖²                       trace of the sample covariance
    q_i    = ⟨g_i, ḡ⟩,   V_ip   = (1/(b−1)) Σ_i (q_i − q̄)²
    o_i    = g_i − (q_i/‖ḡ‖²) ḡ,   V_orth = (1/(b−1)) Σ_i ‖o_i − ō‖²

    norm test:                b_norm = ⌈V / (η² ‖ḡ‖²)⌉
    inner-product test:       b_ip   = ⌈V_ip / (θ² ‖ḡ‖⁴)⌉
    orthogonality test:       b_orth = ⌈V_orth / (ν² ‖ḡ‖²)⌉
    next batch size:          b_{k+1} = min(b_max, max(b_k, b_norm))              ("norm")
                              b_{k+1} = min(b_max, max(b_k, b_ip, b_orth))        ("inner_product",
                                                               the augmented test; θ = η)

The batch size never shrinks and stops at b_max; with ‖ḡ‖² < 1e-30 it jumps to b_max (the
tests' ratios blow up near a stationary point); with fewer than two rows the variance is
undefined and b is kept. Whole-vector statistics by default; ``blockwise=True`` is the authors'
code variant (``tests.py`` of timlautk/AdAdaGrad): q_i and o_i per parameter tensor, their
variances summed over tensors (cross-tensor covariances dropped; V and the norm test are the
same either way).

Everything is batched over C clients: per-example gradients ``[C, W, ...]`` with a row mask
``[C, W]`` (padding rows excluded).

Memory: per-example gradients cost b × d numbers per client (d parameters), and b grows up to
b_max = n_i. ``test_rows`` (default :data:`TEST_ROWS`) caps the rows the statistics are computed
on: a client whose batch has more real rows than that runs the test on a subsample of
``test_rows`` of them drawn without replacement, keyed by (seed, key, client, local step) on
:data:`fedopt.rng.STREAM_BATCH_TEST_ROWS` (:func:`capped_test_rows`). The statistics are then
the same sample estimates (V with ddof = 1, ḡ the subsample's mean) of the minibatch's
gradient distribution with more noise; the memory of the test is at most C × test_rows × d.

:class:`AdaptiveBatchSize` is the plain-PyTorch helper ("next batch size" for an ordinary
training loop; it tests every row of the batch it is given).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedopt.rng import STREAM_BATCH_TEST_ROWS, keyed_bits

#: the config's test names
TESTS = ("norm", "inner_product")
#: default cap on the rows of one client's test (per-example gradients: test_rows × d numbers)
TEST_ROWS = 256
#: below this ‖ḡ‖² the batch jumps to b_max
TINY = 1e-30


class BatchStats(NamedTuple):
    """Per-client statistics [C] (float64): real rows ``b``, ‖ḡ‖², V, V_ip, V_orth."""

    b: Tensor
    sq_norm: Tensor
    var: Tensor
    var_ip: Tensor
    var_orth: Tensor


def _flat(grads: Mapping[str, Tensor] | Tensor, lead: int) -> list[Tensor]:
    """Tensors ``[C, W, ...]`` (or one) flattened to ``[C, W, d_t]`` float64."""
    items = [grads] if isinstance(grads, Tensor) else list(grads.values())
    return [g.reshape(g.shape[:lead] + (-1,)).double() for g in items]


def batch_statistics(per_example: Mapping[str, Tensor] | Tensor, mask: Tensor | None = None,
                     blockwise: bool = False, inner_product: bool = True) -> BatchStats:
    """The module docstring's statistics of per-example gradients ``[C, W, ...]`` per tensor
    (a dict of them, or one tensor), over the rows where ``mask`` [C, W] is nonzero (all rows
    when None). Computed in float64; returns :class:`BatchStats` of shape [C]. Without
    ``inner_product`` only b, ‖ḡ‖² and V are computed (what the norm test reads; V_ip and
    V_orth are NaN)."""
    blocks = _flat(per_example, 2)
    C, W = blocks[0].shape[:2]
    m = (torch.ones(C, W, dtype=torch.float64, device=blocks[0].device) if mask is None
         else (mask != 0).to(torch.float64))
    b = m.sum(1)
    den = (b - 1).clamp_min(1.0)
    means = [(g * m[..., None]).sum(1) / b.clamp_min(1.0)[:, None] for g in blocks]  # [C, d_t]
    sq = sum(gb.pow(2).sum(-1) for gb in means)                                      # ‖ḡ‖²
    var = sum(((g - gb[:, None]).pow(2).sum(-1) * m).sum(1) for g, gb in zip(blocks, means))
    safe = sq.clamp_min(TINY)

    def ip_orth(gs: list[Tensor], gbs: list[Tensor], norm2: Tensor) -> tuple[Tensor, Tensor]:
        q = sum((g * gb[:, None]).sum(-1) for g, gb in zip(gs, gbs))                 # [C, W]
        qbar = (q * m).sum(1) / b.clamp_min(1.0)
        v_ip = ((q - qbar[:, None]).pow(2) * m).sum(1)
        coef = q / norm2[:, None]
        os_ = [g - coef[..., None] * gb[:, None] for g, gb in zip(gs, gbs)]
        v_o = 0.0
        for o in os_:
            obar = (o * m[..., None]).sum(1) / b.clamp_min(1.0)[:, None]
            v_o = v_o + ((o - obar[:, None]).pow(2).sum(-1) * m).sum(1)
        return v_ip, v_o

    if not inner_product:
        nan = torch.full_like(sq, math.nan)
        return BatchStats(b, sq, var / den, nan, nan)
    if blockwise:
        v_ip, v_orth = 0.0, 0.0
        for g, gb in zip(blocks, means):
            a, o = ip_orth([g], [gb], gb.pow(2).sum(-1).clamp_min(TINY))
            v_ip, v_orth = v_ip + a, v_orth + o
    else:
        v_ip, v_orth = ip_orth(blocks, means, safe)
    return BatchStats(b, sq, var / den, v_ip / den, v_orth / den)


@dataclass(frozen=True)
class BatchSizeTest:
    """A test and its growth rule (module docstring): ``name`` ∈ :data:`TESTS`, ``eta`` η
    (θ of the inner-product test), ``nu`` ν of the orthogonality test (None: η), ``max_batch_size``
    b_max (None: unbounded; the engine caps it at each client's rows), ``blockwise``: the
    authors' per-tensor variant, ``test_rows``: the most rows a client's statistics are
    computed on (a keyed subsample above it, :func:`capped_test_rows`; None: every row of the
    batch). ValueError naming the field for a bad value."""

    name: str = "norm"
    eta: float = 0.1
    nu: float | None = None
    max_batch_size: int | None = None
    blockwise: bool = False
    test_rows: int | None = TEST_ROWS

    def __post_init__(self) -> None:
        if self.name not in TESTS:
            raise ValueError(f"name: one of {TESTS}, got {self.name!r}")
        for field in ("eta", "nu"):
            v = getattr(self, field)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise ValueError(f"{field}: must be a finite number > 0, got {v!r}")
        if self.max_batch_size is not None and int(self.max_batch_size) < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {self.max_batch_size!r}")
        if self.test_rows is not None and int(self.test_rows) < 2:
            raise ValueError(f"test_rows: must be >= 2 (the tests need a sample variance), got "
                             f"{self.test_rows!r}")

    def proposed(self, stats: BatchStats) -> Tensor:
        """float64 [C]: the test's batch size ⌈·⌉ (b_norm, or max(b_ip, b_orth)); +inf where
        ‖ḡ‖² < 1e-30."""
        sq = stats.sq_norm.clamp_min(TINY)
        if self.name == "norm":
            need = stats.var / (self.eta ** 2 * sq)
        else:
            nu = self.eta if self.nu is None else self.nu
            need = torch.maximum(stats.var_ip / (self.eta ** 2 * sq * sq),
                                 stats.var_orth / (nu ** 2 * sq))
        need = torch.ceil(need)
        return torch.where(stats.sq_norm < TINY, torch.full_like(need, math.inf), need)

    def next_batch_size(self, b: Tensor, stats: BatchStats, b_max: Tensor | int | None = None
                        ) -> Tensor:
        """int64 [C]: b_{k+1} = min(b_max, max(b_k, proposed)); b_k kept where fewer than two
        rows were seen, b_k ≥ b_max or the statistics are NaN (a diverged client: the
        executor's non-finite policy deals with it). ``b_max`` [C] or int (default ``max_batch_size``)."""
        b = torch.as_tensor(b, dtype=torch.int64)
        cap = self.max_batch_size if b_max is None else b_max
        cap_t = (torch.full_like(b, 2 ** 62) if cap is None
                 else torch.as_tensor(cap, dtype=torch.int64, device=b.device).expand_as(b))
        prop = self.proposed(stats).to(b.device)
        prop = torch.where(torch.isnan(prop), b.double(), prop)   # non-finite grads: keep b
        grown = torch.minimum(cap_t.double(), torch.maximum(b.double(), prop)).to(torch.int64)
        keep = (stats.b.to(b.device) < 2) | (b >= cap_t)
        return torch.where(keep, b, grown)


def capped_test_rows(weight: np.ndarray, test_rows: int | None, seed: int, keys: np.ndarray,
                client_ids: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of each client's batch the test reads: positions int64 [C, W'] into the batch's
    W columns and their mask float64 [C, W'] (1: a real row; padding repeats a real position
    with 0), W' = min(W, test_rows). ``weight`` [C, W]: nonzero marks a real row. A client with
    at most ``test_rows`` real rows keeps all of them, in order; one with more keeps the
    ``test_rows`` real rows of smallest keyed bits (seed, STREAM_BATCH_TEST_ROWS, keys[c],
    client_ids[c], step, position), i.e. a uniform subsample without replacement, in position
    order. ``test_rows`` None: every row (positions 0..W−1, the mask = weight ≠ 0)."""
    w = np.asarray(weight) != 0
    C, W = w.shape
    if test_rows is None or W <= test_rows:
        return np.broadcast_to(np.arange(W), (C, W)).copy(), w.astype(np.float64)
    m = int(test_rows)
    pos = np.zeros((C, m), dtype=np.int64)
    mask = np.zeros((C, m), dtype=np.float64)
    for c in range(C):
        real = np.flatnonzero(w[c])
        if len(real) > m:
            bits = keyed_bits(seed, STREAM_BATCH_TEST_ROWS, int(keys[c]), int(client_ids[c]),
                              int(step), real)
            real = np.sort(real[np.argsort(bits, kind="stable")[:m]])
        k = len(real)
        pos[c, :k] = real
        pos[c, k:] = real[-1] if k else 0
        mask[c, :k] = 1.0
    return pos, mask


def per_example_grads(module_or_fn: nn.Module | Callable, params: Mapping[str, Tensor],
                      x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
                      batched: bool = False) -> dict[str, Tensor]:
    """∇ℓ(params; x_i, y_i) for every row: ``[W, ...]`` per tensor, or ``[C, W, ...]`` with
    ``batched`` (``params`` stacked [C, ...], x [C, W, ...]). ``module_or_fn``: a module (run
    with ``functional_call``) or ``forward(params, x)``. ``loss_fn(outputs [N, k], targets [N])
    -> [N]`` is per sample. Modules with batch statistics (BatchNorm) have no per-example
    gradients; use them in eval mode or GroupNorm."""
    fwd = (module_or_fn if not isinstance(module_or_fn, nn.Module)
           else (lambda p, xb: functional_call(module_or_fn, p, (xb,))))

    def one(p, xi, yi):
        return loss_fn(fwd(p, xi.unsqueeze(0)), yi.unsqueeze(0))[0]

    f = vmap(grad(one), in_dims=(None, 0, 0))
    if batched:
        f = vmap(f, in_dims=(0, 0, 0))
    return f(dict(params), x, y)


def subsampled_statistics(forward: Callable, loss_fn: Callable[[Tensor, Tensor], Tensor],
                          params: Mapping[str, Tensor], x: Tensor, y: Tensor, weight: Tensor,
                          test: BatchSizeTest, seed: int, keys: np.ndarray,
                          client_ids: np.ndarray, step: int) -> tuple[BatchStats, np.ndarray]:
    """:func:`batch_statistics` of C clients' batches (``params`` stacked [C, ...], x [C, W, ...],
    y [C, W, ...], ``weight`` [C, W], nonzero: a real row) on at most ``test.test_rows`` rows
    each (:func:`capped_test_rows` of the keys, client ids and local step): per-example
    gradients of ``forward(params, x)`` and per-sample ``loss_fn`` on the kept rows only, so the
    memory is C × min(W, test_rows) × d. Returns the statistics [C] and the kept positions
    int64 [C, W'] (padding positions repeat a kept row and are masked out)."""
    pos, mask = capped_test_rows(weight.detach().cpu().numpy(), test.test_rows, seed, keys,
                            client_ids, step)
    dev = x.device
    pos_t = torch.as_tensor(pos, device=dev)

    def take(t: Tensor) -> Tensor:
        idx = pos_t.view(pos_t.shape + (1,) * (t.dim() - 2)).expand(pos_t.shape + t.shape[2:])
        return t.gather(1, idx)

    pe = per_example_grads(forward, params, take(x), take(y), loss_fn, batched=True)
    stats = batch_statistics(pe, torch.as_tensor(mask, device=dev), test.blockwise,
                             inner_product=test.name == "inner_product")
    return stats, pos


class AdaptiveBatchSize:
    """Plain-PyTorch helper: after each step's minibatch, ``update(model, loss_fn, x, y)``
    returns the batch size to draw next (:class:`BatchSizeTest`'s rule from ``batch_size``).

    Example::

        sizer = AdaptiveBatchSize(BatchSizeTest("norm", eta=0.1, max_batch_size=1024), 8)
        for step in range(K):
            x, y = sample(sizer.batch_size)
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
            sizer.update(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y)
            opt.step()

    ``update`` runs at the iterate the gradient was taken at (before ``opt.step()``), as in
    the paper; called after it, the statistics are one step late. ``batch_size`` b₀ ≥ 2 (the
    tests need a sample variance: from b = 1 the size would never grow); ValueError otherwise.
    Without ``max_batch_size`` a vanishing ‖ḡ‖² makes the next size 2⁶²: set a cap."""

    def __init__(self, test: BatchSizeTest, batch_size: int):
        if int(batch_size) < 2:
            raise ValueError(f"batch_size: must be >= 2 (the tests need a sample variance), "
                             f"got {batch_size!r}")
        self.test, self.batch_size = test, int(batch_size)
        self.last: BatchStats | None = None

    def update(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
               y: Tensor) -> int:
        cap = self.test.max_batch_size
        if cap is not None and self.batch_size >= cap:
            return self.batch_size
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        g = per_example_grads(model, params, x, y, loss_fn)
        self.last = batch_statistics({k: v.unsqueeze(0) for k, v in g.items()},
                                     blockwise=self.test.blockwise,
                                     inner_product=self.test.name == "inner_product")
        b = self.test.next_batch_size(torch.tensor([self.batch_size]), self.last)
        self.batch_size = int(b[0])
        return self.batch_size
