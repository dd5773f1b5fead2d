"""Events per second of decentralized nodes on Ray actors against the in-process engine, one run.

    python -m fedopt.simulations.benchmarks.decentralized_ray [--sizes 16 64] [--time 5]
                                                              [--actors 2]

Gossip (Boyd's rates) and DADAO on a ring of n nodes (logistic regression on Synthetic(1, 1),
λ = 0.01), ``--time`` virtual time units after one untimed warm-up unit, no pacing (``seconds_per_unit`` null: the
actors go as fast as they can). The same config runs in-process (one event at a time and
batched) and with ``executor.name: ray`` (``--actors`` shard actors exchanging parameters
directly); it prints events per second of each (the rounds' wall time, metrics included), the share of events that crossed two actors
(each is one actor-to-actor message each way) and the largest difference of the final node
states (float64 round-off). Start-up (actors, data) is not timed.
"""
from __future__ import annotations

import argparse
import time

import torch


def config(n: int, algorithm: dict, executor: str, actors: int, time_units: float) -> dict:
    cfg = {"seed": 0,
           "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": n,
                    "min_samples": 20, "max_samples": 60},
           "model": {"name": "logreg", "l2": 0.01},
           "algorithm": {**algorithm, "time_budget": time_units + 1},
           "topology": {"name": "ring"}, "executor": {"name": executor, "dtype": "float64"},
           "eval_every": 10 ** 6, "eval_train": False}
    if executor == "ray":
        cfg["executor"].update({"num_workers": actors, "num_threads": 1,
                                "num_cpus_per_worker": 0.5})
    return cfg


def run(cfg: dict, units: int) -> tuple[float, int, dict, float]:
    from fedopt.config import validate
    from fedopt.simulation import Simulation

    sim = Simulation(validate(cfg))
    try:
        sim.step()                      # warm-up: actors start, first calls (not timed)
        d = sim.state.extra["decentralized"]
        k0 = int(d["event"])
        t0 = time.perf_counter()
        for _ in range(units):
            sim.step()
        dt = time.perf_counter() - t0
        cross = 0.0
        group = getattr(sim.algorithm, "_group", None)
        if group is not None:                          # share of events between two actors
            stream = sim.algorithm._stream()
            stream.seek(0, 0.0)
            ev = stream.until(float(d["time"]))
            owner = group.owner
            both = ev.b >= 0
            cross = float((both & (owner[ev.a] != owner[ev.b.clip(0)])).sum()) / max(len(ev), 1)
        return dt, int(d["event"]) - k0, {k: v.clone() for k, v in d["nodes"].items()}, cross
    finally:
        sim.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--time", type=int, default=5, help="virtual time units measured")
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args(argv)
    print("| algorithm | n | in-process events/s (one at a time) | batched | Ray actors "
          "events/s | cross-actor share | max |Δ| node states |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for alg in ({"name": "gossip", "lr": 0.1}, {"name": "dadao"}):
            rows = {}
            for label, ex, batch in (("loop", "local", False), ("batched", "local", True),
                                     ("ray", "ray", False)):
                cfg = config(n, {**alg, "batch_events": batch}, ex, args.actors, args.time)
                rows[label] = run(cfg, args.time)
            events = rows["loop"][1]
            diff = max(float((rows["ray"][2][k] - rows["loop"][2][k]).abs().max())
                       for k in rows["loop"][2])
            print(f"| {alg['name']} | {n} | {events / rows['loop'][0]:,.0f} | "
                  f"{events / rows['batched'][0]:,.0f} | {events / rows['ray'][0]:,.0f} | "
                  f"{rows['ray'][3]:.2f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
