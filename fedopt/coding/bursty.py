"""The (B, W, λ)-bursty straggler model of sequential gradient coding (Krishnan, Ebrahimi &
Khisti, ICLR 2023, arXiv 2211.13802; spec gradient_coding.md §2.2) and a seeded generator of
conforming patterns (§3.3, "(B, W, λ)-adversarial").

A straggler pattern is a bool matrix ``S[i, r]`` (n workers × R rounds; True: worker i straggles
in round r). It conforms to (B, W, λ), 1 ≤ B < W, 1 ≤ λ ≤ n, when in every window of W
consecutive rounds

1. (spatial) at most λ distinct workers straggle, and
2. (temporal) each worker's straggles form one burst of at most B rounds.

Condition 2 has two readings (spec §6). ``strict=False`` (default) is the authors' code's
operational check: a worker straggling in round r did not straggle in any round of
[r − W + 1, r − B] (so two short bursts within B rounds pass). ``strict=True`` is the paper's
wording: inside every window, a worker's straggling rounds are consecutive and at most B.
Windows are those ending at every round r (the first W − 1 are truncated at round 0).
"""
from __future__ import annotations

import numpy as np

from fedopt.rng import STREAM_BURSTY, keyed_uniform


def check_params(B: int, W: int, lam: int, n: int) -> None:
    """ValueError unless 1 ≤ B < W and 1 ≤ λ ≤ n."""
    if not 1 <= B < W:
        raise ValueError(f"bursty model: need 1 <= B < W, got B = {B}, W = {W}")
    if not 1 <= lam <= n:
        raise ValueError(f"bursty model: need 1 <= λ <= n = {n}, got λ = {lam}")


def round_ok(S: np.ndarray, r: int, B: int, W: int, lam: int, strict: bool = False) -> bool:
    """Whether round r's column of ``S`` keeps the window ending at r conforming, given rounds
    before r (both conditions; rounds after r are not looked at)."""
    lo = max(0, r - W + 1)
    window = S[:, lo:r + 1]
    if int(window.any(axis=1).sum()) > lam:
        return False
    now = np.flatnonzero(S[:, r])
    if now.size == 0:
        return True
    if not strict:
        hi = r - B + 1              # rounds [r − W + 1, r − B]
        return hi <= lo or not S[now, lo:hi].any()
    for i in now:
        rounds = np.flatnonzero(window[i])
        if rounds.size > B or rounds[-1] - rounds[0] + 1 != rounds.size:
            return False
    return True


def conforms(S: np.ndarray, B: int, W: int, lam: int, strict: bool = False) -> bool:
    """Whether the whole pattern ``S`` (bool ``[n, R]``) conforms to (B, W, λ)."""
    S = np.asarray(S, dtype=bool)
    check_params(B, W, lam, S.shape[0])
    return all(round_ok(S, r, B, W, lam, strict) for r in range(S.shape[1]))


def generate(n: int, rounds: int, B: int, W: int, lam: int, seed: int = 0, p_start: float = 0.05,
             p_continue: float = 0.7, strict: bool = False) -> np.ndarray:
    """A random pattern (bool ``[n, rounds]``) that conforms to (B, W, λ): round by round, a
    worker that straggled in the previous round tries to continue its burst with probability
    ``p_continue``, any other starts one with probability ``p_start``; each proposal (in a
    keyed random order of workers) is kept only if the window ending at this round still
    conforms. Draws are keyed by (seed, round, worker): the same seed gives the same pattern."""
    check_params(B, W, lam, n)
    S = np.zeros((n, rounds), dtype=bool)
    for r in range(rounds):
        u = keyed_uniform(seed, STREAM_BURSTY, r, np.arange(n), 0)
        order = np.argsort(keyed_uniform(seed, STREAM_BURSTY, r, np.arange(n), 1), kind="stable")
        prev = S[:, r - 1] if r else np.zeros(n, dtype=bool)
        want = np.where(prev, u < p_continue, u < p_start)
        for i in order[want[order]]:
            S[i, r] = True
            if not round_ok(S, r, B, W, lam, strict):
                S[i, r] = False
    return S
