"""FedBuff vs asynchronous FedAvg in real time on Ray workers, with a 10x slower cohort.

Both algorithms run on the same W Ray workers (server.realtime): all N clients train at once,
each job's compute time is the virtual clock's (constant 1 unit, × ``--slow-factor`` for a
cohort of ``--slow-fraction`` of the clients) injected as a real delay of
``--seconds-per-unit`` seconds per unit, and the server aggregates the real answers in the order
of their virtual completion times (an answer that comes in ahead of an earlier-scheduled one
waits for it, so the run is the virtual-clock run): async FedAvg at every arrival, FedBuff every
``--buffer`` arrivals (staleness 1/√(1+s)). Each gets the same number of client updates
(``--updates``).

Columns, measured in one run: server steps, wall time of the timed steps, client updates/s,
``ideal`` — the same steps' time on the virtual clock × seconds-per-unit (what an overhead-free
coordinator would take), ``eff`` = ideal / wall, staleness mean / max (server versions), the
share of the aggregated updates that came from the slow cohort, and the final test accuracy.

    python -m fedopt.simulations.benchmarks.ray_realtime
    python -m fedopt.simulations.benchmarks.ray_realtime --clients 40 --seconds-per-unit 0.02 --workers 4
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from fedopt.config import load_config
from fedopt.simulation import Simulation

CONFIG = {
    "seed": 0,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 20},
    "model": {"name": "logreg"},
    "algorithm": {"name": "async_fedavg", "rounds": 10_000, "clients_per_round": 20},
    "client": {"local_steps": 10, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.02}},
    "executor": {"name": "ray", "num_workers": 2, "num_threads": 1, "num_cpus_per_worker": 0.5},
    "clock": {"compute": {"name": "constant", "value": 1.0},
              "speed": {"name": "cohort", "factor": 10.0, "fraction": 0.2}},
    "eval_every": 10_000, "eval_train": False,
}


def virtual_times(sim, steps: int) -> list[float]:
    """Times of the first ``steps`` server steps of the same algorithm on the virtual clock
    (schedule only, no training)."""
    from fedopt.simulation import build_algorithm

    cfg = sim.config
    alg = build_algorithm(cfg["algorithm"], sim.data.counts.cpu().numpy(), cfg["seed"], cfg)
    sched = alg.init(sim.state.params).extra["async"]["sched"]
    return [alg.scheduler.advance(sched).time for _ in range(steps)]


def run_one(cfg: dict, seconds_per_unit: float, updates: int) -> dict:
    cfg = {**cfg, "executor": {**cfg["executor"], "realtime": True,
                               "seconds_per_unit": seconds_per_unit}}
    sim = Simulation(load_config(cfg))
    slow = set(np.flatnonzero(sim.algorithm.alg.clock.speed > 1.0).tolist())
    try:
        stats = sim.step()                      # starts the clock; first arrival warms up
        steps, slow_updates = 1, 0
        u0 = sim.client_updates
        t = time.perf_counter()
        while sim.client_updates - u0 < updates:
            stats = sim.step()
            steps += 1
        wall = time.perf_counter() - t
        done = sim.client_updates - u0
        # who was aggregated: the schedule's participation counts
        parts = sim.state.extra["realtime"]["sched"]["participations"].numpy()
        slow_updates = int(parts[sorted(slow)].sum())
        acc = sim.evaluate()["test_accuracy"]
        times = virtual_times(sim, steps)
        ideal = (times[-1] - times[0]) * seconds_per_unit
    finally:
        sim.close()
    return {"steps": steps - 1, "wall_s": wall, "updates_per_s": done / wall, "ideal_s": ideal,
            "staleness_mean": stats["staleness_mean"], "staleness_max": stats["staleness_max"],
            "slow_share": slow_updates / max(parts.sum(), 1), "accuracy": acc}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--slow-factor", type=float, default=10.0)
    ap.add_argument("--slow-fraction", type=float, default=0.2)
    ap.add_argument("--seconds-per-unit", type=float, default=0.05)
    ap.add_argument("--buffer", type=int, default=5)
    ap.add_argument("--updates", type=int, default=400)
    args = ap.parse_args(argv)

    base = copy.deepcopy(CONFIG)
    base["data"]["num_clients"] = base["algorithm"]["clients_per_round"] = args.clients
    base["executor"]["num_workers"] = args.workers
    base["clock"]["speed"].update(factor=args.slow_factor, fraction=args.slow_fraction)
    runs = {"async FedAvg": {"name": "async_fedavg"},
            f"FedBuff-{args.buffer}": {"name": "fedbuff", "buffer_size": args.buffer}}
    print(f"N = {args.clients} clients all training, W = {args.workers} Ray workers, "
          f"{args.slow_fraction:.0%} of clients {args.slow_factor:g}x slower, "
          f"1 unit = {args.seconds_per_unit:g} s, {args.updates} client updates each")
    head = (f"{'algorithm':<14}{'steps':>7}{'wall s':>9}{'upd/s':>9}{'ideal s':>9}{'eff':>6}"
            f"{'stale':>7}{'max':>5}{'slow %':>8}{'acc':>7}")
    print(head)
    print("-" * len(head))
    for label, alg in runs.items():
        cfg = copy.deepcopy(base)
        cfg["algorithm"].update(alg)
        r = run_one(cfg, args.seconds_per_unit, args.updates)
        print(f"{label:<14}{r['steps']:>7}{r['wall_s']:>9.2f}{r['updates_per_s']:>9.1f}"
              f"{r['ideal_s']:>9.2f}{r['ideal_s'] / r['wall_s']:>6.2f}"
              f"{r['staleness_mean']:>7.2f}{r['staleness_max']:>5}{100 * r['slow_share']:>8.1f}"
              f"{r['accuracy']:>7.3f}")


if __name__ == "__main__":
    main()
