"""Simulation throughput: vectorized engine vs a sequential per-client loop vs centralized training.

Measured in one run, on one machine, for the quickstart config (Synthetic(1,1), logreg, K = 20
local SGD steps, B = 10) at m clients per round:

* vectorized — fedopt's engine (all m clients stacked, vmap(grad)), rounds timed without eval;
* loop       — the same algorithm as a plain PyTorch loop: per client, load the global weights
               into an nn.Module, run K steps of torch.optim.SGD with autograd on the same
               minibatches, accumulate the weighted delta; then the server update;
* centralized — minibatch SGD on the same model over the pooled data with the same total
               number of samples, batch = m·B (the same samples per step as one vectorized step).

Prints client-updates/s, samples/s, the ratios vectorized/loop and vectorized/centralized, the
largest difference between the vectorized and loop aggregates (they must agree), and peak
memory (process peak RSS on CPU; peak allocated on CUDA).

    python -m fedopt.simulations.benchmarks.throughput                 # 10 and 100 clients/round
    python -m fedopt.simulations.benchmarks.throughput --scale 10000   # + 10,000-client population
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedopt.config import load_config
from fedopt.engine.batches import local_step_counts, plan_batches
from fedopt.simulation import Simulation

#: the README's quickstart config, as shipped
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_vectorized(sim: Simulation, rounds: int, repeats: int = 3) -> tuple[float, int, int]:
    """Best of ``repeats`` timings of ``rounds`` rounds (rounds differ, the work per round is
    alike); the best is the least disturbed by other processes on the machine."""
    sim.step()                                      # warm-up (allocator, first-call costs)
    best = None
    for _ in range(repeats):
        u0, s0 = sim.client_updates, sim.samples
        _sync(sim.device)
        t = time.perf_counter()
        for _ in range(rounds):
            sim.step()
        _sync(sim.device)
        run = (time.perf_counter() - t, sim.client_updates - u0, sim.samples - s0)
        best = run if best is None or run[0] < best[0] else best
    return best


def loop_round(sim: Simulation, params: dict, round_idx: int) -> tuple[dict, int]:
    """One FedAvg round as a plain sequential per-client PyTorch loop."""
    cfg = sim.config["client"]
    alg, data = sim.algorithm, sim.data
    ids = alg.sample_clients(round_idx)
    weights = alg.weights(ids)
    offsets = sim.executor.offsets
    steps = local_step_counts(np.diff(offsets)[ids], cfg["batch_size"], cfg["local_steps"],
                              cfg["local_epochs"])
    model = sim.model
    delta = {k: torch.zeros_like(v) for k, v in params.items()}
    samples = 0
    for i, w, k_i in zip(ids, weights, steps):
        plan = plan_batches(sim.config["seed"], round_idx, np.array([i]), offsets,
                            cfg["batch_size"], np.array([k_i]), device=sim.device)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(params[n])
        opt = torch.optim.SGD(model.parameters(), lr=cfg["optimizer"]["lr"])
        for k in range(int(k_i)):
            rows = plan.rows[k, 0][plan.weight[k, 0] > 0]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(data.x[rows]), data.y[rows]).backward()
            opt.step()
            samples += rows.numel()
        with torch.no_grad():
            for n, p in model.named_parameters():
                delta[n] += float(w) * (p - params[n])
    return delta, samples


def time_loop(sim: Simulation, rounds: int, start_round: int, repeats: int = 3
              ) -> tuple[float, int, int]:
    state = sim.state
    loop_round(sim, state.params, start_round)      # warm-up
    best = None
    for rep in range(repeats):
        _sync(sim.device)
        t = time.perf_counter()
        updates = samples = 0
        for r in range(start_round + rep * rounds, start_round + (rep + 1) * rounds):
            delta, s = loop_round(sim, state.params, r)
            state = sim.algorithm.apply(state, delta)
            updates += sim.algorithm.clients_per_round
            samples += s
        _sync(sim.device)
        run = (time.perf_counter() - t, updates, samples)
        best = run if best is None or run[0] < best[0] else best
    return best


def time_centralized(sim: Simulation, total_samples: int, batch: int, repeats: int = 3
                     ) -> tuple[float, int]:
    data = sim.data
    model = sim.model
    opt = torch.optim.SGD(model.parameters(), lr=sim.config["client"]["optimizer"]["lr"])
    g = torch.Generator(device="cpu").manual_seed(0)
    steps = max(1, total_samples // batch)
    idx = torch.randint(0, data.x.shape[0], (steps, batch), generator=g).to(sim.device)
    best = float("inf")
    for _ in range(repeats + 1):                    # the first pass is a warm-up
        _sync(sim.device)
        t = time.perf_counter()
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(data.x[idx[k]]), data.y[idx[k]]).backward()
            opt.step()
        _sync(sim.device)
        best = min(best, time.perf_counter() - t)
    return best, steps * batch


def agreement(sim: Simulation, round_idx: int) -> float:
    """max |Σ w_i Δ_i (vectorized) − Σ w_i Δ_i (loop)| for one round from the same model."""
    p = sim.state.params
    ids = sim.algorithm.sample_clients(round_idx)
    out = sim.executor.run_round(p, ids, sim.algorithm.weights(ids), round_idx)
    ref, _ = loop_round(sim, p, round_idx)
    return max(float((out.delta_sum[k] - ref[k]).abs().max()) for k in ref)


def bench(m: int, num_clients: int, rounds: int, device: str, label: str) -> dict:
    cfg = load_config(QUICKSTART, [f"algorithm.clients_per_round={m}",
                                   f"data.num_clients={num_clients}",
                                   f"executor.device={device}"])
    sim = Simulation(cfg)
    dev = sim.device
    t_vec, upd_vec, smp_vec = time_vectorized(sim, rounds)
    peak_vec = _peak_mb(dev)
    row = {"setting": label, "clients/round": m, "population": num_clients,
           "vec upd/s": upd_vec / t_vec, "vec samples/s": smp_vec / t_vec,
           "round ms": 1e3 * t_vec / rounds, "peak MB": peak_vec}
    if num_clients <= 1000:
        t_loop, upd_loop, smp_loop = time_loop(sim, max(1, rounds // 2), 10_000)
        t_cen, smp_cen = time_centralized(sim, smp_vec, m * cfg["client"]["batch_size"])
        row.update({"loop upd/s": upd_loop / t_loop, "cen samples/s": smp_cen / t_cen,
                    "vec/loop": (upd_vec / t_vec) / (upd_loop / t_loop),
                    "vec/cen": (smp_vec / t_vec) / (smp_cen / t_cen),
                    "max|vec-loop|": agreement(sim, 20_000)})
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per setting")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients-per-round", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--scale", type=int, default=0,
                    help="also run a population of this many clients (e.g. 10000)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = [bench(m, max(100, m), args.rounds, args.device, "quickstart") for m in args.clients_per_round]
    if args.scale:
        for m in (100, 1000):
            rows.append(bench(m, args.scale, max(3, args.rounds // 4), args.device, "scale"))
    from fedopt.simulations.plot import results_table

    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(results_table(rows))


if __name__ == "__main__":
    main()
