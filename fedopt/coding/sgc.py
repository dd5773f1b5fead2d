"""Sequential gradient coding (Krishnan, Ebrahimi & Khisti, "Sequential Gradient Coding for
Straggler Mitigation", ICLR 2023, arXiv 2211.13802; spec gradient_coding.md §2, §2.6).

J gradient jobs g(0..J−1) run on n workers in rounds; job t starts in round t and must be
decodable at the master by the end of round t + T. Every scheme here is *pure bookkeeping*:
its state is a dict of numpy arrays, ``tasks(state, r)`` says what each worker computes in round
r, ``observe(state, r, arrived)`` returns a new state (the input is not modified) with the round's
results of the workers in ``arrived`` (bool ``[n]``) recorded, and which jobs decoded and which
missed their deadline. Replaying the same arrivals gives the same states.

* :class:`GC` — classical gradient coding (T = 0): round r computes job r with a GC code
  tolerating s stragglers; load (s+1)/n. ``s = 0`` is no coding (load 1/n).
* :class:`SRSGC` — selective-repeat SGC, (B, W, λ) with B | (W − 1): a GC code tolerating
  s = ⌈Bλ / (W − 1 + B)⌉; T = B; in round r the workers whose job-(r−B) result is missing, beyond
  s of them (lowest ids), redo their job-(r−B) task instead of job r.
* :class:`MSGC` — multiplexed SGC, (B, W, λ): T = W − 2 + B; a job's data is D1 (n shares of
  W − 1 chunks, uncoded) and D2 (B groups, each GC-coded for λ stragglers); every mini-task has
  size u = (λ+1) / (n((W−1)(λ+1) + B)) (u = 1/(n(W−1)) when λ = n, D2 empty); in round r worker
  i runs W − 1 + B mini-tasks, slot m for job r − m: slots m ≤ W − 2 its next D1 chunk, slots
  m = W − 1 + b its D2 group-b task if all its W − 1 chunks arrived, else a missing D1 chunk.
  Job j decodes at the end of round j + T iff every chunk arrived and every D2 group decodes.

Decodability of a GC code's arrival set is "at least n − s arrived" by default (the cyclic code
is MDS-like: true with probability 1, and what the authors' simulator uses); pass
``can_decode`` (e.g. a :class:`~fedopt.coding.codes.GradientCode`'s) for the exact test.

:func:`simulate_runtime` is the authors' runtime protocol (§2.6): a delay matrix at base load 0
plus ``load · c_comp``, stragglers declared past (1 + μ) · the round's fastest worker, and a
round the scheme cannot absorb waits for every worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from fedopt.coding.bursty import check_params, round_ok

State = dict[str, np.ndarray]
Decodable = Callable[[np.ndarray], bool]

#: a worker's mini-task kinds in :meth:`MSGC.tasks`
IDLE, D1, D2 = 0, 1, 2


def gc_load(n: int, s: int) -> float:
    """Per-round normalized load of classical GC: (s + 1) / n."""
    return (s + 1) / n


def sr_sgc_stragglers(B: int, W: int, lam: int) -> int:
    """s = ⌈Bλ / (W − 1 + B)⌉ of SR-SGC's underlying GC code (B | (W − 1))."""
    return -(-B * lam // (W - 1 + B))


def m_sgc_unit(n: int, B: int, W: int, lam: int) -> float:
    """M-SGC's mini-task size u (fraction of one job's data)."""
    if lam == n:
        return 1.0 / (n * (W - 1))
    return (lam + 1) / (n * ((W - 1) * (lam + 1) + B))


def m_sgc_load(n: int, B: int, W: int, lam: int) -> float:
    """M-SGC's per-round normalized load (W − 1 + B) · u."""
    return (W - 1 + B) * m_sgc_unit(n, B, W, lam)


def _count_decoder(n: int, s: int) -> Decodable:
    return lambda mask: int(np.count_nonzero(mask)) >= n - s


class Scheme:
    """Common driver of the schemes: ``n`` workers, ``jobs`` J, delay ``T``, per-round ``load``
    and the number of rounds J + T. Subclasses implement ``init_state``, ``tasks``, ``_record``
    (store round r's arrivals) and ``_decodable(state, j)``."""

    name = "scheme"
    n: int
    jobs: int
    T: int
    load: float

    @property
    def rounds(self) -> int:
        return self.jobs + self.T

    def _base_state(self) -> State:
        return {"decoded_at": np.full(self.jobs, -1, dtype=np.int64)}

    def observe(self, state: State, r: int, arrived: np.ndarray
                ) -> tuple[State, list[int], list[int]]:
        """The state after round r with the results of the workers in ``arrived`` (bool
        ``[n]``); returns (new state, jobs decoded now, jobs that missed their deadline r)."""
        arrived = np.asarray(arrived, dtype=bool)
        if arrived.shape != (self.n,):
            raise ValueError(f"arrived: a bool mask of shape [{self.n}], got {arrived.shape}")
        new = {k: v.copy() for k, v in state.items()}
        self._record(new, r, arrived)
        decoded, missed = [], []
        for j in range(max(0, r - self.T), min(r, self.jobs - 1) + 1):
            if new["decoded_at"][j] < 0:
                if self._decodable(new, j):
                    new["decoded_at"][j] = r
                    decoded.append(j)
                elif j + self.T == r:
                    missed.append(j)
        return new, decoded, missed

    def feasible(self, state: State, r: int) -> bool:
        """Whether every started job can still decode by its deadline if no worker straggles
        after round r (a forward replay with everybody arriving)."""
        last = min(r, self.jobs - 1) + self.T
        ones = np.ones(self.n, dtype=bool)
        for q in range(r + 1, last + 1):
            state, _, missed = self.observe(state, q, ones)
            if any(j <= r for j in missed):
                return False
        return not any(state["decoded_at"][j] < 0 and j + self.T <= r
                       for j in range(min(r, self.jobs - 1) + 1))

    def idle(self, state: State, r: int) -> bool:
        """True when round r has no task (a tail round whose jobs are all decoded)."""
        return not self.busy(state, r).any()

    def busy(self, state: State, r: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class GC(Scheme):
    """Classical gradient coding as a sequential scheme (T = 0); ``s = 0``: no coding."""

    name = "gc"

    def __init__(self, n: int, s: int, jobs: int, can_decode: Decodable | None = None):
        if not 0 <= s < n:
            raise ValueError(f"s: must be in [0, n) = [0, {n}), got {s}")
        self.n, self.s, self.jobs, self.T = int(n), int(s), int(jobs), 0
        self.load = gc_load(n, s)
        self.can_decode = can_decode or _count_decoder(n, s)

    def init_state(self) -> State:
        return {**self._base_state(), "received": np.zeros((self.jobs, self.n), dtype=bool)}

    def tasks(self, state: State, r: int) -> np.ndarray:
        """int64 ``[n]``: the job each worker computes its GC task of (−1: none)."""
        return np.full(self.n, r if r < self.jobs else -1, dtype=np.int64)

    def busy(self, state: State, r: int) -> np.ndarray:
        return self.tasks(state, r) >= 0

    def _record(self, state: State, r: int, arrived: np.ndarray) -> None:
        if r < self.jobs:
            state["received"][r] |= arrived

    def _decodable(self, state: State, j: int) -> bool:
        return self.can_decode(state["received"][j])


class SRSGC(Scheme):
    """Selective-repeat SGC (see the module docstring); its GC code tolerates ``s``."""

    name = "sr_sgc"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int,
                 can_decode: Decodable | None = None):
        check_params(B, W, lam, n)
        if (W - 1) % B:
            raise ValueError(f"SR-SGC: B = {B} must divide W − 1 = {W - 1}")
        self.n, self.B, self.W, self.lam, self.jobs = int(n), int(B), int(W), int(lam), int(jobs)
        self.s = min(sr_sgc_stragglers(B, W, lam), n - 1)
        self.T = self.B
        self.load = gc_load(n, self.s)
        self.can_decode = can_decode or _count_decoder(n, self.s)

    def init_state(self) -> State:
        return {**self._base_state(), "received": np.zeros((self.jobs, self.n), dtype=bool)}

    def tasks(self, state: State, r: int) -> np.ndarray:
        """int64 ``[n]``: the job whose GC task each worker computes in round r (−1: none):
        job r, except that v − s of the v workers (lowest ids) whose job-(r − B) result is
        missing redo job r − B while it is not decoded."""
        job = np.full(self.n, r if r < self.jobs else -1, dtype=np.int64)
        old = r - self.B
        if 0 <= old < self.jobs and state["decoded_at"][old] < 0:
            missing = np.flatnonzero(~state["received"][old])
            extra = missing.size - self.s
            if extra > 0:
                job[missing[:extra]] = old
        return job

    def busy(self, state: State, r: int) -> np.ndarray:
        return self.tasks(state, r) >= 0

    def _record(self, state: State, r: int, arrived: np.ndarray) -> None:
        job = self.tasks(state, r)
        ok = arrived & (job >= 0)
        state["received"][job[ok], np.flatnonzero(ok)] = True

    def _decodable(self, state: State, j: int) -> bool:
        return self.can_decode(state["received"][j])


class MSGC(Scheme):
    """Multiplexed SGC (see the module docstring); each D2 group's code tolerates λ."""

    name = "m_sgc"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int,
                 can_decode: Decodable | None = None):
        check_params(B, W, lam, n)
        self.n, self.B, self.W, self.lam, self.jobs = int(n), int(B), int(W), int(lam), int(jobs)
        self.T = W - 2 + B
        self.groups = 0 if lam == n else B
        self.unit = m_sgc_unit(n, B, W, lam)
        self.load = m_sgc_load(n, B, W, lam)
        self.can_decode = can_decode or _count_decoder(n, min(lam, n - 1))

    def init_state(self) -> State:
        return {**self._base_state(),
                "chunks": np.zeros((self.jobs, self.n), dtype=np.int64),
                "d2": np.zeros((self.jobs, max(self.groups, 1), self.n), dtype=bool)}

    def tasks(self, state: State, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Round r's mini-tasks, slots m = 0 … W − 2 + B: ``job`` int64 ``[n, slots]`` (r − m),
        ``kind`` (IDLE, D1 or D2) and ``index`` (the D1 chunk — the lowest one not yet received
        — or the D2 group). A slot is IDLE outside jobs 0 … J − 1, for a decoded job, or in a D2
        slot with nothing left to do."""
        slots = self.W - 1 + self.B
        m = np.arange(slots)
        job = np.broadcast_to(r - m, (self.n, slots)).astype(np.int64)
        kind = np.zeros((self.n, slots), dtype=np.int64)
        index = np.zeros((self.n, slots), dtype=np.int64)
        for k in range(slots):
            j = r - k
            if not 0 <= j < self.jobs or state["decoded_at"][j] >= 0:
                continue
            have = state["chunks"][j]
            if k <= self.W - 2:
                kind[:, k], index[:, k] = D1, have
                continue
            short = have < self.W - 1
            kind[:, k] = np.where(short, D1, D2 if self.groups else IDLE)
            index[:, k] = np.where(short, have, k - (self.W - 1))
        return job, kind, index

    def busy(self, state: State, r: int) -> np.ndarray:
        return (self.tasks(state, r)[1] != IDLE).any(axis=1)

    def _record(self, state: State, r: int, arrived: np.ndarray) -> None:
        job, kind, index = self.tasks(state, r)
        for k in range(job.shape[1]):
            j = r - k
            ok = arrived & (kind[:, k] != IDLE)
            if not ok.any():
                continue
            d1 = ok & (kind[:, k] == D1)
            state["chunks"][j, d1] += 1
            d2 = np.flatnonzero(ok & (kind[:, k] == D2))
            state["d2"][j, index[d2, k], d2] = True

    def _decodable(self, state: State, j: int) -> bool:
        if (state["chunks"][j] < self.W - 1).any():
            return False
        return all(self.can_decode(state["d2"][j, b]) for b in range(self.groups))


# ------------------------------------------------------------------------------ runtime

@dataclass
class Runtime:
    """:func:`simulate_runtime`'s result: ``total`` virtual seconds, per-round ``durations``
    (float64 ``[rounds]``), ``waited`` (bool ``[rounds]``: the master waited for everybody),
    ``stragglers`` (bool ``[n, rounds]``: results erased) and ``decoded_at`` (int64 ``[J]``)."""

    total: float
    durations: np.ndarray
    waited: np.ndarray
    stragglers: np.ndarray
    decoded_at: np.ndarray


def simulate_runtime(scheme: Scheme, delay: Any, c_comp: float = 0.0, mu: float = 1.0,
                     admission: str = "feasible", B: int | None = None, W: int | None = None,
                     lam: int | None = None) -> Runtime:
    """Total runtime of ``scheme`` on a delay matrix (spec §2.6): worker i's time in round r is
    ``delay[i, r] + load · c_comp`` (``delay`` at base load 0, float ``[n, ≥ J + T]``); the
    master declares stragglers past ``(1 + μ) · min_i time`` and the round lasts
    ``min((1 + μ) · min_i time, max_i time)`` — unless the scheme cannot absorb the pattern, then
    it waits for everybody (``max_i time``, nobody straggles). Rounds with no task last 0.
    ``delay`` may also be a function ``load -> [n, ≥ J + T]`` giving the times at the scheme's
    load directly (:mod:`fedopt.coding.delays`; ``c_comp`` is then not used).

    ``admission``: ``"feasible"`` — absorb a pattern iff every started job can still decode by
    its deadline when nobody straggles afterwards (never waits needlessly, never decodes
    wrongly); ``"conform"`` — the authors' rule: GC absorbs ≤ s stragglers, SR-SGC/M-SGC absorb a
    round that keeps the history of absorbed stragglers (B, W, λ)-conforming (code reading; give
    B, W, λ), and a job missing its deadline raises RuntimeError.
    """
    n = scheme.n
    if callable(delay):
        delay, c_comp = np.asarray(delay(scheme.load), dtype=np.float64), 0.0
    delay = np.asarray(delay, dtype=np.float64)
    if delay.shape[0] != n or delay.shape[1] < scheme.rounds:
        raise ValueError(f"delay: need shape [{n}, >= {scheme.rounds}], got {delay.shape}")
    if admission not in ("feasible", "conform"):
        raise ValueError(f"admission: 'feasible' or 'conform', got {admission!r}")
    state = scheme.init_state()
    R = scheme.rounds
    durations, waited = np.zeros(R), np.zeros(R, dtype=bool)
    history = np.zeros((n, R), dtype=bool)
    everyone = np.ones(n, dtype=bool)
    for r in range(R):
        busy = scheme.busy(state, r)
        if not busy.any():
            continue
        t = delay[:, r] + scheme.load * c_comp
        t_busy = t[busy]
        cut = min((1.0 + mu) * t_busy.min(), t_busy.max())
        arrived = ~busy | (t <= cut)
        ok = True
        if not arrived.all():
            if admission == "feasible":
                trial, _, missed = scheme.observe(state, r, arrived)
                ok = not missed and scheme.feasible(trial, r)
            elif isinstance(scheme, GC):
                ok = int((~arrived).sum()) <= scheme.s
            else:
                history[:, r] = ~arrived
                ok = round_ok(history, r, B, W, lam)
        if not ok:
            arrived, cut = everyone, t_busy.max()
            waited[r] = True
        history[:, r] = ~arrived
        durations[r] = cut
        state, _, missed = scheme.observe(state, r, arrived)
        if missed:
            raise RuntimeError(f"{scheme.name}: jobs {missed} missed their deadline at round {r}")
    return Runtime(float(durations.sum()), durations, waited, history, state["decoded_at"])
