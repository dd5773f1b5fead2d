"""Gradient codes: encoding matrices B and their exact decoders (Tandon, Lei, Dimakis &
Karampatziakis, "Gradient Coding", ICML 2017, arXiv 1612.03301; spec gradient_coding.md §1).

Setting: n workers, k data partitions D_0..D_{k−1} with partial gradients g_j (sums over the
partition's samples), the full gradient g = Σ_j g_j. Worker i sends one coded gradient

    f_i = Σ_j B_ij g_j,            B ∈ R^{n×k} (float64; k = n for the built-in codes)

and the master, given the set F of workers whose f_i arrived, needs a decoding vector a ∈ R^n
with supp(a) ⊆ F and aᵀB = 1_kᵀ; then Σ_{i∈F} a_i f_i = Σ_j g_j = g exactly. B tolerates s
stragglers iff 1_k lies in the row span of B_F for every F with |F| = n − s; every partition must
then be held by at least s + 1 workers (the load lower bound), i.e. each row has ≥ s + 1 non-zeros
when the load is equal.

Constructors: :func:`frc` (fractional repetition, (s+1) | n: B = I_{n/(s+1)} ⊗ 1_{(s+1)×(s+1)};
decodes as soon as each group of s + 1 workers has one arrival, possibly with fewer than n − s
arrivals), :func:`cyclic` (cyclic repetition, any n > s: row i supported on {i, …, i+s mod n},
B_ii = 1, every row in null(H) for a random H ∈ R^{s×n} with H·1_n = 0), :func:`uncoded`
(B = I, s = 0) and :func:`from_matrix` (a user's B).

Decoding (:meth:`GradientCode.decode`) solves B_Fᵀ a_F = 1_k by least squares in float64 with
iterative refinement and accepts the solution when the residual ‖B_Fᵀ a_F − 1‖_∞ is below ``tol``
(default 1e-6: at n = 256, s = 15 decodable sets of a random cyclic code leave residuals up to
~2e-8 before refinement while sets with s + 1 stragglers stay above ~8e-4 — spec §6). Decoding
vectors are cached per arrival pattern (LRU). The cyclic construction's coefficients grow to
1e5–1e6 at n = 256, so coded gradients are combined in float64 (:func:`combine`) whatever the
model's dtype; :meth:`GradientCode.reconstruction_error` reports ‖aᵀB − 1‖_∞.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import numpy as np
import torch

from fedopt.rng import STREAM_CODING

#: default decodability cutoff on ‖B_Fᵀ a − 1‖_∞ (spec §6: 1e-6 separates, 1e-8 does not)
DEFAULT_TOL = 1e-6


class NotDecodable(ValueError):
    """The arrived set F does not determine Σ_j g_j: 1_k is not in the row span of B_F."""


class GradientCode:
    """An encoding matrix ``B`` (float64 ``[n, k]``) with its exact decoder.

    ``stragglers`` (s) is the number of stragglers the code is built to tolerate (any F with
    |F| ≥ n − s decodes); ``groups`` (FRC only): int64 ``[n]``, worker i's group — then a set
    decodes iff every group has an arrival and the decoder gives coefficient 1 to the lowest
    arrived worker of each group. ``generator``: the cyclic construction's H (``[s, n]``).
    ``cache_size``: decoding vectors kept per arrival pattern (0: no cache).
    """

    def __init__(self, B: np.ndarray, stragglers: int, name: str = "matrix", *,
                 groups: np.ndarray | None = None, generator: np.ndarray | None = None,
                 tol: float = DEFAULT_TOL, cache_size: int = 4096):
        B = np.asarray(B, dtype=np.float64)
        if B.ndim != 2 or B.shape[0] < 1 or B.shape[1] < 1:
            raise ValueError(f"B: a non-empty [n, k] matrix, got shape {B.shape}")
        if not np.isfinite(B).all():
            raise ValueError("B: has NaN or infinite entries")
        if not 0 <= stragglers < B.shape[0]:
            raise ValueError(f"stragglers: must be in [0, n) = [0, {B.shape[0]}), got {stragglers}")
        self.B = B
        self.B.setflags(write=False)
        self.n, self.k = B.shape
        self.s = int(stragglers)
        self.name = name
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.generator = generator
        self.tol = float(tol)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[bytes, np.ndarray | None] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- structure -----------------------------------------------------------------------------
    @property
    def supports(self) -> list[np.ndarray]:
        """Partitions of each worker: ``supports[i]`` = int64 {j : B_ij ≠ 0}, ascending."""
        return [np.flatnonzero(row) for row in self.B]

    @property
    def worker_load(self) -> int:
        """Partitions per worker (the largest row weight; s + 1 for FRC and cyclic)."""
        return int((self.B != 0).sum(axis=1).max())

    @property
    def normalized_load(self) -> float:
        """Fraction of the data set the busiest worker processes: ``worker_load / k``."""
        return self.worker_load / self.k

    # -- decoding ------------------------------------------------------------------------------
    def _mask(self, arrived: Iterable[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(arrived)
        if arr.dtype == bool:
            if arr.shape != (self.n,):
                raise ValueError(f"arrived: a bool mask of shape [{self.n}], got {arr.shape}")
            return arr.copy()
        idx = np.asarray(list(arrived) if not isinstance(arrived, np.ndarray) else arrived,
                         dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise ValueError(f"arrived: worker ids must be in [0, {self.n}), got "
                             f"{idx[(idx < 0) | (idx >= self.n)][:5].tolist()}")
        mask = np.zeros(self.n, dtype=bool)
        mask[idx] = True
        return mask

    def decoding_vector(self, arrived: Iterable[int] | np.ndarray) -> np.ndarray | None:
        """a ∈ R^n (float64) with supp(a) ⊆ F and ‖aᵀB − 1‖_∞ < tol, or None when F (worker
        ids or a bool mask ``[n]``) cannot decode. Cached per pattern."""
        mask = self._mask(arrived)
        key = np.packbits(mask).tobytes()
        if key in self._cache:
            self.cache_hits += 1
            self._cache.move_to_end(key)
            a = self._cache[key]
            return None if a is None else a.copy()
        self.cache_misses += 1
        a = self._solve(mask)
        if self.cache_size:
            self._cache[key] = a
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return None if a is None else a.copy()

    def _solve(self, mask: np.ndarray) -> np.ndarray | None:
        if self.groups is not None:          # FRC: one arrival per group
            a = np.zeros(self.n)
            idx = np.flatnonzero(mask)
            first = {}
            for i in idx.tolist():
                first.setdefault(int(self.groups[i]), i)
            if len(first) < int(self.groups.max()) + 1:
                return None
            a[list(first.values())] = 1.0
            return a
        a, resid = least_squares(self.B, mask)
        return a if resid < self.tol else None

    def can_decode(self, arrived: Iterable[int] | np.ndarray) -> bool:
        """Whether Σ_j g_j is recoverable exactly from the workers in ``arrived``."""
        return self.decoding_vector(arrived) is not None

    def decode(self, arrived: Iterable[int] | np.ndarray) -> np.ndarray:
        """The decoding vector a (float64 ``[n]``, zero outside F). Raises
        :class:`NotDecodable` naming how many arrived and how many the code needs."""
        a = self.decoding_vector(arrived)
        if a is None:
            got = int(self._mask(arrived).sum())
            need = self.n - self.s
            extra = (f"; the code tolerates s = {self.s} stragglers, so any {need} workers "
                     f"decode" if got >= need else f"; it needs at least n − s = {need}")
            if self.groups is not None:
                extra += " (or one worker of each of its groups)"
            raise NotDecodable(f"{self.name} code (n = {self.n}): the {got} workers that "
                               f"arrived cannot recover the full gradient{extra}")
        return a

    def reconstruction_error(self, a: np.ndarray) -> float:
        """‖aᵀB − 1_k‖_∞ of a decoding vector (0 for an exact decoder)."""
        return float(np.abs(np.asarray(a, dtype=np.float64) @ self.B - 1.0).max())

    def clear_cache(self) -> None:
        self._cache.clear()
        self.cache_hits = self.cache_misses = 0


def least_squares(B: np.ndarray, mask: np.ndarray, refine: int = 2) -> tuple[np.ndarray, float]:
    """a* = argmin ‖B_Fᵀ a − 1‖₂ over a supported on F (``mask``), float64, with ``refine``
    steps of iterative refinement (re-solving for the residual). Returns (a [n], ‖B_Fᵀ a − 1‖_∞);
    the residual is +inf for an empty F. The approximate-gradient-coding decoder (spec §3.2)."""
    n, k = B.shape
    a = np.zeros(n)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return a, float("inf")
    M = B[idx].T                                  # [k, |F|]
    target = np.ones(k)
    x = np.linalg.lstsq(M, target, rcond=None)[0]
    for _ in range(refine):
        r = target - M @ x
        x = x + np.linalg.lstsq(M, r, rcond=None)[0]
    a[idx] = x
    return a, float(np.abs(M @ x - target).max())


# ------------------------------------------------------------------------------ constructors

def frc(n: int, s: int) -> GradientCode:
    """Fractional repetition code: n/(s+1) groups of s+1 consecutive workers, group q sums the
    block {q(s+1), …, q(s+1)+s} of partitions: ``B = I_{n/(s+1)} ⊗ 1_{(s+1)×(s+1)}``.
    ValueError unless 0 ≤ s < n and (s+1) | n."""
    _check_ns(n, s)
    if n % (s + 1):
        raise ValueError(f"frc: s + 1 = {s + 1} must divide n = {n} (use the cyclic code)")
    B = np.kron(np.eye(n // (s + 1)), np.ones((s + 1, s + 1)))
    return GradientCode(B, s, "frc", groups=np.arange(n) // (s + 1))


def cyclic_generator(n: int, s: int, seed: int = 0) -> np.ndarray:
    """H ∈ R^{s×n} (float64): first n − 1 columns i.i.d. N(0, 1) keyed by ``seed``, the last
    one minus the sum of the others, so that H·1_n = 0."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, STREAM_CODING,
                                 n, s])
    H = np.empty((s, n))
    H[:, :-1] = rng.standard_normal((s, n - 1))
    H[:, -1] = -H[:, :-1].sum(axis=1)
    return H


