"""Does the virtual clock cost the synchronous engine anything? Client updates per second of
FedAvg (``fedavg``, no clock) against the same rounds through the event loop (``fedavg_sync``,
and ``fedbuff`` with buffer = clients per round dispatched on aggregation; both reduce to it
exactly), and the per-arrival asynchronous FedAvg for reference, measured in one run.

    python -m fedopt.simulations.studies.asynchrony.bench [--rounds 30] [--repeats 3]

Config: the quickstart problem (Synthetic(1,1), 100 clients, logistic regression, K = 20 local
SGD steps, B = 10), m clients per round (10 and 100), one torch thread. Each number is the best
of ``repeats`` timings of ``rounds`` server steps (the least disturbed by other processes); the
algorithms' timings are interleaved round-robin so that a change in machine load hits them alike.
"""
from __future__ import annotations

import argparse
import time

import torch

from fedopt.config import load_config
from fedopt.simulation import Simulation

BASE = {
    "seed": 0,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 100},
    "model": {"name": "logreg"},
    "client": {"local_steps": 20, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.01}},
    "executor": {"name": "local", "device": "cpu", "num_threads": 1},
    "clock": {"compute": {"name": "exponential", "shift": 0.2, "scale": 0.8}},
}


def updates_per_second(algorithms: dict[str, tuple[dict, int]], repeats: int) -> dict[str, float]:
    """Best client updates/s of each ``name: (algorithm section, steps per timing)``."""
    sims = {k: Simulation(load_config({**BASE, "algorithm": {"rounds": 10**9, **a}}))
            for k, (a, _) in algorithms.items()}
    for sim in sims.values():
        sim.step()                                       # warm-up
    best = dict.fromkeys(sims, 0.0)
    for _ in range(repeats):
        for k, sim in sims.items():
            u0, t = sim.client_updates, time.perf_counter()
            for _ in range(algorithms[k][1]):
                sim.step()
            best[k] = max(best[k], (sim.client_updates - u0) / (time.perf_counter() - t))
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| m | fedavg upd/s | fedavg_sync upd/s (ratio) | fedbuff c=m upd/s (ratio) | "
          "async_fedavg upd/s |")
    print("|---|---|---|---|---|")
    for m in (10, 100):
        r = args.rounds
        best = updates_per_second({
            "fedavg": ({"name": "fedavg", "clients_per_round": m}, r),
            "sync": ({"name": "fedavg_sync", "clients_per_round": m}, r),
            "buff": ({"name": "fedbuff", "clients_per_round": m, "buffer_size": m,
                      "aggregation_weights": "num_samples", "dispatch": "on_aggregation"}, r),
            "async": ({"name": "async_fedavg", "clients_per_round": m}, max(r * m // 10, 1)),
        }, args.repeats)
        base = best["fedavg"]
        print(f"| {m} | {base:.0f} | {best['sync']:.0f} ({best['sync'] / base:.3f}) | "
              f"{best['buff']:.0f} ({best['buff'] / base:.3f}) | {best['async']:.0f} |")


if __name__ == "__main__":
    main()
