"""Decentralized study: local gradients and communications to reach f(x̄) − f* ≤ 1e-6 for DADAO
against ADOM+ (multi-consensus), D-SGD and asynchronous gossip SGD on ridge regression.

    python -m fedopt.simulations.studies.decentralized.run --out DIR [--sizes 16 64] [--seeds 0 1 2]

Every (n, graph, algorithm, seed) runs on the virtual clock through :class:`fedopt.simulation.
Simulation` (the same code as ``fedopt run``), stepping one time unit at a time until the
suboptimality reaches the target or the time budget ends. Data: ``data.name: regression``
(heterogeneity 1, 50 rows a node), linear model, ``model.l2 = 0.1``; graphs: ring, complete and
a random geometric graph (radius 2·√(log n / n), keyed by the seed). The baselines use the step
1/L with the data's L (the largest stable constant step); with a constant step D-SGD and gossip
converge only to a neighbourhood of x*, so they may never reach the target (they run for
``--plateau-budget`` time units, long enough to plateau). Writes
``DIR/results.json`` (every run: time, gradients and communications at the target, or null) and
``DIR/results.md`` (means over seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

TARGET = 1e-6
METHODS = {
    "dadao": {},
    "adom_plus": {"multi_consensus": True},
    "dsgd": {"lr": None},        # None: 1/L
    "gossip": {"lr": None},
}


def config(n: int, graph: str, method: str, seed: int, budget: float) -> dict:
    topo = {"name": graph}
    if graph == "geometric":
        topo["radius"] = min(1.0, 2 * math.sqrt(math.log(n) / n))
    return {"seed": seed,
            "data": {"name": "regression", "num_clients": n, "heterogeneity": 1.0,
                     "samples_per_client": 50},
            "model": {"name": "logreg", "l2": 0.1},
            "algorithm": {"name": method, "time_budget": budget,
                          **{k: v for k, v in METHODS[method].items() if v is not None}},
            "topology": topo, "client": {"local_steps": 1},
            "executor": {"dtype": "float64"}, "eval_every": 1, "eval_train": False}


def one_run(n: int, graph: str, method: str, seed: int, budget: float) -> dict:
    from fedopt.config import validate
    from fedopt.simulation import Simulation

    cfg = config(n, graph, method, seed, budget)
    if METHODS[method].get("lr", 0) is None:      # the step 1/L of the data
        probe = Simulation(validate(config(n, graph, "dadao", seed, 1.0)))
        L = float(probe.algorithm.objective.smoothness()[0].max())
        probe.close()
        cfg["algorithm"]["lr"] = 1.0 / L
    sim = Simulation(validate(cfg))
    start = time.perf_counter()
    hit, last = None, {}
    try:
        while not sim.finished():
            last = sim.step()
            if last["suboptimality"] <= TARGET:
                hit = last
                break
    finally:
        sim.close()
    row = {"n": n, "graph": graph, "method": method, "seed": seed,
           "reached": hit is not None, "wall_s": time.perf_counter() - start,
           "final_suboptimality": last.get("suboptimality")}
    src = hit or last
    for k in ("virtual_time", "gradient_steps", "communications"):
        row[k] = src.get(k)
    return row


def table(rows: list[dict]) -> str:
    out = ["| n | graph | method | reached | time to 1e-6 | gradients | communications | "
           "final f(x̄) − f* |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["n"], r["graph"], r["method"]) for r in rows},
                  key=lambda k: (k[0], k[1], list(METHODS).index(k[2])))
    for n, g, m in keys:
        rs = [r for r in rows if (r["n"], r["graph"], r["method"]) == (n, g, m)]
        ok = [r for r in rs if r["reached"]]

        def mean(k):
            return f"{np.mean([r[k] for r in ok]):,.0f}" if ok else "—"
        fin = np.mean([r["final_suboptimality"] for r in rs])
        out.append(f"| {n} | {g} | {m} | {len(ok)}/{len(rs)} | {mean('virtual_time')} | "
                   f"{mean('gradient_steps')} | {mean('communications')} | {fin:.2g} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--graphs", nargs="+", default=["ring", "complete", "geometric"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=float, default=400.0)
    ap.add_argument("--plateau-budget", type=float, default=150.0,
                    help="time budget of dsgd and gossip, which plateau above the target")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        for graph in args.graphs:
            for method in args.methods:
                for seed in args.seeds:
                    budget = args.plateau_budget if method in ("dsgd", "gossip") else args.budget
                    rows.append(one_run(n, graph, method, seed, budget))
                    print(json.dumps(rows[-1]), flush=True)
                    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