def cyclic(n: int, s: int, seed: int = 0) -> GradientCode:
    """Cyclic repetition code (Tandon et al.'s randomized construction): row i is supported on
    S_i = {i, i+1, …, i+s} (mod n), B_ii = 1 and the other entries v solve
    H[:, S_i∖{i}]·v = −H[:, i], so H·b_iᵀ = 0; with probability 1 over H any n − s rows span
    null(H) ∋ 1_n. ``seed`` keys H (every executor builds the same B). ValueError unless
    0 ≤ s < n."""
    _check_ns(n, s)
    if s == 0:
        return GradientCode(np.eye(n), 0, "cyclic")
    H = cyclic_generator(n, s, seed)
    B = np.zeros((n, n))
    for i in range(n):
        rest = (i + 1 + np.arange(s)) % n
        B[i, i] = 1.0
        B[i, rest] = np.linalg.solve(H[:, rest], -H[:, i])
    return GradientCode(B, s, "cyclic", generator=H)


def uncoded(n: int) -> GradientCode:
    """No coding: worker i holds partition i (B = I); needs every worker (s = 0)."""
    _check_ns(n, 0)
    return GradientCode(np.eye(n), 0, "uncoded")


def from_matrix(B: np.ndarray, stragglers: int, tol: float = DEFAULT_TOL) -> GradientCode:
    """A user's encoding matrix ``B`` ([n, k], any real entries) claimed to tolerate
    ``stragglers``; decoding is by least squares (a set decodes iff its residual < tol)."""
    return GradientCode(np.array(B, dtype=np.float64), stragglers, "matrix", tol=tol)


