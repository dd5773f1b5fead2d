"""Sequential gradient coding in training (Krishnan, Ebrahimi & Khisti, ICLR 2023; spec
gradient_coding.md §2): ``algorithm: {name: gradient_coding, code: sr_sgc | m_sgc}``.

J gradient jobs run on n workers in rounds on the virtual clock; job j may decode up to T rounds
late (SR-SGC: T = B, M-SGC: T = W − 2 + B), so the run trains M = T + 1 *replicas* of the model
in a pipeline: job j is a full gradient of replica j mod M at its current parameters (the
replica's previous job, j − M, decoded by round j − 1), and the decoded gradient updates that
replica with ``client.optimizer`` (state per replica). All replicas start from the run's initial
model, so each follows full-gradient training exactly (a sweep would give them different
hyper-parameters; here they show the pipeline is exact). ``state.params`` — what rows evaluate —
is the replica updated last.

One server step is one SGC round r (job r starts); the step of the last job also runs the T tail
rounds, so ``rounds: J`` steps process J jobs. In round r worker i's time is the clock's time of
(worker i, round r) with its compute part times n·load (load: the scheme's per-round fraction of
one job; 1 for uncoded work of one partition); the master declares stragglers past
(1 + μ)·the fastest busy worker (``mu``, default 1) and the round lasts until then — unless the
pattern cannot be absorbed (a started job could no longer decode by its deadline even if nobody
straggled afterwards), then it waits for everybody (:func:`fedopt.coding.sgc.simulate_runtime`'s
protocol, "feasible" admission). Round results use real gradients: the data's clients are grouped
into the scheme's pieces (SR-SGC: n partitions under a cyclic code for s = ⌈Bλ/(W − 1 + B)⌉;
M-SGC: n(W − 1) D1 chunks and B groups of n D2 sub-partitions under a cyclic code for λ) and each
arrived task is computed at its job's parameters, in float64.

Rows gain ``virtual_time``, ``decoded`` (jobs decoded so far), ``worker_load`` (n·load:
partition-equivalents per worker and round), ``waited`` (rounds so far in which the master waited
for everybody) and ``stragglers`` (results erased so far).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from fedopt.algorithms.base import Params, ServerState
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.coding.codes import cyclic
from fedopt.coding.sgc import D1, D2, MSGC, SRSGC
from fedopt.engine.contract import Executor
from fedopt.engine.nonfinite import check_server_state
from fedopt.engine.program import LocalProgram
from fedopt.schema import ConfigError


class SequentialCoding:
    """The master of SGC training (see the module docstring)."""

    def __init__(self, counts: np.ndarray, code: str, num_workers: int, burst: int, window: int,
                 lam: int, jobs: int, clock_config: dict[str, Any] | None = None, seed: int = 0,
                 mu: float = 1.0):
        self.counts = np.asarray(counts, dtype=np.int64)
        n, N = int(num_workers), len(self.counts)
        try:
            self.scheme = (SRSGC if code == "sr_sgc" else MSGC)(n, burst, window, lam, jobs)
        except ValueError as e:
            raise ConfigError(f"algorithm.burst: {e} (algorithm.burst = B, algorithm.window = "
                              f"W, algorithm.lam = λ)") from None
        sch = self.scheme
        self.n, self.J, self.T, self.M = n, int(jobs), sch.T, sch.T + 1
        s = sch.s if code == "sr_sgc" else min(lam, n - 1)
        self.code = cyclic(n, s, seed=seed) if (code == "sr_sgc" or sch.groups) else None
        if self.code is not None:
            sch.can_decode = self.code.can_decode
        self.P = n if code == "sr_sgc" else n * (window - 1) + sch.groups * n
        if self.P > N:
            raise ConfigError(f"algorithm.num_workers: {code} splits the data into {self.P} "
                              f"pieces of whole clients, but the data set has {N} clients")
        piece = (np.arange(N, dtype=np.int64) * self.P) // N
        self._weights = torch.zeros((self.P, N), dtype=torch.float64)
        self._weights[torch.as_tensor(piece), torch.arange(N)] = torch.as_tensor(
            self.counts, dtype=torch.float64)
        self.piece_rows = np.bincount(piece, weights=self.counts, minlength=self.P)
        self.total_rows = float(self.counts.sum())
        self.clock_config = validate_clock_config(clock_config or {})
        self.clock = VirtualClock(self.clock_config, n, seed)
        self.mu = float(mu)
        self.seed = int(seed)

    def init(self, params: Params) -> ServerState:
        params = {k: v.detach().clone() for k, v in params.items()}
        extra = {"sgc": {"now": 0.0, "round": 0, "waited": 0, "stragglers": 0,
                         "scheme": self.scheme.init_state(),
                         "replicas": [{k: v.clone() for k, v in params.items()}
                                      for _ in range(self.M)],
                         "opt": [{} for _ in range(self.M)], "at": {}, "acc": {},
                         "clock": {k: torch.from_numpy(np.array(v))
                                   for k, v in self.clock.init_state().items()}}}
        return ServerState(params=params, opt_state={}, extra=extra)

    def local_program(self) -> LocalProgram:
        return LocalProgram()

    # -- one round -----------------------------------------------------------------------------
    def _times(self, s: dict, r: int) -> np.ndarray:
        cstate = {k: v.numpy() for k, v in s["clock"].items()}
        workers = np.arange(self.n, dtype=np.int64)
        work = self.clock.work(workers, np.full(self.n, r, dtype=np.int64), cstate)
        comm = self.clock.comm[workers]
        scale = self.scheme.load * self.n
        with np.errstate(invalid="ignore"):
            scaled = np.where(np.isinf(work), math.inf, scale * (work - comm) + comm)
        now = float(s["now"])
        return self.clock.availability.finish(workers, now, scaled, cstate) - now

    def _pieces(self, params: Params, executor: Executor) -> dict[str, torch.Tensor]:
        """Piece gradient sums ``{name: [P, d]}`` (float64) at ``params``."""
        per = executor.full_gradients(params, np.arange(len(self.counts), dtype=np.int64))
        return {k: self._weights.to(v.device) @ v.reshape(v.shape[0], -1).to(torch.float64)
                for k, v in per.items()}

    def _round(self, state: ServerState, executor: Executor, optimizer: Any) -> int | None:
        """Run SGC round ``s["round"]``; returns the replica updated last (None: none)."""
        s = state.extra["sgc"]
        sch, r, n = self.scheme, int(s["round"]), self.n
        if r < self.J:
            s["at"][str(r)] = {k: v.clone() for k, v in s["replicas"][r % self.M].items()}
        busy = sch.busy(s["scheme"], r)
        arrived = np.ones(n, dtype=bool)
        duration = 0.0
        if busy.any():
            dur = self._times(s, r)
            if not np.isfinite(dur[busy]).any():
                raise RuntimeError(f"gradient_coding: no worker returns in round {r} (clock)")
            cut = min((1.0 + self.mu) * float(dur[busy].min()), float(dur[busy].max()))
            arrived = ~busy | (dur <= cut)
            if not arrived.all():
                trial, _, missed = sch.observe(s["scheme"], r, arrived)
                if missed or not sch.feasible(trial, r):
                    arrived[:] = True
                    s["waited"] = int(s["waited"]) + 1
            if arrived.all():
                cut = float(dur[busy].max())
                if not math.isfinite(cut):
                    raise RuntimeError(f"gradient_coding: a worker never returns in round {r} "
                                       f"and the scheme must wait for it (clock)")
            duration = cut
            s["stragglers"] = int(s["stragglers"]) + int((busy & ~arrived).sum())
            self._compute(s, r, arrived, executor)
        s["scheme"], decoded, missed = sch.observe(s["scheme"], r, arrived)
        if missed:
            raise RuntimeError(f"gradient_coding: jobs {missed} missed their deadline")
        s["now"] = float(s["now"]) + duration
        s["round"] = r + 1
        last = None
        for j in decoded:
            g = self._assemble(s, j)
            m = j % self.M
            theta = s["at"].pop(str(j))
            grads = {k: (g[k] / self.total_rows).reshape(theta[k].shape).to(theta[k].dtype)
                     for k in theta}
            opt = s["opt"][m] or optimizer.init(theta)
            new, opt = optimizer.update(theta, grads, opt)
            check_server_state(j, new, opt)
            s["replicas"][m], s["opt"][m] = new, opt
            last = m
        return last

    def _compute(self, s: dict, r: int, arrived: np.ndarray, executor: Executor) -> None:
        """Record the arrived workers' round-r task results (real gradients, float64)."""
        sch, n = self.scheme, self.n
        cache: dict[int, dict[str, torch.Tensor]] = {}

        def pieces(j: int) -> dict[str, torch.Tensor]:
            if j not in cache:
                cache[j] = self._pieces(s["at"][str(j)], executor)
            return cache[j]

        def acc(j: int) -> dict[str, Any]:
            if str(j) not in s["acc"]:
                shapes = {k: v.numel() for k, v in s["at"][str(j)].items()}
                G = max(getattr(sch, "groups", 1), 1)
                s["acc"][str(j)] = {
                    "plain": {k: torch.zeros(d, dtype=torch.float64) for k, d in shapes.items()},
                    "coded": {k: torch.zeros((G, n, d), dtype=torch.float64)
                              for k, d in shapes.items()}}
            return s["acc"][str(j)]

        B = None if self.code is None else torch.as_tensor(self.code.B.copy())
        if isinstance(sch, SRSGC):
            job = sch.tasks(s["scheme"], r)
            for i in np.flatnonzero(arrived & (job >= 0)):
                j = int(job[i])
                a = acc(j)
                for k, P in pieces(j).items():
                    a["coded"][k][0, i] = B[i].to(P.device) @ P
            return
        job, kind, index = sch.tasks(s["scheme"], r)
        W1 = sch.W - 1
        for i in np.flatnonzero(arrived):
            for slot in range(job.shape[1]):
                j = int(job[i, slot])
                if kind[i, slot] == D1:
                    a = acc(j)
                    for k, P in pieces(j).items():
                        a["plain"][k] += P[i * W1 + int(index[i, slot])]
                elif kind[i, slot] == D2:
                    b, a = int(index[i, slot]), acc(j)
                    base = n * W1 + b * n
                    for k, P in pieces(j).items():
                        a["coded"][k][b, i] = B[i].to(P.device) @ P[base:base + n]

    def _assemble(self, s: dict, j: int) -> dict[str, torch.Tensor]:
        a = s["acc"].pop(str(j))
        st = s["scheme"]
        if isinstance(self.scheme, SRSGC):
            vecs = [self.code.decode(st["received"][j])]
        else:
            vecs = [self.code.decode(st["d2"][j, b]) for b in range(self.scheme.groups)]
        out = {}
        for k in a["plain"]:
            g = a["plain"][k].clone()
            for b, vec in enumerate(vecs):
                g += torch.as_tensor(vec) @ a["coded"][k][b]
            out[k] = g
        return out

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """SGC round r = ``state.round`` (job r starts); the last job's step also runs the tail
        rounds until every job decoded."""
        if optimizer is None:
            optimizer = executor.optimizer
        s = state.extra["sgc"]
        if len(s["scheme"]["decoded_at"]) != self.J:
            raise ConfigError(f"algorithm.rounds: a {self.scheme.name} run's rounds are its "
                              f"jobs J and fix its schedule; the checkpoint has J = "
                              f"{len(s['scheme']['decoded_at'])}, this config {self.J}")
        last = self._round(state, executor, optimizer)
        if state.round == self.J - 1:
            while int(s["round"]) < self.scheme.rounds:
                m = self._round(state, executor, optimizer)
                last = m if m is not None else last
        params = state.params if last is None else {k: v.clone() for k, v in
                                                    s["replicas"][last].items()}
        decoded = int((s["scheme"]["decoded_at"] >= 0).sum())
        stats = {"virtual_time": float(s["now"]), "decoded": decoded,
                 "worker_load": self.scheme.load * self.n, "waited": int(s["waited"]),
                 "stragglers": int(s["stragglers"]), "updates": self.n,
                 "samples": int(round(self.scheme.load * self.total_rows * self.n))}
        return dataclasses.replace(state, params=params, round=state.round + 1), stats
