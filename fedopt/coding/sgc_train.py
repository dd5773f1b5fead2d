"""Training T + 1 models concurrently with sequential gradient coding (spec gradient_coding.md
§2.1, §2.7): job j is a gradient of model m = j mod (T + 1) at its current parameters θ, so a
model's next job (j + T + 1) starts in round j + T + 1, after job j's deadline j + T — the delay T
costs nothing algorithmically.

:func:`train_sequential` drives an :class:`~fedopt.coding.sgc.SRSGC` or
:class:`~fedopt.coding.sgc.MSGC` scheme through a straggler pattern with real gradients: in each
round the workers that answer deliver the results of their tasks (``scheme.tasks``) computed at
the parameters of the task's job; when ``scheme.observe`` reports a job decodable its gradient is
assembled and the job's model is updated. The data of one job is split into pieces
(:func:`pieces`): SR-SGC — n partitions, worker i's task f_i = Σ_p B_ip g_p; M-SGC — n(W − 1)
uncoded D1 chunks (worker i's chunks i·(W−1) … i·(W−1) + W − 2) and B groups of n D2
sub-partitions, worker i's group-b task Σ_p B^λ_ip g_{b,p}; the job's gradient is the sum of all
D1 chunks plus each group decoded by its code. Every gradient is float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fedopt.coding.codes import GradientCode
from fedopt.coding.sgc import D1, D2, MSGC, SRSGC

#: ``grad(theta, piece) -> g``: the gradient sum over the rows of piece ``piece`` at ``theta``
PieceGrad = Callable[[np.ndarray, int], np.ndarray]


def pieces(scheme: SRSGC | MSGC) -> int:
    """Number of data pieces of one job: n (SR-SGC) or n(W − 1) + B·n (M-SGC; D1 chunks first,
    then D2 group b's sub-partition p at n(W − 1) + b·n + p)."""
    if isinstance(scheme, SRSGC):
        return scheme.n
    return scheme.n * (scheme.W - 1) + scheme.groups * scheme.n


def train_sequential(scheme: SRSGC | MSGC, code: GradientCode, grad: PieceGrad,
                     thetas: list[np.ndarray],
                     update: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     stragglers: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Run ``scheme.jobs`` jobs over ``T + 1`` models (``thetas``, float64 vectors) through the
    straggler pattern ``stragglers`` (bool ``[n, ≥ J + T]``). ``code``: SR-SGC's GC code
    (tolerating ``scheme.s``) or M-SGC's per-group code (tolerating λ). ``update(θ, g) -> θ'``
    applies a decoded gradient. Returns the final models and ``decoded_at`` (int64 ``[J]``).
    RuntimeError when a job misses its deadline (the pattern is not absorbed)."""
    M = scheme.T + 1
    if len(thetas) != M:
        raise ValueError(f"thetas: one model per pipeline slot, T + 1 = {M}, got {len(thetas)}")
    n, J = scheme.n, scheme.jobs
    thetas = [np.asarray(t, dtype=np.float64).copy() for t in thetas]
    dim = thetas[0].shape
    at: dict[int, np.ndarray] = {}                       # θ at which job j is computed
    plain = np.zeros((J,) + dim)                         # M-SGC: Σ received D1 chunks
    coded = np.zeros((J, max(getattr(scheme, "groups", 1), 1), n) + dim)
    state = scheme.init_state()
    for r in range(scheme.rounds):
        if r < J:
            at[r] = thetas[r % M].copy()
        arrived = ~np.asarray(stragglers[:, r], dtype=bool)
        if isinstance(scheme, SRSGC):
            job = scheme.tasks(state, r)
            for i in np.flatnonzero(arrived & (job >= 0)):
                j = int(job[i])
                coded[j, 0, i] = sum(code.B[i, p] * grad(at[j], p)
                                     for p in np.flatnonzero(code.B[i]))
        else:
            job, kind, index = scheme.tasks(state, r)
            W1 = scheme.W - 1
            for i in np.flatnonzero(arrived):
                for k in range(job.shape[1]):
                    j = int(job[i, k])
                    if kind[i, k] == D1:
                        plain[j] += grad(at[j], i * W1 + int(index[i, k]))
                    elif kind[i, k] == D2:
                        b = int(index[i, k])
                        base = n * W1 + b * n
                        coded[j, b, i] = sum(code.B[i, p] * grad(at[j], base + p)
                                             for p in np.flatnonzero(code.B[i]))
        state, decoded, missed = scheme.observe(state, r, arrived)
        if missed:
            raise RuntimeError(f"{scheme.name}: jobs {missed} missed their deadline (round {r})")
        for j in decoded:
            if isinstance(scheme, SRSGC):
                g = np.tensordot(code.decode(state["received"][j]), coded[j, 0], axes=1)
            else:
                g = plain[j] + sum(np.tensordot(code.decode(state["d2"][j, b]), coded[j, b],
                                                axes=1) for b in range(scheme.groups))
            thetas[j % M] = update(at.pop(j), g)
    return thetas, state["decoded_at"]
