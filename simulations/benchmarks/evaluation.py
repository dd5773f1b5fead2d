"""Evaluation at scale: what one evaluation costs, in training rounds, measured in one run.

For the quickstart problem (Synthetic(1,1), logreg, 20 local SGD steps of B = 10, 100 clients
per round) at a population of ``--clients`` K, interleaved over ``--repeats`` repetitions:

* round        — one training round (the mean of 10 timed server steps);
* full         — the full evaluation a run records by default: the global model on every
                 client's test rows and every training row (``eval_train: true``);
* test only    — the same on the test rows only (``eval_train: false``);
* sampled m    — ``eval_clients: m``: the ratio estimate with its 95 % CI over m keyed clients'
                 test and training rows (:mod:`fedopt.sampled_eval`).

Each is reported as wall seconds and process CPU seconds and as a multiple of the round's
time (the "rounds' worth" of one evaluation), medians with their spread. On a contended
machine the CPU time is the steadier measure — with one torch thread (``--threads 1``, the
default) it is not inflated by threads waiting for each other — and the ratios are what to
compare. One evaluation streams every evaluated row through memory once: at 60 float32
features a row is 240 bytes, so a full evaluation of K = 10⁵ clients (2.4·10⁷ rows, 5.7 GB)
cannot take less than the time to read 5.7 GB.

    python -m fedopt.simulations.benchmarks.evaluation --clients 10000
    python -m fedopt.simulations.benchmarks.evaluation --clients 100000 --eval-clients 1000
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fedopt.config import load_config
from fedopt.engine.evaluate import evaluation_row
from fedopt.simulation import Simulation

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _timed(f: Callable[[], Any], per: int = 1) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    f()
    return (time.perf_counter() - t) / per, (time.process_time() - c) / per


def bench(clients: int, eval_clients: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """``{phase: {"wall": [...], "cpu": [...]}}`` plus the data set's size."""
    cfg = load_config(QUICKSTART, (f"data.num_clients={clients}", "algorithm.rounds=1000000",
                                   "algorithm.clients_per_round=100", f"seed={seed}",
                                   f"eval_clients={eval_clients}"))
    sim = Simulation(cfg)
    d, sampled = sim.data, sim.sampled_eval
    phases: dict[str, Callable[[], Any]] = {
        "round": lambda: [sim.step() for _ in range(10)],
        "full": lambda: evaluation_row(sim.fmodel, sim.program, d, sim.state.params, True),
        "test only": lambda: evaluation_row(sim.fmodel, sim.program, d, sim.state.params, False),
        f"sampled {eval_clients}": lambda: sampled.row(sim.fmodel, sim.program, d,
                                                       sim.state.params, sim.state.round),
    }
    for _ in range(3):
        sim.step()
    out: dict[str, Any] = {k: {"wall": [], "cpu": []} for k in phases}
    for _ in range(repeats):
        for name, f in phases.items():
            wall, cpu = _timed(f, per=10 if name == "round" else 1)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    out["rows"] = (int(d.x.shape[0]), int(d.x_test.shape[0]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--eval-clients", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = bench(args.clients, args.eval_clients, args.repeats)
    train_rows, test_rows = res.pop("rows")
    print(f"K = {args.clients:,} clients: {train_rows:,} training rows, {test_rows:,} test rows; "
          f"{args.threads} torch thread(s); medians of {args.repeats} interleaved repetitions")
    print(f"{'':<16}{'wall s':>10}{'rounds':>9}{'cpu s':>10}{'rounds':>9}   spread (cpu s)")
    base = {k: statistics.median(res["round"][k]) for k in ("wall", "cpu")}
    for name, t in res.items():
        w, c = statistics.median(t["wall"]), statistics.median(t["cpu"])
        print(f"{name:<16}{w:>10.3f}{w / base['wall']:>9.1f}{c:>10.3f}{c / base['cpu']:>9.1f}"
              f"   {min(t['cpu']):.3f}–{max(t['cpu']):.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")


if __name__ == "__main__":
    main()
