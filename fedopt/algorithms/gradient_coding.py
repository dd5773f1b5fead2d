"""Gradient-coded synchronous data-parallel training on the virtual clock (Tandon, Lei, Dimakis &
Karampatziakis, ICML 2017; spec gradient_coding.md §1, §3; codes in :mod:`fedopt.coding`).

The training set's N clients are grouped into k = n partitions D_0..D_{n−1} (contiguous client
ids: client c is in partition ⌊c·n/N⌋). Iteration t at model θ_t:

1. every worker i computes its coded gradient f_i = Σ_j B_ij g_j, g_j = Σ_{r∈D_j} ∇ℓ(θ_t; r) —
   in-process each g_j is computed once from the executor's ``full_gradients`` (g_j = Σ_{c∈D_j}
   n_c ∇F_c) and encoded in float64 (F = B·G), which equals each worker's weighted-loss gradient
   ∇_θ Σ_j B_ij L_j(θ) by linearity;
2. worker i's result arrives at its virtual-clock time: the ``clock:`` job time of (worker i,
   job t) with its compute part multiplied by the worker's number of partitions (the load);
3. the master takes results in arrival order until its decode rule fires and forms the decoded
   gradient ĝ = Σ_{i∈F} a_i f_i (float64), the mean gradient ĝ / Σ_c n_c:

   * ``frc``, ``cyclic``, ``uncoded``: the first arrival prefix F from which the code decodes
     exactly (FRC: one worker per group, possibly fewer than n − s; cyclic: n − s; uncoded: n);
   * ``ignore_stragglers``: uncoded B = I, the first ``wait_for`` (default n − s) arrivals,
     a_i = n / |F| (unbiased only for random straggler sets);
   * ``approximate``: the cyclic code, the first ``wait_for`` (default n − s) arrivals, the
     least-squares decoder a* = argmin ‖B_Fᵀa − 1‖₂ (exact when the residual is 0);

   With ``minibatch: true`` each g_j is estimated from ``client.batch_size`` rows per client
   (keyed by (seed, t, client)); decoding is exact for these estimates.

4. θ_{t+1} = client.optimizer(θ_t, ĝ / N) — the run's client optimizer (its state persists
   across iterations in ``ServerState.opt_state``); the stragglers' work is cancelled and the
   next iteration starts when the master decodes.

Because the decoder is exact, frc/cyclic/uncoded training equals full-gradient training whatever
the straggler pattern (float64: to ~1e-12 per step). Metrics rows gain ``virtual_time``,
``decoded`` (iterations decoded exactly so far), ``worker_load`` (partitions per worker),
``waited_for`` (results used), ``reconstruction_error`` (‖aᵀB − 1‖_∞) and, with
``decode_error: true``, ``decode_error`` = ‖ĝ − g‖₂ / ‖g‖₂ against the full gradient (float64).
Sequential codes (``sr_sgc``, ``m_sgc``, keys ``burst`` B, ``window`` W, ``lam`` λ, ``mu``) train
T + 1 pipelined replicas: :mod:`fedopt.algorithms.sequential_coding`.

``live: true`` (a Ray executor; every code, minibatches too): the coded workers' tasks run on
the executor's worker actors — one call per actor and iteration computes every client gradient
its coded workers need once (vectorized) and releases worker i's f_i at its own time
(:mod:`fedopt.server.ray_coded`); the master decodes from the first responders (``ray.wait``)
and releases the rest. With ``seconds_per_unit`` each answer is held that many seconds per unit
of the worker's virtual-clock time, and the run equals the virtual-clock run (same decode sets
and virtual times, parameters to float64 round-off); without it the arrivals are the real
compute times and ``virtual_time`` counts wall seconds. A worker actor that dies loses its coded
workers for that iteration (stragglers the code may absorb; the actor is restarted).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import numpy as np
import torch

from fedopt.algorithms.base import AlgorithmSpec, Params, ServerState
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.coding.codes import (DEFAULT_TOL, GradientCode, cyclic, frc,
                                 ignore_stragglers_vector, least_squares, uncoded)
from fedopt.engine.contract import Executor
from fedopt.engine.nonfinite import check_server_state
from fedopt.engine.program import LocalProgram
from fedopt.schema import ConfigError

CODES = ("frc", "cyclic", "uncoded", "ignore_stragglers", "approximate", "sr_sgc", "m_sgc")
TRAINABLE = CODES[:5]


def partitions_of(num_clients: int, num_workers: int) -> np.ndarray:
    """int64 ``[N]``: the partition ⌊c·n/N⌋ of each client c (contiguous groups whose sizes
    differ by at most one client)."""
    return (np.arange(num_clients, dtype=np.int64) * num_workers) // num_clients


def build_code(code: str, n: int, s: int, seed: int) -> GradientCode:
    """The encoding matrix of ``algorithm.code`` (ConfigError naming the field)."""
    if code not in TRAINABLE:
        raise ConfigError(f"algorithm.code: {code!r} is a sequential code (T + 1 concurrent "
                          f"models): its runtime simulation is fedopt.coding.sgc; training with "
                          f"it is not available; use one of {', '.join(TRAINABLE)}")
    if not s < n:
        raise ConfigError(f"algorithm.stragglers: must be below algorithm.num_workers ({n}), "
                          f"got {s}")
    if code == "frc":
        if n % (s + 1):
            raise ConfigError(f"algorithm.stragglers: frc needs s + 1 = {s + 1} to divide "
                              f"algorithm.num_workers ({n}); use code: cyclic")
        return frc(n, s)
    if code in ("cyclic", "approximate"):
        return cyclic(n, s, seed=seed)
    if code == "uncoded" and s:
        raise ConfigError(f"algorithm.stragglers: uncoded waits for every worker (s = 0), got "
                          f"{s}; use code: ignore_stragglers to drop the slowest")
    return uncoded(n)


class GradientCoding:
    """The master of gradient-coded training (see the module docstring)."""

    def __init__(self, counts: np.ndarray, code: str, num_workers: int, stragglers: int = 0,
                 clock_config: dict[str, Any] | None = None, seed: int = 0,
                 wait_for: int | None = None, decode_error: bool = False, live: bool = False,
                 seconds_per_unit: float | None = None, minibatch: bool = False):
        self.counts = np.asarray(counts, dtype=np.int64)
        N, n = len(self.counts), int(num_workers)
        if n > N:
            raise ConfigError(f"algorithm.num_workers: {n} exceeds the number of clients ({N}); "
                              f"each worker's partition is a group of clients")
        self.kind, self.n, self.s = code, n, int(stragglers)
        self.code = build_code(code, n, self.s, seed)
        self.wait_for = None
        if code in ("ignore_stragglers", "approximate"):
            self.wait_for = n - self.s if wait_for is None else int(wait_for)
            if not 1 <= self.wait_for <= n:
                raise ConfigError(f"algorithm.wait_for: must be in [1, num_workers = {n}], got "
                                  f"{self.wait_for}")
        elif wait_for is not None:
            raise ConfigError(f"algorithm.wait_for: only for ignore_stragglers and approximate "
                              f"(code {code!r} waits until it decodes exactly)")
        self.partition = partitions_of(N, n)
        rows = np.bincount(self.partition, weights=self.counts, minlength=n)
        self.rows_per_worker = np.array([rows[s_].sum() for s_ in self.code.supports],
                                        dtype=np.int64)
        self.total_rows = float(self.counts.sum())
        self._weights = torch.zeros((n, N), dtype=torch.float64)
        self._weights[torch.as_tensor(self.partition), torch.arange(N)] = torch.as_tensor(
            self.counts, dtype=torch.float64)
        self._B = torch.tensor(self.code.B)
        self.loads = (self.code.B != 0).sum(axis=1).astype(np.float64)
        self.clock_config = validate_clock_config(clock_config or {})
        self.clock = VirtualClock(self.clock_config, n, seed)
        self.seed = int(seed)
        self.decode_error = bool(decode_error)
        self.live, self.seconds_per_unit = bool(live), seconds_per_unit
        if seconds_per_unit is not None and not live:
            raise ConfigError("algorithm.seconds_per_unit: injected delays need algorithm.live: "
                              "true")
        #: clients of worker i's partitions (its live jobs)
        self.worker_clients = [np.flatnonzero(np.isin(self.partition, s_))
                               for s_ in self.code.supports]
        self._full_cache = None
        self._last_live_s = 0.0
        self.minibatch = bool(minibatch)

    # -- state ---------------------------------------------------------------------------------
    def init(self, params: Params) -> ServerState:
        params = {k: v.detach().clone() for k, v in params.items()}
        extra = {"gc": {"now": 0.0, "decoded": 0,
                        "clock": {k: torch.from_numpy(np.array(v))
                                  for k, v in self.clock.init_state().items()}}}
        return ServerState(params=params, opt_state={}, extra=extra)

    def local_program(self) -> LocalProgram:
        return LocalProgram()

    # -- the clock -----------------------------------------------------------------------------
    def finish_times(self, state: ServerState) -> np.ndarray:
        """Virtual arrival times ``[n]`` of iteration ``state.round``'s coded gradients: the
        clock's time of job (worker i, round t) with its compute part times worker i's load."""
        g = state.extra["gc"]
        cstate = {k: v.numpy() for k, v in g["clock"].items()}   # views: updated in place
        workers = np.arange(self.n, dtype=np.int64)
        jobs = np.full(self.n, state.round, dtype=np.int64)
        work = self.clock.work(workers, jobs, cstate)
        comm = self.clock.comm[workers]
        with np.errstate(invalid="ignore"):
            scaled = np.where(np.isinf(work), math.inf, self.loads * (work - comm) + comm)
        finish = self.clock.availability.finish(workers, float(g["now"]), scaled, cstate)
        return np.where(finish - float(g["now"]) <= self.clock.timeout, finish, math.inf)

    def decode_prefix(self, F: np.ndarray) -> np.ndarray | None:
        """The decoding vector once the workers ``F`` (in arrival order) have answered, or None
        while the rule has not fired: ``wait_for`` arrivals (ignore_stragglers: n/|F| on F;
        approximate: least squares), else the first prefix the code decodes exactly."""
        m = len(F)
        if self.wait_for is not None:
            if m < self.wait_for:
                return None
            if self.kind == "ignore_stragglers":
                return ignore_stragglers_vector(self.n, F)
            return least_squares(self.code.B, np.isin(np.arange(self.n), F))[0]
        start = (int(self.code.groups.max()) + 1 if self.code.groups is not None
                 else self.n - self.code.s)
        return None if m < start else self.code.decoding_vector(F)

    def decoder(self, order: np.ndarray, finish: np.ndarray) -> tuple[np.ndarray, int]:
        """(a, m): the decoding vector and the number m of first arrivals (``order``) it uses.
        RuntimeError when the rule cannot fire before the remaining workers' times are +inf
        (failed jobs, offline forever, past ``clock.timeout``)."""
        arrived = np.isfinite(finish[order])
        for m in range(1, self.n + 1):
            if not arrived[m - 1]:
                break
            a = self.decode_prefix(order[:m])
            if a is not None:
                return a, m
        need = (f"algorithm.wait_for is {self.wait_for}" if self.wait_for is not None
                else f"they cannot decode the {self.code.name} code")
        raise RuntimeError(f"gradient_coding: only {int(arrived.sum())} of {self.n} workers can "
                           f"return this iteration and {need} (clock: failures, availability "
                           f"or timeout)")

    # -- one iteration -------------------------------------------------------------------------
    def partition_gradients(self, params: Params, executor: Executor,
                            round_idx: int = 0) -> dict[str, torch.Tensor]:
        """G: float64 ``{name: [n, *shape]}``, g_j = Σ_{c∈D_j} n_c ∇F_c(θ) — or, with
        ``minibatch``, g_j = Σ_{c∈D_j} n_c ∇F_c(θ; ξ_c), ξ_c client c's ``client.batch_size``
        rows of iteration t (one local SGD step with lr 1 from θ keyed by (seed, t, c):
        Δ_c = −∇F_c(θ; ξ_c)), an unbiased estimate of the same sum."""
        ids = np.arange(len(self.counts), dtype=np.int64)
        if self.minibatch:
            from fedopt.engine.contract import SharedStart
            from fedopt.optim import make

            out_ = executor.run_jobs(SharedStart(params), ids,
                                     np.full(len(ids), round_idx, dtype=np.int64),
                                     np.ones(len(ids)), optimizer=make("sgd", lr=1.0),
                                     keep_local=True)
            per_client = {k: params[k].unsqueeze(0) - v for k, v in out_.local_params.items()}
        else:
            per_client = executor.full_gradients(params, ids)
        out = {}
        for k, v in per_client.items():
            P = self._weights.to(v.device)                    # [n, N]: n_c on c's partition
            out[k] = (P @ v.reshape(v.shape[0], -1).to(torch.float64)).reshape(
                (self.n,) + tuple(v.shape[1:]))
        return out

    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """One iteration: arrivals on the clock (or, ``live``, on the executor's workers in real
        time), decode, θ ← optimizer(θ, ĝ / N)."""
        if optimizer is None:
            optimizer = executor.optimizer
        g = state.extra["gc"]
        finish = self.finish_times(state)
        if self.live:
            a, F, coded = self._live_arrivals(state, executor, finish)
        else:
            order = np.lexsort((np.arange(self.n), finish))   # by time, then worker id
            a, m = self.decoder(order, finish)
            F = order[:m]
            G = {k: Gk.reshape(self.n, -1)
                 for k, Gk in self.partition_gradients(state.params, executor,
                                                       state.round).items()}
            self._full_cache = {k: Gk.sum(0) for k, Gk in G.items()}
            coded = {k: self._B.to(Gk.device) @ Gk for k, Gk in G.items()}  # f_i, float64
        a_t = torch.as_tensor(a)
        grads, errs = {}, []
        for k, fk in coded.items():
            dec = a_t.to(fk.device) @ fk                       # ĝ = Σ_i a_i f_i, float64
            if self.decode_error:
                full = self._full_gradient(state.params, executor, k)
                errs.append((dec - full, full))
            shape = state.params[k].shape
            grads[k] = (dec / self.total_rows).reshape(shape).to(state.params[k].dtype)
        opt_state = state.opt_state or optimizer.init(state.params)
        params, opt_state = optimizer.update(state.params, grads, opt_state)
        check_server_state(state.round, params, opt_state)
        recon = self.code.reconstruction_error(a)
        if self.live and self.seconds_per_unit is None:
            g["now"] = float(g["now"]) + self._last_live_s
        else:
            g["now"] = float(finish[F].max())
        g["decoded"] = int(g["decoded"]) + int(recon < DEFAULT_TOL)
        stats: dict[str, Any] = {
            "virtual_time": g["now"], "decoded": g["decoded"],
            "worker_load": self.code.worker_load, "waited_for": len(F),
            "reconstruction_error": recon, "updates": len(F),
            "samples": int(self.rows_per_worker[F].sum())}
        if self.live:
            g["realtime_s"] = float(g.get("realtime_s", 0.0)) + self._last_live_s
            stats["realtime_s"] = g["realtime_s"]
        if self.decode_error:
            num = math.sqrt(sum(float((d ** 2).sum()) for d, _ in errs))
            den = math.sqrt(sum(float((t ** 2).sum()) for _, t in errs))
            stats["decode_error"] = num / den if den > 0 else 0.0
        self._full_cache = None
        return dataclasses.replace(state, params=params, opt_state=opt_state,
                                   round=state.round + 1), stats

    def _full_gradient(self, params: Params, executor: Executor, name: str) -> torch.Tensor:
        """g = Σ_j g_j of parameter ``name`` (float64, flat), for ``decode_error``."""
        if self._full_cache is None:
            self._full_cache = {k: Gk.reshape(self.n, -1).sum(0) for k, Gk in
                                self.partition_gradients(params, executor).items()}
        return self._full_cache[name]

    # -- live: coded gradients from the executor's workers, first responders -------------------
    def _live_arrivals(self, state: ServerState, executor: Any, finish: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
        """Worker i's task on the executor's workers (one call per worker actor,
        :class:`~fedopt.engine.contract.CodedExecutor`): f_i = Σ_{c∈D(i)} B_{i,p(c)} n_c g_c at
        θ_t, g_c the client's full gradient (or, ``minibatch``, its minibatch gradient keyed by
        t, as in-process); with ``seconds_per_unit`` each answer is held ``seconds_per_unit ×``
        the worker's virtual-clock time (a worker whose clock time is +inf never answers). The
        master decodes at the first arrival prefix its rule accepts and releases the rest.
        Returns (a, F, coded f ``{name: [n, d]}`` float64)."""
        from fedopt.engine.contract import check_coded

        check_coded(executor, "gradient_coding (live)")
        t, n, spu = state.round, self.n, self.seconds_per_unit
        dur = finish - float(state.extra["gc"]["now"])
        run = np.isfinite(dur) if spu is not None else np.ones(n, dtype=bool)
        tasks = [(i, [(0, self.worker_clients[i],
                       self.code.B[i, self.partition[self.worker_clients[i]]]
                       * self.counts[self.worker_clients[i]])])
                 for i in np.flatnonzero(run)]
        start = time.monotonic()
        call = executor.submit_coded([state.params], tasks, t,
                                     job_keys=[t] if self.minibatch else None,
                                     delays=None if spu is None else spu * np.where(run, dur, 0))
        coded = {k: torch.zeros((n, v.numel()), dtype=torch.float64, device=v.device)
                 for k, v in state.params.items()}
        arrived: list[int] = []
        left = len(tasks)
        a = None
        try:
            while a is None and left:
                answers, lost = executor.wait_coded(call)
                left -= len(lost)
                for ans in answers:
                    left -= 1
                    if a is not None:
                        break
                    if not ans.finite:
                        raise RuntimeError(f"gradient_coding (live): worker {ans.worker}'s coded "
                                           f"gradient is not finite (iteration {t})")
                    for k, r in ans.results.items():
                        coded[k][ans.worker] = r[0]
                    arrived.append(ans.worker)
                    a = self.decode_prefix(np.array(arrived, dtype=np.int64))
        finally:
            executor.cancel_coded(call)
        if a is None:
            raise RuntimeError(f"gradient_coding (live): only {len(arrived)} of {n} workers "
                               f"answered iteration {t} (the others never return or their "
                               f"worker died) and they cannot decode the {self.code.name} code")
        self._last_live_s = time.monotonic() - start
        return a, np.array(arrived, dtype=np.int64), coded


def _check_live(config: dict[str, Any]) -> None:
    """Live mode needs an executor whose workers answer in real time (ConfigError naming
    ``algorithm.live`` otherwise)."""
    from fedopt.executors import executor_entries

    ex = (config.get("executor") or {}).get("name", "local")
    if executor_entries()[ex].realtime is None:
        raise ConfigError(f"algorithm.live: needs an executor whose workers answer in real time "
                          f"(e.g. executor.name: ray), got {ex!r}")


def _specs() -> dict[str, AlgorithmSpec]:
    from typing import Literal, Optional

    from pydantic import Field

    from fedopt.algorithms.base import schema
    from fedopt.schema import Bool, NonNegativeInt, PositiveFloat, PositiveInt

    doc = "Gradient coding: exact straggler-tolerant full-gradient training (Tandon et al. 2017)"
    fields = {
        "code": (Literal[CODES], Field("cyclic", description="frc | cyclic | uncoded | "
                                       "ignore_stragglers | approximate | sr_sgc | m_sgc")),
        "burst": (PositiveInt, Field(1, description="sr_sgc / m_sgc: B of the (B, W, λ) model")),
        "window": (PositiveInt, Field(2, description="sr_sgc / m_sgc: W")),
        "lam": (PositiveInt, Field(1, description="sr_sgc / m_sgc: λ (stragglers per window)")),
        "mu": (PositiveFloat, Field(1.0, description="sr_sgc / m_sgc: stragglers are the "
                                                     "workers slower than (1 + μ)·the fastest")),
        "num_workers": (PositiveInt, Field(..., description="n workers = n data partitions "
                                                            "(groups of clients)")),
        "stragglers": (NonNegativeInt, Field(0, description="s, stragglers tolerated per "
                                                            "iteration")),
        "wait_for": (Optional[PositiveInt], Field(None, description="ignore_stragglers / "
                                                  "approximate: arrivals used (default n − s)")),
        "decode_error": (Bool, Field(False, description="record ‖ĝ − g‖/‖g‖ (float64)")),
        "clients_per_round": (PositiveInt, Field(1, description="not read: every client's "
                                                                "rows are in a partition")),
        "minibatch": (Optional[Bool], Field(None, description="client.batch_size rows per "
                                                                "client and iteration instead of "
                                                                "full partitions (null: when "
                                                                "client.batch_size is given)")),
        "live": (Bool, Field(False, description="workers of a live executor (Ray) compute the "
                                                "coded gradients; first responders decode (every "
                                                "code, minibatches too)")),
        "seconds_per_unit": (Optional[PositiveFloat], Field(
            None, description="live: hold each worker's answer this many seconds per unit of "
                              "its virtual-clock time (null: real compute times)")),
    }

    def build(cfg: dict[str, Any], counts: np.ndarray, seed: int, server_optimizer: Any,
              config: dict[str, Any]) -> GradientCoding:
        if cfg["code"] in ("sr_sgc", "m_sgc"):
            from fedopt.algorithms.sequential_coding import SequentialCoding

            for key in ("minibatch", "wait_for"):
                if cfg[key]:
                    raise ConfigError(f"algorithm.{key}: not with code {cfg['code']!r}")
            if cfg["live"]:
                _check_live(config)
            elif cfg["seconds_per_unit"] is not None:
                raise ConfigError("algorithm.seconds_per_unit: injected delays need "
                                  "algorithm.live: true")
            if cfg["lam"] > cfg["num_workers"]:
                raise ConfigError(f"algorithm.lam: at most algorithm.num_workers "
                                  f"({cfg['num_workers']}), got {cfg['lam']}")
            return SequentialCoding(counts, cfg["code"], cfg["num_workers"], cfg["burst"],
                                    cfg["window"], cfg["lam"], cfg["rounds"], config.get("clock"),
                                    seed=seed, mu=cfg["mu"], live=cfg["live"],
                                    seconds_per_unit=cfg["seconds_per_unit"])
        if cfg["live"]:
            _check_live(config)
        if cfg["minibatch"] and (config.get("client") or {}).get("local_steps") != 1:
            raise ConfigError("client.local_steps: algorithm.minibatch draws one minibatch per "
                              "client and iteration: set client.local_steps: 1")
        return GradientCoding(counts, cfg["code"], cfg["num_workers"], cfg["stragglers"],
                              config.get("clock"), seed=seed, wait_for=cfg["wait_for"],
                              decode_error=cfg["decode_error"], live=cfg["live"],
                              seconds_per_unit=cfg["seconds_per_unit"],
                              minibatch=cfg["minibatch"])

    def resolve(cfg: dict[str, Any], raw: Any) -> None:
        """Full-batch partitions unless ``client.batch_size`` is given (then minibatches of that
        size, as with ``minibatch: true``, in-process and live alike); ``minibatch`` given
        explicitly wins; with a sequential code, which reads no batch size, one given is
        refused, not ignored."""
        if cfg.get("minibatch") is not None:
            return
        client = raw.get("client") if isinstance(raw, Mapping) else None
        given = isinstance(client, Mapping) and "batch_size" in client
        if given and cfg["code"] in ("sr_sgc", "m_sgc"):
            raise ConfigError(f"client.batch_size: gradient_coding with code {cfg['code']!r} "
                              f"computes full-partition gradients; remove client.batch_size")
        cfg["minibatch"] = bool(given)

    return {"gradient_coding": AlgorithmSpec(schema("gradient_coding", doc, **fields),
                                             {"name": "sgd", "lr": 1.0}, build, doc,
                                             resolve=resolve)}


ALGORITHM_SPECS = _specs()
