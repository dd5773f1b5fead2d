"""Simulation throughput: the vectorized engine vs a plain per-client loop vs centralized SGD.

For each workload (model + data) and each number m of clients per round, three implementations
of the same training are timed in one run, on one machine:

* vectorized  — fedopt's engine (all m clients of a round stacked), FedAvg rounds, no evaluation;
* loop        — FedAvg as a user writes it in plain PyTorch: per client, load the global weights
                into the ``nn.Module``, a fresh ``torch.optim.SGD``, K steps of autograd on
                minibatches cut from a ``torch.randperm`` of the client's rows (no DataLoader,
                nothing more), accumulate the weighted delta; then the server step;
* centralized — minibatch SGD of the same model on the pooled training rows, batch = m·B (one
                centralized step processes as many samples as one vectorized local step).

Workloads: ``logreg`` (the quickstart: Synthetic(1,1)), ``mlp`` and ``cnn`` (the bundled 8x8
digits, the models' default sizes), over max(100, m) clients (digits at m = 1,000: 1-2 rows a
client, so B is capped at 2); K = 20 local steps, B = 10. Above ``--loop-max-clients`` clients
per round the per-client loop is not timed (minutes a round); ``--profile`` prints
torch.profiler's top ops of one engine round per row (scripts/gpu-check uses both).
On a machine shared with other work use ``--threads 1``: torch's default threads spin-wait when
the cores are oversubscribed (measured 30x slower rounds at load 16 on 2 cores).

Timing: each implementation's window is sized (from one warm-up measurement) to last about
``--window`` seconds, and at least one round or step, so the three windows are of comparable
length where a round is shorter than the window; repetition r runs the
three windows back to back (interleaved), ``--repeats`` times. A ratio is computed within each
repetition (so a slow phase of a shared machine hits both sides alike) and the table gives the
median over repetitions with the spread [min–max]. Rates are samples/s (rows processed by local
or centralized steps) and client updates/s. ``max|vec-loop|`` is the largest difference between
the engine's aggregate and the per-client reference on the same minibatches (they compute the
same thing; the timed loop draws its own minibatches, as a user's would).

    python -m fedopt.simulations.benchmarks.throughput                      # all, m = 10, 100
    python -m fedopt.simulations.benchmarks.throughput --workloads cnn --clients-per-round 100
    python -m fedopt.simulations.benchmarks.throughput --scale 10000        # + a population run
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fedopt.config import load_config
from fedopt.engine.batches import local_step_counts, plan_batches
from fedopt.simulation import Simulation

#: the README's quickstart config, as shipped
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"

#: config overrides per workload (on top of the quickstart: K = 20, B = 10, client SGD)
WORKLOADS: dict[str, list[str]] = {
    "logreg": [],
    "mlp": ["data={name: digits, num_clients: 100}", "model={name: mlp}"],
    "cnn": ["data={name: digits, num_clients: 100, flatten: false}", "model={name: cnn}"],
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """CPU model, logical cores, torch threads and version (and the GPU, if one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores{gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# -- the three implementations: each returns (seconds, client updates, samples) of n units ----------
class Vectorized:
    """n FedAvg rounds of fedopt's engine."""

    def __init__(self, sim: Simulation):
        self.sim = sim

    def __call__(self, n: int) -> tuple[float, int, int]:
        sim = self.sim
        u0, s0 = sim.client_updates, sim.samples
        _sync(sim.device)
        t = time.perf_counter()
        for _ in range(n):
            sim.step()
        _sync(sim.device)
        return time.perf_counter() - t, sim.client_updates - u0, sim.samples - s0


class PlainLoop:
    """n FedAvg rounds as a user's sequential per-client PyTorch loop (module docstring)."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.model = sim.model
        cfg = sim.config["client"]
        self.lr, self.batch = cfg["optimizer"]["lr"], sim.batch_size
        self.steps = cfg["local_steps"]
        self.server_lr = sim.config["algorithm"]["server_optimizer"]["lr"]
        self.offsets = sim.data.offsets.tolist()
        self.global_params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.g = torch.Generator().manual_seed(1)
        self.rng = np.random.default_rng(1)
        self.m = sim.algorithm.clients_per_round

    def round(self) -> int:
        x, y, model = self.sim.data.x, self.sim.data.y, self.model
        num_clients = len(self.offsets) - 1
        ids = self.rng.choice(num_clients, self.m, replace=False)
        sizes = [self.offsets[i + 1] - self.offsets[i] for i in ids]
        total = sum(sizes)
        delta = {k: torch.zeros_like(v) for k, v in self.global_params.items()}
        samples = 0
        for i, n_i in zip(ids, sizes):
            model.load_state_dict(self.global_params, strict=False)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr)
            lo = self.offsets[i]
            perm = torch.randperm(n_i, generator=self.g).to(x.device) + lo
            pos = 0
            for _ in range(self.steps):
                if pos >= n_i:
                    perm, pos = torch.randperm(n_i, generator=self.g).to(x.device) + lo, 0
                idx = perm[pos:pos + self.batch]
                pos += self.batch
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                samples += len(idx)
            with torch.no_grad():
                for k, p in model.named_parameters():
                    delta[k] += (n_i / total) * (p - self.global_params[k])
        with torch.no_grad():
            for k in delta:
                self.global_params[k] += self.server_lr * delta[k]
        return samples

    def __call__(self, n: int) -> tuple[float, int, int]:
        _sync(self.sim.device)
        t = time.perf_counter()
        samples = sum(self.round() for _ in range(n))
        _sync(self.sim.device)
        return time.perf_counter() - t, n * self.m, samples


class Centralized:
    """n steps of minibatch SGD (batch m·B) of the same model on the pooled training rows."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.model = sim.model
        self.opt = torch.optim.SGD(self.model.parameters(),
                                   lr=sim.config["client"]["optimizer"]["lr"])
        self.batch = sim.algorithm.clients_per_round * sim.batch_size
        self.g = torch.Generator().manual_seed(2)

    def __call__(self, n: int) -> tuple[float, int, int]:
        x, y, model, opt = self.sim.data.x, self.sim.data.y, self.model, self.opt
        rows = x.shape[0]
        idx = torch.randint(0, rows, (n, self.batch), generator=self.g).to(x.device)
        _sync(self.sim.device)
        t = time.perf_counter()
        for k in range(n):
            loss = nn.functional.cross_entropy(model(x[idx[k]]), y[idx[k]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(self.sim.device)
        return time.perf_counter() - t, 0, n * self.batch


# -- agreement of the engine with a per-client reference on the same minibatches --------------------
def reference_round(sim: Simulation, params: dict, round_idx: int) -> dict:
    """Σ_i w_i Δ_i of one FedAvg round computed client by client with the engine's minibatch
    plan (torch.optim.SGD on the nn.Module); not timed."""
    cfg = sim.config["client"]
    alg, data = sim.algorithm, sim.data
    ids = alg.sample_clients(round_idx)
    weights = alg.weights(ids)
    offsets = sim.executor.offsets
    steps = local_step_counts(np.diff(offsets)[ids], sim.batch_size, cfg["local_steps"],
                              cfg["local_epochs"])
    model = sim.model
    delta = {k: torch.zeros_like(v) for k, v in params.items()}
    for i, w, k_i in zip(ids, weights, steps):
        plan = plan_batches(sim.config["seed"], round_idx, np.array([i]), offsets,
                            sim.batch_size, np.array([k_i]), device=sim.device)
        model.load_state_dict(params, strict=False)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["optimizer"]["lr"])
        for k in range(int(k_i)):
            rows = plan.rows[k, 0][plan.weight[k, 0] > 0]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[rows]), data.y[rows]).backward()
            opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                delta[n] += float(w) * (p - params[n])
    return delta


def agreement(sim: Simulation, round_idx: int) -> float:
    """max |Σ w_i Δ_i (engine) − Σ w_i Δ_i (per-client reference)| for one round."""
    p = sim.state.params
    ids = sim.algorithm.sample_clients(round_idx)
    out = sim.executor.run_round(p, ids, sim.algorithm.weights(ids), round_idx)
    ref = reference_round(sim, p, round_idx)
    return max(float((out.delta_sum[k] - ref[k]).abs().max()) for k in ref)


# -- interleaved timing ------------------------------------------------------------------------------
def calibrate(fn: Callable[[int], tuple[float, int, int]], window: float) -> int:
    """Units per window: warm up (first-call costs), time one unit, then enough for ``window`` s."""
    fn(1)
    t = fn(1)[0]
    return max(1, math.ceil(window / max(t, 1e-6)))


def interleaved(impls: dict[str, Callable], window: float, repeats: int) -> dict[str, list]:
    """``repeats`` rounds of one window per implementation, back to back; per implementation a
    list of (seconds, updates, samples) per repetition."""
    units = {name: calibrate(fn, window) for name, fn in impls.items()}
    runs: dict[str, list] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            runs[name].append(fn(units[name]))
    return runs


def _med(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def profile_round(sim: Simulation, rows: int = 12) -> str:
    """torch.profiler's table of one engine round (after a warm-up round), the ``rows`` ops with
    the most self time on the device (CUDA) or the CPU."""
    from torch.profiler import ProfilerActivity, profile

    sim.step()
    cuda = sim.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sim.step()
        _sync(sim.device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def bench(workload: str, m: int, window: float, repeats: int, device: str,
          num_clients: int | None = None, loop_max_clients: int = 1000,
          profile: bool = False) -> dict:
    overrides = WORKLOADS[workload] + [f"algorithm.clients_per_round={m}",
                                       f"executor.device={device}"]
    if num_clients is not None:
        overrides.append(f"data.num_clients={num_clients}")
    else:   # at least one client per sampled client (digits: 1,797 rows, so 1-2 rows each
        overrides.append(f"data.num_clients={max(100, m)}")     # at 1,000 clients)
    sim = Simulation(load_config(QUICKSTART, overrides))
    dev = sim.device
    row = {"workload": workload, "clients/round": m, "population": sim.data.num_clients}
    if num_clients is not None:     # population scale: the engine only
        runs = interleaved({"vec": Vectorized(sim)}, window, repeats)
    elif m > loop_max_clients:      # a per-client loop of this many clients takes minutes
        runs = interleaved({"vec": Vectorized(sim), "cen": Centralized(sim)}, window, repeats)
    else:
        row["max|vec-loop|"] = agreement(sim, 20_000)
        runs = interleaved({"vec": Vectorized(sim), "loop": PlainLoop(sim),
                            "cen": Centralized(sim)}, window, repeats)
    rate = {name: [s / t for t, _, s in r] for name, r in runs.items()}
    upd = [u / t for t, u, _ in runs["vec"]]
    row["window s"] = statistics.median(t for r in runs.values() for t, _, _ in r)
    row["vec upd/s"] = _med(upd)
    row["vec samples/s"] = _med(rate["vec"])
    if "loop" in runs:
        row["loop samples/s"] = _med(rate["loop"])
        row["vec/loop"] = _med([v / lp for v, lp in zip(rate["vec"], rate["loop"])])
    if "cen" in runs:
        row["cen samples/s"] = _med(rate["cen"])
        row["vec/cen"] = _med([v / c for v, c in zip(rate["vec"], rate["cen"])])
    row["peak MB"] = _peak_mb(dev)
    if profile:
        print(f"\n### profile of one round: {workload}, {m} clients/round, {dev}\n")
        print(profile_round(sim), flush=True)
    sim.executor.close()
    return row


def _fmt(v) -> str:
    if isinstance(v, tuple):
        med, lo, hi = v
        return f"{_fmt(med)} [{_fmt(lo)}–{_fmt(hi)}]"
    if isinstance(v, float):
        if v == 0 or abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) < 1e-3:
            return f"{v:.0e}"
        return f"{v:.3g}"
    return str(v)


def table(rows: list[dict]) -> str:
    """A markdown table (median [min–max] over repetitions)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--clients-per-round", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--window", type=float, default=1.0, help="seconds per timed window")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (>= 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 on an oversubscribed machine")
    ap.add_argument("--loop-max-clients", type=int, default=1000,
                    help="time the per-client loop only up to this many clients per round")
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's top ops of one engine round per row")
    ap.add_argument("--scale", type=int, default=0,
                    help="also time the engine on a logreg population of this many clients")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    rows = []
    for w in args.workloads:
        for m in args.clients_per_round:
            rows.append(bench(w, m, args.window, args.repeats, args.device,
                              loop_max_clients=args.loop_max_clients, profile=args.profile))
            print(table(rows[-1:]), flush=True)     # each row as it is done
    if args.scale:
        rows += [bench("logreg", m, args.window, args.repeats, args.device, args.scale)
                 for m in (100, 1000)]
    print(f"machine: {machine()}; load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end")
    print(f"median [min–max] of {args.repeats} interleaved repetitions, windows of "
          f"~{args.window:g} s; absolute rates are machine-specific, ratios are the result")
    print(table(rows))


if __name__ == "__main__":
    main()
