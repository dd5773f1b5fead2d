r"""Curricula in federated learning (Vahidian et al., "When Do Curricula Work in Federated
Learning?", ICCV 2023; the authors' code sreevatsank1999/Curriculum-FL as executed).

Client i orders its n_i rows by a score s (the per-example loss of a model; ``score: global``:
the received model's, the authors' 'G'; ``score: local``: the client's live iterate of this job,
re-scored at the start of every pass after the first — not the authors' 'L', which scores with
the client's model from its previous visit, per-client state across rounds that fedopt does not
keep; 'LG' and the expert 'E' are not implemented): ``curriculum``
ascending (easy first), ``anti`` descending, ``random`` a keyed random order. Ties, and the whole
``random`` order, are broken by keyed random bits of (seed, key, client, row), so a constant score
gives exactly the ``random`` order. Training walks through passes over the prefix
``order[0 : clip(max(g(t), min_prefix), 1, n_i)]``, t the local step at which the pass starts
(T the job's local steps; with an adaptive batch size the engine paces over samples instead: t
the samples processed before the pass, T the job's sample budget), each pass a fresh keyed shuffle of the prefix (:class:`fedopt.engine.batches.BatchStream`).

Pacing functions g(t) (Wu, Dyer & Neyshabur, ICLR 2021, as in the authors' code), with N rows,
T total steps, b̃ = b·N, ã = a·T, c = 10, truncated to an int and clipped to [1, N]:

    linear: b̃ + (N−b̃)·t/ã            quad: b̃ + (N−b̃)·(t/ã)²        sqrt: b̃ + (N−b̃)·(t/ã)^½
    step:   b̃ + N·⌊t/ã⌋               exp:  b̃ + (N−b̃)(e^{c t/ã} − 1)/(e^c − 1)
    log:    b̃ + (N−b̃)(1 + (1/c)·ln(t/ã + e^{−c}))

(linear, quad and sqrt stay at N once t ≥ ã.) b = 1 makes g ≡ N: every order then visits the
same rows as plain epochs, and ``random`` reproduces the plain minibatch plan exactly.

The client-level curriculum (:func:`client_pool`) orders clients by their mean score and lets the
first g(u) of them be sampled, u the client updates so far.

Plain PyTorch (one data set of n rows, T steps of batch B)::

    with torch.no_grad():
        scores = F.cross_entropy(model(X), Y, reduction="none").numpy()
    order = order_rows(scores, "curriculum", seed=0, key=0, client_id=0)
    step = 0
    while step < T:                       # one pass over the paced prefix, shuffled
        perm = rng.permutation(order[:prefix_size(step, T, len(order), "linear", 0.8, 0.2, 32)])
        for i in range(0, len(perm), B):
            idx = torch.as_tensor(perm[i:i + B])
            ...                           # a step on X[idx], Y[idx]
            step += 1
"""
from __future__ import annotations

import math

import numpy as np

from fedopt.rng import STREAM_CURRICULUM, keyed_bits

ORDERS = ("curriculum", "anti", "random")
PACINGS = ("linear", "quad", "sqrt", "step", "exp", "log")
SCORES = ("global", "local")
_C = 10.0


def pacing(name: str, t: int | float, total_steps: int | float, n: int, a: float, b: float
           ) -> int:
    """g(t) of the module docstring (int in [1, n]). ValueError for an unknown name or
    a ≤ 0."""
    if name not in PACINGS:
        raise ValueError(f"pacing: one of {PACINGS}, got {name!r}")
    if not a > 0:
        raise ValueError(f"pacing_a: must be > 0, got {a!r}")
    N = float(n)
    bt, at = b * N, a * float(total_steps)
    r = t / at if at > 0 else math.inf
    if name == "step":
        v = bt + N * math.floor(r) if math.isfinite(r) else N
    elif name in ("linear", "quad", "sqrt"):
        p = {"linear": 1.0, "quad": 2.0, "sqrt": 0.5}[name]
        v = bt + (N - bt) * min(r, 1.0) ** p
    elif name == "exp":
        v = bt + (N - bt) * (math.expm1(_C * r) / math.expm1(_C)) if r < 50 else N
    else:
        v = bt + (N - bt) * (1 + math.log(r + math.exp(-_C)) / _C) if math.isfinite(r) else N
    return int(min(max(int(v), 1), n))


def order_rows(scores: np.ndarray, order: str, seed: int, key: int, client_id: int
               ) -> np.ndarray:
    """Local row ids 0..n−1 in curriculum order: ascending ``scores`` (``curriculum``),
    descending (``anti``) or none (``random``), ties by keyed random bits of (seed, key,
    client, row) — so a constant score gives the ``random`` order."""
    if order not in ORDERS:
        raise ValueError(f"order: one of {ORDERS}, got {order!r}")
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    tie = keyed_bits(seed, STREAM_CURRICULUM, key, client_id, np.arange(n))
    if order == "random":
        return np.argsort(tie, kind="stable")
    primary = s if order == "curriculum" else -s
    return np.lexsort((tie, primary))


def prefix_size(step: int, total_steps: int, n: int, name: str, a: float, b: float,
                min_prefix: int) -> int:
    """The rows of a pass starting at local ``step``: min(n, max(g(step), min_prefix))."""
    return int(min(n, max(pacing(name, step, total_steps, n, a, b), min_prefix)))


def client_pool(client_scores: np.ndarray, order: str, updates: int, total_updates: int,
                name: str, a: float, b: float, seed: int, key: int = 0, min_size: int = 1
                ) -> np.ndarray:
    """The client-level curriculum's pool: client ids sorted by score (``order`` as for rows,
    keyed ties) cut to the first max(g(updates), ``min_size``) of them, g the pacing over
    ``total_updates`` client updates with N = number of clients. The authors then shuffle the
    pool and cut it into rounds."""
    s = np.asarray(client_scores, dtype=np.float64)
    ranked = order_rows(s, order, seed, key, -1)
    return ranked[:max(pacing(name, updates, total_updates, len(s), a, b), min_size)]