def _check_ns(n: int, s: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: a positive number of workers, got {n!r}")
    if not 0 <= s < n:
        raise ValueError(f"s: stragglers must be in [0, n) = [0, {n}), got {s}")


# ------------------------------------------------------------------------------ combining

def combine(a: np.ndarray, coded: torch.Tensor) -> torch.Tensor:
    """Σ_i a_i f_i in float64: ``coded`` is ``[n, *shape]`` (any float dtype); rows with
    a_i = 0 are skipped. Returns float64 ``[*shape]``."""
    a = np.asarray(a, dtype=np.float64)
    idx = np.flatnonzero(a)
    if idx.size == 0:
        return torch.zeros(coded.shape[1:], dtype=torch.float64, device=coded.device)
    sel = torch.as_tensor(idx, device=coded.device)
    coef = torch.as_tensor(a[idx], dtype=torch.float64, device=coded.device)
    rows = coded.index_select(0, sel).to(torch.float64).reshape(idx.size, -1)
    return (coef @ rows).reshape(coded.shape[1:])


def ignore_stragglers_vector(n: int, arrived: Iterable[int] | np.ndarray) -> np.ndarray:
    """Uncoded "ignore the stragglers" decoder (spec §3.1): a_i = n / |F| on F, 0 elsewhere,
    i.e. ĝ = (n / |F|) Σ_{i∈F} g_i — unbiased only when F is a uniformly random set independent
    of the data. ValueError for an empty F."""
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(list(arrived) if not isinstance(arrived, np.ndarray) else arrived,
                    dtype=np.int64)] = True
    if not mask.any():
        raise ValueError("ignore_stragglers: no worker arrived")
    return np.where(mask, n / mask.sum(), 0.0)
