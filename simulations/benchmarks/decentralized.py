"""Events per second of the decentralized engine against a plain per-event loop, side by side.

    python -m fedopt.simulations.benchmarks.decentralized [--sizes 256 4096] [--time 2]

Logistic regression on Synthetic(1, 1) (the data set's clients are the nodes, 20–60 rows each),
the first ``--time`` virtual time units of a run's keyed event stream. For each size and
algorithm the same events are applied to the same start twice, in one process: by the engine
(events on disjoint nodes grouped, one batched gradient call and, for DADAO, every propagator of
the interval in one batched matrix exponential) and by a plain Python loop applying one event
at a time with the same update functions (``batch_events: false`` / ``apply`` per event). It
prints events per second of both, their ratio and the largest difference of the resulting node
states (equal up to floating-point summation order). Gossip runs on a 2-D torus (Boyd's rates,
n communications per unit); DADAO on a random geometric graph (n = 256 only: its rate and
constants need the graph's spectrum, an O(n³) step, and its communication rate grows with the
graph's size).
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch


def build(n: int, algorithm: dict, topology: dict, seed: int = 0):
    from fedopt.config import validate
    from fedopt.simulation import Simulation

    cfg = {"seed": seed,
           "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": n,
                    "min_samples": 20, "max_samples": 60},
           "model": {"name": "logreg", "l2": 0.01}, "algorithm": algorithm,
           "topology": topology, "client": {"local_steps": 1},
           "executor": {"dtype": "float64"}, "eval_train": False}
    return Simulation(validate(cfg))


def measure(sim, horizon: float) -> dict:
    alg = sim.algorithm
    nodes0 = sim.state.extra["decentralized"]["nodes"]
    alg.stream = None
    events = alg._stream().until(horizon)
    out = {"events": len(events)}
    results = {}
    for label, batched in (("engine", True), ("per-event loop", False)):
        nodes = copy.deepcopy(nodes0)
        start = time.perf_counter()
        if batched:
            alg.batch_events = True
            alg.advance(nodes, events, 0.0, horizon)
        else:   # one event at a time, each with its own propagator / gradient call
            for k in range(len(events)):
                sl = slice(k, k + 1)
                alg.apply(nodes, events.time[sl], events.kind[sl], events.a[sl], events.b[sl])
            alg.finish(nodes, horizon)
        out[label] = len(events) / (time.perf_counter() - start)
        results[label] = alg.models(nodes)
    out["max_diff"] = float((results["engine"] - results["per-event loop"]).abs().max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--time", type=float, default=2.0, help="virtual time units measured")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| n | algorithm | graph | events | engine events/s | per-event loop events/s | "
          "ratio | max state difference |\n|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        side = int(math.isqrt(n))
        runs = [("gossip", {"name": "gossip", "lr": 0.05, "time_budget": 1e6},
                 {"name": "torus", "rows": side, "cols": n // side})]
        if n <= 512:
            runs.append(("dadao", {"name": "dadao", "time_budget": 1e6},
                         {"name": "geometric", "radius": min(1.0, 2 * math.sqrt(math.log(n) / n))}))
        for name, alg, topo in runs:
            sim = build(n, alg, topo)
            r = measure(sim, args.time)
            sim.close()
            print(f"| {n} | {name} | {topo['name']} | {r['events']:,} | {r['engine']:,.0f} | "
                  f"{r['per-event loop']:,.0f} | {r['engine'] / r['per-event loop']:.1f}x | "
                  f"{r['max_diff']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
