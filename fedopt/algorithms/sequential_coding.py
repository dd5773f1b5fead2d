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

``live: true`` (a Ray executor): each round's tasks run on the worker actors (one call per
actor: :mod:`fedopt.server.ray_coded`) at their jobs' parameters, and the master applies the
same rule in real time — the first busy answer after e seconds sets the cut (1 + μ)·e, answers
after it are stragglers, and an infeasible pattern waits for everybody. With
``seconds_per_unit`` (answers held that many seconds per unit of clock time) the stragglers,
waits and decode rounds equal the virtual-clock run's and the replicas agree to round-off.
"""
from __future__ import annotations

import dataclasses
import math
import time
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
                 mu: float = 1.0, live: bool = False, seconds_per_unit: float | None = None):
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
        self.piece = piece
        self._weights = torch.zeros((self.P, N), dtype=torch.float64)
        self._weights[torch.as_tensor(piece), torch.arange(N)] = torch.as_tensor(
            self.counts, dtype=torch.float64)
        self.piece_rows = np.bincount(piece, weights=self.counts, minlength=self.P)
        self.total_rows = float(self.counts.sum())
        self.clock_config = validate_clock_config(clock_config or {})
        self.clock = VirtualClock(self.clock_config, n, seed)
        self.mu = float(mu)
        self.seed = int(seed)
        self.live, self.seconds_per_unit = bool(live), seconds_per_unit

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
            if self.live:
                arrived, duration, results = self._live_round(s, r, busy, dur, executor)
            else:
                arrived, duration = self._stragglers(s, r, busy, dur)
            s["stragglers"] = int(s["stragglers"]) + int((busy & ~arrived).sum())
            if not self.live:
                results = self._compute(s, r, arrived, executor)
            self._record(s, r, results)
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

    def _stragglers(self, s: dict, r: int, busy: np.ndarray, dur: np.ndarray
                    ) -> tuple[np.ndarray, float]:
        """(arrived, round duration) on the clock: stragglers are the busy workers past the
        cut (1 + μ)·the fastest; everybody when the pattern cannot be absorbed."""
        cut = min((1.0 + self.mu) * float(dur[busy].min()), float(dur[busy].max()))
        arrived = ~busy | (dur <= cut)
        if not arrived.all() and self._must_wait(s, r, arrived):
            arrived[:] = True
        if arrived.all():
            cut = float(dur[busy].max())
            if not math.isfinite(cut):
                raise RuntimeError(f"gradient_coding: a worker never returns in round {r} "
                                   f"and the scheme must wait for it (clock)")
        return arrived, cut

    def _must_wait(self, s: dict, r: int, arrived: np.ndarray) -> bool:
        """True (and counted in ``waited``) when the arrivals leave a started job unable to
        decode by its deadline even if nobody straggled afterwards."""
        trial, _, missed = self.scheme.observe(s["scheme"], r, arrived)
        if missed or not self.scheme.feasible(trial, r):
            s["waited"] = int(s["waited"]) + 1
            return True
        return False

    def _tasks(self, s: dict, r: int, workers: np.ndarray
               ) -> list[tuple[int, list[tuple[int, int, int, np.ndarray]]]]:
        """Round r's tasks of ``workers``: ``[(i, [(job, kind, index, coefs [P]), ...])]``,
        task result Σ_p coefs[p]·g_p(θ_job) over the data pieces (SR-SGC: B_i on the n
        partitions; M-SGC: D1 chunk i·(W−1) + index, or D2 group ``index``'s code row B_i on
        its n sub-partitions)."""
        sch, n = self.scheme, self.n
        B = None if self.code is None else self.code.B
        out = []
        if isinstance(sch, SRSGC):
            job = sch.tasks(s["scheme"], r)
            for i in workers:
                if job[i] >= 0:
                    coefs = np.zeros(self.P)
                    coefs[:n] = B[i]
                    out.append((int(i), [(int(job[i]), 0, 0, coefs)]))
            return out
        job, kind, index = sch.tasks(s["scheme"], r)
        W1 = sch.W - 1
        for i in workers:
            slots = []
            for slot in range(job.shape[1]):
                coefs = np.zeros(self.P)
                if kind[i, slot] == D1:
                    coefs[i * W1 + int(index[i, slot])] = 1.0
                elif kind[i, slot] == D2:
                    base = n * W1 + int(index[i, slot]) * n
                    coefs[base:base + n] = B[i]
                else:
                    continue
                slots.append((int(job[i, slot]), int(kind[i, slot]), int(index[i, slot]), coefs))
            if slots:
                out.append((int(i), slots))
        return out

    def _compute(self, s: dict, r: int, arrived: np.ndarray, executor: Executor
                 ) -> dict[int, list[dict[str, torch.Tensor]]]:
        """The arrived workers' round-r task results, in-process (real gradients, float64):
        ``{i: [{name: [d]} per task]}``."""
        cache: dict[int, dict[str, torch.Tensor]] = {}
        out = {}
        for i, slots in self._tasks(s, r, np.flatnonzero(arrived)):
            res = []
            for j, _, _, coefs in slots:
                if j not in cache:
                    cache[j] = self._pieces(s["at"][str(j)], executor)
                res.append({k: torch.as_tensor(coefs).to(P.device) @ P
                            for k, P in cache[j].items()})
            out[i] = res
        return out

    def _record(self, s: dict, r: int, results: dict[int, list[dict[str, torch.Tensor]]]
                ) -> None:
        """File the arrived workers' task results into their jobs' accumulators."""
        n = self.n
        tasks = dict(self._tasks(s, r, np.array(sorted(results), dtype=np.int64)))
        G = max(getattr(self.scheme, "groups", 1), 1)
        for i, res in results.items():
            for (j, kind, index, _), out in zip(tasks[i], res):
                if str(j) not in s["acc"]:
                    shapes = {k: v.numel() for k, v in s["at"][str(j)].items()}
                    s["acc"][str(j)] = {
                        "plain": {k: torch.zeros(d, dtype=torch.float64)
                                  for k, d in shapes.items()},
                        "coded": {k: torch.zeros((G, n, d), dtype=torch.float64)
                                  for k, d in shapes.items()}}
                a = s["acc"][str(j)]
                for k, v in out.items():
                    v = v.to(a["plain"][k].device)
                    if kind == D1:
                        a["plain"][k] += v
                    else:               # SR-SGC's one coded task, or M-SGC's D2 group
                        a["coded"][k][index if kind == D2 else 0, i] = v

    # -- live: the tasks on the executor's workers, stragglers decided in real time ------------
    def _live_round(self, s: dict, r: int, busy: np.ndarray, dur: np.ndarray, executor: Any
                    ) -> tuple[np.ndarray, float, dict[int, list[dict[str, torch.Tensor]]]]:
        """Round r on the executor's workers (one call per worker actor): every busy worker's
        tasks at their jobs' parameters; with ``seconds_per_unit`` each answer is held
        ``seconds_per_unit ×`` its clock time (+inf: never answers). The master's rule in real
        time: once the first busy worker answered after e seconds, the workers answering by
        (1 + μ)·e arrived, the rest straggle — unless the pattern cannot be absorbed, then it
        waits for every busy worker. Returns (arrived, duration, results): the duration is
        virtual (the clock's cut) with ``seconds_per_unit``, else the round's wall seconds."""
        from fedopt.engine.contract import check_coded

        check_coded(executor, "gradient_coding (live)")
        spu, n = self.seconds_per_unit, self.n
        run = busy & (np.isfinite(dur) if spu is not None else True)
        tasks = self._tasks(s, r, np.flatnonzero(run))
        jobs = sorted({j for _, slots in tasks for j, *_ in slots})
        where = {j: k for k, j in enumerate(jobs)}
        sent = []
        for i, slots in tasks:
            sub = []
            for j, _, _, coefs in slots:
                ids = np.flatnonzero(coefs[self.piece] != 0)
                sub.append((where[j], ids, coefs[self.piece[ids]] * self.counts[ids]))
            sent.append((i, sub))
        start = time.monotonic()
        call = executor.submit_coded([s["at"][str(j)] for j in jobs], sent, r,
                                     delays=None if spu is None else spu * np.where(run, dur, 0))
        owed = {i for i, _ in tasks}
        results: dict[int, list[dict[str, torch.Tensor]]] = {}
        cut_s = None
        arrived = ~busy

        def take(timeout: float | None) -> bool:
            answers, lost = executor.wait_coded(call, timeout)
            owed.difference_update(lost)
            for ans in answers:
                if not ans.finite:
                    raise RuntimeError(f"gradient_coding (live): worker {ans.worker}'s result "
                                       f"is not finite (round {r})")
                owed.discard(ans.worker)
                results[ans.worker] = [{k: v[q] for k, v in ans.results.items()}
                                       for q in range(len(next(iter(ans.results.values()))))]
                arrived[ans.worker] = True
            return bool(answers or lost)

        try:
            while owed and cut_s is None:              # the first busy answer sets the cut
                take(None)
                if results:
                    cut_s = (1.0 + self.mu) * (time.monotonic() - start)
            while owed and time.monotonic() - start < cut_s:
                take(max(0.0, cut_s - (time.monotonic() - start)))
            if (busy & ~arrived).any() and self._must_wait(s, r, arrived):
                while owed:
                    take(None)
                if (busy & ~arrived).any():
                    raise RuntimeError(f"gradient_coding (live): round {r} must wait for every "
                                       f"busy worker, but workers "
                                       f"{np.flatnonzero(busy & ~arrived).tolist()} never "
                                       f"answer (clock or a dead worker)")
        finally:
            executor.cancel_coded(call)
        if not results:
            raise RuntimeError(f"gradient_coding (live): no worker answered round {r}")
        if spu is None:
            duration = time.monotonic() - start
        elif (busy & ~arrived).any():
            duration = min((1.0 + self.mu) * float(dur[busy].min()), float(dur[busy].max()))
        else:
            duration = float(dur[busy].max())
        return arrived, duration, results

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
