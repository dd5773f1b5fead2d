"""Stragglers and asynchrony on the virtual clock: synchronous FedAvg (wait for all, deadline,
drop the slowest), FedFix, asynchronous FedAvg, FedAsync, FedBuff and the general scheme of
Fraboni, Vidal, Kameni & Lorenzi (JMLR 2023) — federated.md §2.

One server step n (one ``run_round`` call) is

    θ^{n+1} = ServerOpt(θ^n, Δ^n),   Δ^n = Σ_{i∈A(n)} ω_i(n) Δ_i(θ^{ρ_i(n)}),
    ω_i(n) = d_i φ(s_i(n)),   s_i(n) = n − ρ_i(n)

where the *schedule* — the step's virtual time, the arrived set ``A(n)`` and the start versions
``ρ_i(n)`` — comes from the clock alone (:mod:`fedopt.algorithms.async_schedule`) and the weights
``d_i``, staleness function ``φ`` and the "model" (FedAsync mixing) combine from
:mod:`fedopt.algorithms.async_weights`. With ``sgd`` at lr η_g the update is the paper's
``θ^{n+1} = θ^n + η_g Σ ω_i(n) Δ_i(θ^{ρ_i(n)})``: a delta computed at a stale model, added to the
current one (not model mixing). Steps with an empty ``A(n)`` change neither the model nor the
server-optimizer state but count as steps (they advance the version).

Vectorized asynchrony: a client job is a pure function of (start model θ^ρ, client i, key ρ), so
it is computed lazily (§2.10) — when the first not yet computed job is aggregated, *every*
pending job, each from its own θ^ρ with its own key ρ (minibatches keyed by (seed, ρ, i),
independent of aggregation order), runs in one ``executor.run_jobs`` call (one per client
optimizer under lr decay), on any executor (:class:`~fedopt.engine.contract.Executor`), and the
others' deltas are kept until their own arrival. When every pending job arrives in the same step
from one version (synchronous rounds, FedFix with Δt ≥ max τ, FedBuff with c = N) the call is the
very weighted call FedAvg makes (a shared start), so those runs equal FedAvg bit for bit. Models
of versions with pending jobs, computed deltas and the loop state live in
``ServerState.extra["async"]`` and are
checkpointed; ``run_round`` advances that state in place.

Stats of a step (copied into the metrics row): ``virtual_time`` (time of the step), ``updates``
and ``samples`` (of the updates aggregated in this step), ``dropped`` (jobs dropped so far:
timeouts and cancelled stragglers, cumulative), ``staleness_mean``/``staleness_max`` (over every
update aggregated so far, cumulative) and ``local_loss`` (Σ ω_i L_i / Σ ω_i over the updates
aggregated in this step, L_i a job's mean minibatch loss — the same whichever executor and
however far ahead jobs were computed; absent when a step aggregates nothing).

Non-finite jobs (NaN/±inf results, :mod:`fedopt.engine.nonfinite`): under ``on_nonfinite:
error`` the executor raises when it computes them (possibly ahead of their arrival); under
``drop`` an arrival whose job was non-finite is left out of ``A(n)`` and the step's weights are
renormalised over the kept arrivals (``Δ^n ← Δ^n · Σ_{A(n)} ω / Σ_{kept} ω``, one factor for the
whole step, whichever calls computed its jobs); a step that keeps no arrival changes neither
the model nor the server-optimizer state. ``nonfinite_dropped`` (cumulative) counts them. A
server step with non-finite new parameters or optimizer state raises under either policy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from fedopt.algorithms.async_aggregate import ParamSum, WeightedMean, add_call, renormalized
from fedopt.algorithms.async_schedule import SchedulePolicy, Scheduler, Step
from fedopt.algorithms.async_weights import (STALENESS, WEIGHT_RULES, Arrivals, WeightRule,
                                             expected_participation)
from fedopt.algorithms.base import AlgorithmSpec, Params, ServerState
from fedopt.algorithms.client_state import population_weights
from fedopt.algorithms.server_opt import ServerOptimizer
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.schema import ConfigError
from fedopt.engine.contract import Executor, SharedStart
from fedopt.engine.executor import job_samples
from fedopt.engine.nonfinite import DROPPED_KEY, check_server_state
from fedopt.engine.program import LocalProgram

COMBINES = ("delta", "model")
PARTICIPATION = ("auto", "expected", "empirical")
IMPORTANCE = ("num_samples", "uniform")


class AsyncFederated:
    """The general asynchronous scheme on the virtual clock (see the module docstring).

    ``policy`` says when the server aggregates; ``aggregation_weights`` names a registered
    weight rule (or is a function ``Arrivals -> d``); ``staleness`` names φ with parameters
    ``staleness_a``/``staleness_b``; ``combine="model"`` with ``mixing_alpha = α`` is FedAsync's
    mixing. ``importance`` sets ``p_i`` (``n_i/n`` or ``1/N``); ``participation`` how
    ``P(i ∈ A(n))`` is obtained for the unbiased rule (closed form, running frequency, or
    ``auto``: the closed form where one exists)."""

    def __init__(self, counts: np.ndarray, policy: SchedulePolicy,
                 clock_config: dict[str, Any] | None = None, *,
                 server_optimizer: ServerOptimizer | None = None,
                 aggregation_weights: str | WeightRule = "uniform",
                 importance: str = "num_samples", participation: str = "auto",
                 staleness: str = "constant", staleness_a: float = 0.5, staleness_b: float = 4.0,
                 combine: str = "delta", mixing_alpha: float = 1.0, seed: int = 0,
                 samples_per_job: np.ndarray | None = None,
                 client_optimizer: Any = None, lr_decay: float = 1.0,
                 time_budget: float | None = None):
        self.counts = np.asarray(counts, dtype=np.int64)
        #: virtual time T after which no server step starts (None: only ``rounds`` bounds the run)
        self.time_budget = time_budget
        self.num_clients = len(self.counts)
        self.policy = policy
        self.clock_config = validate_clock_config(clock_config or {})
        self.server_optimizer = server_optimizer or ServerOptimizer()
        if isinstance(aggregation_weights, str):
            if aggregation_weights not in WEIGHT_RULES:
                raise ConfigError(f"algorithm.aggregation_weights: unknown rule "
                                  f"{aggregation_weights!r} (registered: {', '.join(WEIGHT_RULES)})")
            self.weight_rule = WEIGHT_RULES[aggregation_weights]
        else:
            self.weight_rule = aggregation_weights
        if importance not in IMPORTANCE:
            raise ConfigError(f"algorithm.importance: one of {IMPORTANCE}, got {importance!r}")
        if participation not in PARTICIPATION:
            raise ConfigError(f"algorithm.participation: one of {PARTICIPATION}, got {participation!r}")
        if staleness not in STALENESS:
            raise ConfigError(f"algorithm.staleness: one of {tuple(STALENESS)}, got {staleness!r}")
        if combine not in COMBINES:
            raise ConfigError(f"algorithm.combine: one of {COMBINES}, got {combine!r}")
        self.p = population_weights(self.counts, importance)
        self.participation = participation
        self.staleness = STALENESS[staleness]
        self.staleness_ab = (float(staleness_a), float(staleness_b))
        self.combine, self.mixing_alpha = combine, float(mixing_alpha)
        self.seed = int(seed)
        self.samples_per_job = samples_per_job
        self.client_optimizer, self.lr_decay = client_optimizer, float(lr_decay)
        self.trigger = self._trigger_kind()
        if participation == "expected" and self.trigger is None:
            raise ConfigError("algorithm.participation: 'expected' has no closed form for this "
                              "trigger (only per-arrival, FedFix intervals and plain synchronous "
                              "rounds); use 'empirical' or 'auto'")
        # validates the per-client clock specs against N (payload-free; rebuilt in init)
        self._setup(payload_bytes=0.0)

    # -- construction helpers ----------------------------------------------------------------
    def _trigger_kind(self) -> str | None:
        p = self.policy
        if p.interval is not None:
            return "interval" if not p.cancel_stragglers and p.deadline is None else None
        if p.cancel_stragglers and p.deadline is None and p.buffer_size == p.concurrency:
            return "sync"
        if p.buffer_size == 1 and not p.cancel_stragglers and p.deadline is None:
            return "arrival"
        return None

    def _setup(self, payload_bytes: float) -> None:
        self.clock = VirtualClock(self.clock_config, self.num_clients, self.seed, payload_bytes)
        self.scheduler = Scheduler(self.policy, self.clock, self.seed)
        self.expected_p = None
        if self.participation != "empirical" and self.trigger is not None:
            self.expected_p = expected_participation(
                self.trigger, self.clock.mean_durations(), self.policy.concurrency,
                self.policy.interval, deterministic=self.clock.deterministic)
        if self.participation == "expected" and self.expected_p is None:
            raise ConfigError("algorithm.participation: 'expected' needs every client's mean job "
                              "time to be finite, all clients busy (clients_per_round = number "
                              "of clients) and, for FedFix, deterministic times; use 'empirical'")

    def init(self, params: Params) -> ServerState:
        params = {k: v.detach().clone() for k, v in params.items()}
        self._setup(float(sum(v.numel() * v.element_size() for v in params.values())))
        sched, dispatched = self.scheduler.init_state()
        a: dict[str, Any] = {"sched": sched, "versions": {}, "pending": {}, "cache": {},
                             "totals": {"aggregated": 0, "staleness_sum": 0, "staleness_max": 0}}
        for clients, v in dispatched:
            self._register(a, clients, v, params)
        return ServerState(params=params, opt_state=self.server_optimizer.init(params),
                           extra={"async": a})

    def local_program(self) -> LocalProgram:
        return LocalProgram()

    # -- bookkeeping of jobs -----------------------------------------------------------------
    @staticmethod
    def _register(a: dict, clients: np.ndarray, version: int, params: Params) -> None:
        a["versions"][version] = params
        a["pending"].setdefault(version, []).extend(int(i) for i in clients)

    @staticmethod
    def _forget(a: dict, client: int, version: int) -> None:
        pending = a["pending"].get(version)
        if pending is not None and client in pending:
            pending.remove(client)
            if not pending:
                del a["pending"][version]
        a["cache"].pop((client, version), None)

    def _collect_versions(self, a: dict) -> None:
        """Keep θ^v only while a job of version v is uncomputed (or unaggregated, "model")."""
        live = set(a["pending"])
        if self.combine == "model":
            st = a["sched"]
            live |= set(st["job_version"][st["busy"]].tolist())
            live |= {e[1] for e in st["ready"]}
            live |= {v for (_, v) in a["cache"]}
        for v in [v for v in a["versions"] if v not in live]:
            del a["versions"][v]

    # -- weights -------------------------------------------------------------------------------
    def weights(self, step: Step, sched: dict) -> np.ndarray:
        """``ω_i(n) = d_i φ(s_i(n))`` (times α for the "model" combine) for ``A(n)``."""
        ids = step.clients
        if self.expected_p is not None:
            part = self.expected_p[ids]
        else:   # running frequency, this step included: a_i / (n + 1)
            part = sched["participations"].numpy()[ids] / float(step.index + 1)
        ctx = Arrivals(clients=ids, staleness=step.staleness, num_samples=self.counts[ids],
                       p=self.p[ids], participation=part, step=step.index,
                       num_clients=self.num_clients)
        d = np.asarray(self.weight_rule(ctx), dtype=np.float64)
        w = d * self.staleness(step.staleness.astype(np.float64), *self.staleness_ab)
        return w * self.mixing_alpha if self.combine == "model" else w

    def optimizer_at(self, version: int, optimizer: Any) -> Any:
        """The client optimizer of a job started at version ρ (lr · lr_decay^ρ, like FedAvg)."""
        if self.lr_decay == 1.0 or self.client_optimizer is None:
            return optimizer
        base = self.client_optimizer
        return base.replace(lr=base.lr * self.lr_decay ** version)

    # -- one server step -----------------------------------------------------------------------
    def run_round(self, state: ServerState, executor: Executor, optimizer: Any = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        """Advance the clock to the next aggregation, aggregate ``A(n)``, apply the server
        optimizer; dispatch the freed clients with θ^{n+1}."""
        a = state.extra["async"]
        n = state.round
        step = self.scheduler.advance(a["sched"])
        if step.index != n:
            raise RuntimeError(f"async state is at step {step.index} but the server at round {n}")
        for clients, v in step.dispatched:
            if v == n:                       # dispatched on arrival: they train on θ^n
                self._register(a, clients, v, state.params)
        for client, v in step.dropped:
            self._forget(a, client, v)
        stats: dict[str, Any] = {"virtual_time": step.time}
        params, opt_state = state.params, state.opt_state
        if len(step.clients):
            w = self.weights(step, a["sched"])
            dropped_before = a["totals"].get(DROPPED_KEY, 0)
            delta, loss = self._aggregate(a, step, w, state.params, executor, optimizer)
            lost_now = a["totals"].get(DROPPED_KEY, 0) - dropped_before
            if loss is not None:
                stats["local_loss"] = loss
            if delta is not None:        # None: every arrival was non-finite and dropped
                params, opt_state = self.server_optimizer.step(state.params, delta,
                                                               state.opt_state)
                check_server_state(n, params, opt_state)
        for clients, v in step.dispatched:
            if v == n + 1:
                self._register(a, clients, v, params)
        self._collect_versions(a)
        stats.update(self.step_stats(a, step, executor))
        if len(step.clients) and lost_now:   # updates aggregated: the kept arrivals
            stats["updates"] -= lost_now
        return dataclasses.replace(state, params=params, opt_state=opt_state,
                                   round=n + 1), stats

    def _aggregate(self, a: dict, step: Step, w: np.ndarray, current: Params,
                   executor: Executor, optimizer: Any) -> tuple[Params, float | None]:
        """``Σ_i ω_i Δ_i`` (plus ``Σ_i ω_i (θ^{ρ_i} − θ^n)`` for "model"). When an arriving job
        is not yet computed, *every* pending job (of every start version, each from its own θ^ρ
        with its own key ρ) runs in one ``executor.run_jobs`` call — one call per client
        optimizer when lr decay makes them differ per version. When the pending jobs are
        exactly the uncomputed arrivals, the call is weighted (for one version: FedAvg's very
        call from the shared θ^ρ, bit for bit); otherwise the deltas are cached until their own
        arrival."""
        total = ParamSum()          # Σ_i ω_i Δ_i
        add = total.add
        loss = WeightedMean()       # Σ ω_i L_i / Σ ω_i over the jobs aggregated now

        arrivals = list(zip(step.clients.tolist(), step.versions.tolist()))
        lost = np.zeros(len(arrivals), dtype=bool)       # arrivals dropped: non-finite
        fresh = [j for j, (i, v) in enumerate(arrivals) if (i, v) not in a["cache"]]
        direct: set[int] = set()
        if fresh:
            pending = sorted((v, i) for v, lst in a["pending"].items() for i in lst)
            if pending == sorted((arrivals[j][1], arrivals[j][0]) for j in fresh):
                # every uncomputed job arrives now: weighted calls, in arrival order
                jobs, weights, direct = [arrivals[j] for j in fresh], w[fresh], set(fresh)
            else:
                jobs, weights = [(i, v) for v, i in pending], None
            groups: dict[Any, list[int]] = {}
            decays = self.lr_decay != 1.0 and self.client_optimizer is not None
            for k, (_, v) in enumerate(jobs):
                groups.setdefault(v if decays else None, []).append(k)
            for key, ks in groups.items():
                ids = np.array([jobs[k][0] for k in ks], dtype=np.int64)
                vers = np.array([jobs[k][1] for k in ks], dtype=np.int64)
                uniq, inv = np.unique(vers, return_inverse=True)
                models = [a["versions"][int(v)] for v in uniq]
                if len(uniq) == 1:        # one θ^ρ: shipped once, as FedAvg's round
                    starts = SharedStart(models[0])
                else:
                    index = torch.as_tensor(inv, device=next(iter(current.values())).device)
                    starts = {n_: torch.stack([m[n_] for m in models]).index_select(0, index)
                              for n_ in current}
                opt = self.optimizer_at(int(vers[0]), optimizer)   # one per group
                if weights is not None:
                    out = executor.run_jobs(starts, ids, vers, weights[ks], optimizer=opt)
                    lost[np.asarray(fresh)[ks][~out.kept(len(ids))]] = True
                    add_call(total, loss, out, weights[ks], ids)
                else:
                    out = executor.run_jobs(starts, ids, vers, np.ones(len(ks)), optimizer=opt,
                                            keep_local=True)
                    kept = out.kept(len(ids))
                    for r, (i, v) in enumerate(zip(ids.tolist(), vers.tolist())):
                        theta = models[int(inv[r])]
                        a["cache"][(i, v)] = (({n_: out.local_params[n_][r] - theta[n_]
                                                for n_ in current}, float(out.local_loss[r]))
                                              if kept[r] else _DROPPED)
            a["pending"].clear()
        for j, (i, v) in enumerate(arrivals):
            if j not in direct:
                delta, job_loss = a["cache"].pop((i, v))
                if not delta:                    # a non-finite job, dropped
                    lost[j] = True
                    continue
                add(delta, float(w[j]))
                loss.add(float(w[j]) * job_loss, float(w[j]))
        if self.combine == "model":
            for v in np.unique(step.versions).tolist():
                wv = w[(step.versions == v) & ~lost]
                if wv.sum() != 0:
                    theta_v = a["versions"][v]
                    add({k: theta_v[k] - current[k] for k in current}, float(wv.sum()))
        return renormalized(a, total, loss, w, lost)

    def step_stats(self, a: dict, step: Step, executor: Executor) -> dict[str, Any]:
        t = a["totals"]
        s = step.staleness
        t["aggregated"] += len(s)
        t["staleness_sum"] += int(s.sum())
        t["staleness_max"] = max(t["staleness_max"], int(s.max()) if len(s) else 0)
        return {"updates": len(step.clients),
                "samples": int(self._samples_per_job(executor)[step.clients].sum()),
                "dropped": int(a["sched"]["dropped"]),
                "staleness_mean": t["staleness_sum"] / max(t["aggregated"], 1),
                "staleness_max": t["staleness_max"],
                **({DROPPED_KEY: int(t.get(DROPPED_KEY, 0))}
                   if executor.on_nonfinite == "drop" else {})}

    def _samples_per_job(self, executor: Executor) -> np.ndarray:
        if self.samples_per_job is None:
            self.samples_per_job = np.asarray(
                executor.job_samples(np.arange(self.num_clients)), dtype=np.int64)
        return self.samples_per_job

    # -- schedule-only ------------------------------------------------------------------------
    def steps_within(self, state: ServerState, time_budget: float) -> int:
        """Number of further server steps at virtual times ``<= time_budget`` (no training)."""
        return self.scheduler.steps_within(state.extra["async"]["sched"], time_budget)

    def finished(self, state: ServerState) -> bool:
        """True once the next server step would end after ``time_budget`` (the run loop stops)."""
        if self.time_budget is None:
            return False
        return self.scheduler.steps_within(state.extra["async"]["sched"],
                                           self.time_budget, max_steps=1) == 0


#: cache entry of a job whose result was non-finite (dropped under ``on_nonfinite: drop``)
_DROPPED: tuple[dict, float] = ({}, float("nan"))


# ------------------------------------------------------------------------------ registry

def _specs() -> dict[str, AlgorithmSpec]:
    from typing import Annotated, Literal, Optional

    from pydantic import Field

    from fedopt.algorithms.base import AlgorithmConfig, schema
    from fedopt.schema import Bool, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Str
    from fedopt.schema import Check

    Rule = Annotated[Str, Check(lambda v: v in WEIGHT_RULES,
                                f"a registered weight rule ({', '.join(map(repr, WEIGHT_RULES))})")]
    Dispatch = Literal["on_aggregation", "on_arrival"]

    def weights(default: str) -> dict[str, Any]:
        return {
            "aggregation_weights": (Rule, Field(default, description="weight rule d_i")),
            "importance": (Literal[IMPORTANCE], Field("num_samples",
                                                      description="p_i: n_i/n or 1/N")),
            "participation": (Literal[PARTICIPATION], Field(
                "auto", description="P(i in A(n)) for the unbiased rule")),
        }

    def staleness(default: str, a: float = 0.5, b: float = 4.0) -> dict[str, Any]:
        return {"staleness": (Literal[tuple(STALENESS)], Field(
                    default, description="staleness function φ(s)")),
                "staleness_a": (NonNegativeFloat, Field(a, description="φ exponent / hinge "
                                                                       "slope a")),
                "staleness_b": (NonNegativeFloat, Field(b, description="hinge threshold b "
                                                                       "(steps)"))}

    deadline = {"deadline": (Optional[PositiveFloat], Field(
        None, description="also aggregate this long after the previous aggregation"))}

    def dispatch(default: str) -> dict[str, Any]:
        return {"dispatch": (Dispatch, Field(default, description="when freed clients get a "
                                                                  "new job"))}

    budget = {"time_budget": (Optional[PositiveFloat], Field(
        None, description="stop before the first server step ending after this virtual time "
                          "(the run also stops at `rounds` steps)"))}

    def spec(name: str, kind: str, doc: str, fields: dict[str, Any]) -> AlgorithmSpec:
        return AlgorithmSpec(schema(name, doc, AlgorithmConfig, **fields), sgd, _build(kind), doc)

    sgd = {"name": "sgd", "lr": 1.0}
    return {
        "fedavg_sync": spec(
            "fedavg_sync", "sync", "Synchronous FedAvg on the virtual clock (deadline / drop slowest)",
            {**budget, **weights("num_samples"), **deadline,
             "drop_slowest": (NonNegativeInt, Field(0, description="aggregate the first m − k "
                                                                   "arrivals"))}),
        "fedfix": spec(
            "fedfix", "fedfix", "FedFix (Fraboni et al. 2023)",
            {**budget, **weights("unbiased"), **staleness("constant"),
             "interval": (PositiveFloat, Field(1.0, description="Δt: aggregate at Δt, 2Δt, ..."))}),
        "async_fedavg": spec(
            "async_fedavg", "async", "Asynchronous FedAvg: one server step per arrival",
            {**budget, **weights("unbiased"), **staleness("constant")}),
        "fedasync": spec(
            "fedasync", "fedasync", "FedAsync (Xie et al. 2019): per-arrival model mixing",
            {**budget, **weights("uniform"), **staleness("polynomial"),
             "mixing_alpha": (PositiveFloat, Field(0.6, description="α of θ ← (1 − α_s)θ + α_s y"))}),
        "fedbuff": spec(
            "fedbuff", "fedbuff", "FedBuff (Nguyen et al. 2022)",
            {**budget, **weights("uniform"), **staleness("polynomial"), **deadline,
             **dispatch("on_arrival"),
             "buffer_size": (PositiveInt, Field(10, description="K: aggregate every K arrivals"))}),
        "async_general": spec(
            "async_general", "general", "The general scheme with stochastic aggregation weights",
            {**budget, **weights("uniform"), **staleness("constant"), **deadline,
             **dispatch("on_aggregation"),
             "buffer_size": (Optional[PositiveInt], Field(1, description="c (null with interval)")),
             "interval": (Optional[PositiveFloat], Field(None, description="Δt (FedFix trigger)")),
             "cancel_stragglers": (Bool, Field(False, description="drop unfinished jobs at "
                                                                  "aggregation")),
             "combine": (Literal[COMBINES], Field("delta", description="delta (§2.1) or model "
                                                                       "(mixing)")),
             "mixing_alpha": (PositiveFloat, Field(1.0, description="α for combine: model"))}),
    }


def _policy(kind: str, cfg: dict[str, Any], n: int) -> tuple[SchedulePolicy, dict[str, Any]]:
    """The schedule policy and extra keywords of a preset, with config errors naming fields."""
    m = cfg["clients_per_round"]
    extra: dict[str, Any] = {}
    if kind == "sync":
        k = cfg["drop_slowest"]
        if k >= m:
            raise ConfigError(f"algorithm.drop_slowest: must be < algorithm.clients_per_round "
                              f"({m}), got {k}")
        return SchedulePolicy(m, buffer_size=m - k, deadline=cfg["deadline"],
                              cancel_stragglers=True), extra
    if kind == "fedfix":
        return SchedulePolicy(m, interval=cfg["interval"]), extra
    if kind == "async":
        return SchedulePolicy(m, buffer_size=1), extra
    if kind == "fedasync":
        return SchedulePolicy(m, buffer_size=1), {"combine": "model",
                                                  "mixing_alpha": cfg["mixing_alpha"]}
    c = cfg["buffer_size"]
    if kind == "general":
        extra = {"combine": cfg["combine"], "mixing_alpha": cfg["mixing_alpha"]}
        if (c is None) == (cfg["interval"] is None):
            raise ConfigError("algorithm.buffer_size: give exactly one of algorithm.buffer_size "
                              "and algorithm.interval")
    if c is not None:
        if c > n:
            raise ConfigError(f"algorithm.buffer_size: {c} exceeds the number of clients ({n})")
        if c > m:
            raise ConfigError(f"algorithm.buffer_size: {c} exceeds algorithm.clients_per_round "
                              f"({m}), the clients training at once; the buffer could never fill")
    cancel = cfg.get("cancel_stragglers", False)
    if kind == "general" and c is None:
        return SchedulePolicy(m, interval=cfg["interval"], deadline=cfg["deadline"],
                              cancel_stragglers=cancel, dispatch=cfg["dispatch"]), extra
    return SchedulePolicy(m, buffer_size=c, deadline=cfg["deadline"], cancel_stragglers=cancel,
                          dispatch=cfg["dispatch"]), extra


def _build(kind: str) -> Callable[..., AsyncFederated]:
    def build(cfg: dict[str, Any], counts: np.ndarray, seed: int,
              server_optimizer: ServerOptimizer, config: dict[str, Any]) -> AsyncFederated:
        n = len(counts)   # clients_per_round <= n: checked by the config (fedopt.schema)
        policy, extra = _policy(kind, cfg, n)
        client = config.get("client") or {}
        samples = client_optimizer = None
        if client.get("batch_size"):
            samples = job_samples(counts, client["batch_size"], client.get("local_steps"),
                                  client.get("local_epochs"))
        if client.get("optimizer") and client.get("lr_decay", 1.0) != 1.0:
            from fedopt.optim import from_config

            client_optimizer = from_config(client["optimizer"])
        return AsyncFederated(
            counts, policy, config.get("clock"), server_optimizer=server_optimizer,
            aggregation_weights=cfg["aggregation_weights"], importance=cfg["importance"],
            participation=cfg["participation"],
            staleness=cfg.get("staleness", "constant"), staleness_a=cfg.get("staleness_a", 0.5),
            staleness_b=cfg.get("staleness_b", 4.0), seed=seed, samples_per_job=samples,
            client_optimizer=client_optimizer, lr_decay=client.get("lr_decay", 1.0),
            time_budget=cfg["time_budget"], **extra)
    return build


ALGORITHM_SPECS = _specs()
