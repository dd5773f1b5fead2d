"""Ray executor vs in-process: per-round overhead and client-updates/s for 1, 2, 4 workers.

Measured in one run, on one machine, for the quickstart problem (Synthetic(1,1), logreg, K = 20
local SGD steps, B = 10) at m clients per round (default 100, from a population of 1,000):

* in-process — the vectorized executor in this process (1 torch thread, and all cores);
* ray W      — the same rounds on W Ray worker actors (1 torch thread each, one logical CPU
               share of cores/W, GPUs if ``--gpus-per-worker``), same seed.

Columns: ms per round (timed server steps, no evaluation), client-updates/s, speed-up over
ray W=1, and the Ray overhead per round — the round's wall time minus its slowest shard's
training time on the workers (ray.put of the model, dispatch, result transfer, summation).
``max|Δ|`` is the largest difference of the final parameters from the in-process run (the
executors must agree). Worker memory (largest worker): ``data MiB`` — the data set it holds
(:meth:`~fedopt.client.ray_worker.ShardWorker.memory`), next to ``shard MiB``, the bytes of the
train rows of the clients it owns (``i ≡ j mod W``, from the coordinator's data set), and its
process's ``USS MiB`` (unique set size; the header gives an idle worker's, Python + torch +
Ray, for comparison). W workers can only run in parallel on ≥ W cores: on a 2-core machine
W = 4 shares 2 cores (and the coordinator and Ray's own processes use them too).

    python -m fedopt.simulations.benchmarks.ray_overhead                    # 100 clients/round
    python -m fedopt.simulations.benchmarks.ray_overhead --set client.local_steps=200   # more work/round
    python -m fedopt.simulations.benchmarks.ray_overhead --workers 1 2 4 8 --gpus-per-worker 0.25
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from fedopt.config import load_config
from fedopt.simulation import Simulation

#: the README's quickstart config, with 1,000 clients and 100 per round (set in ``bench``)
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SETTING = ["data.num_clients=1000", "algorithm.clients_per_round=100", "algorithm.rounds=1000",
           "eval_every=1000"]


def timed_rounds(sim: Simulation, rounds: int) -> tuple[float, int, list[float]]:
    """(seconds, client updates, per-round Ray overheads) for ``rounds`` steps after a warm-up."""
    sim.step()
    u0 = sim.client_updates
    overheads = []
    t = time.perf_counter()
    for _ in range(rounds):
        sim.step()
        report = getattr(sim.executor, "last_report", None)
        if report is not None:
            overheads.append(report.overhead_s)
    if sim.device.type == "cuda":
        torch.cuda.synchronize(sim.device)
    return time.perf_counter() - t, sim.client_updates - u0, overheads


def worker_memory(sim: Simulation) -> dict[str, float]:
    """Largest worker's held data MiB, its owned shard's MiB and its process USS MiB."""
    import ray

    pool = sim.executor.pool
    data = sim.data
    counts = data.counts.cpu().numpy()
    row = (data.x[:1].numel() * data.x.element_size() + data.y[:1].numel() * data.y.element_size())
    mems = ray.get([s.actor.memory.remote() for s in pool.slots])
    mib = 2.0 ** -20
    return {"data MiB": mib * max(m["data_bytes"] for m in mems),
            "shard MiB": mib * row * max(counts[j::pool.num_workers].sum()
                                         for j in range(pool.num_workers)),
            "USS MiB": mib * max(m["uss"] or 0 for m in mems)}


def idle_uss_mib() -> float:
    """USS of a Ray worker process with the workers' imports that holds nothing (MiB)."""
    import ray

    @ray.remote(num_cpus=0)
    def uss() -> int:
        import psutil

        import fedopt.client.ray_worker  # noqa: F401 - the worker's imports

        return psutil.Process(os.getpid()).memory_full_info().uss

    return ray.get(uss.remote()) * 2.0 ** -20


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].cpu() - b[k].cpu()).abs().max()) for k in a)


def bench(overrides: list[str], rounds: int, label: str, reference: dict | None) -> tuple[dict, dict]:
    sim = Simulation(load_config(QUICKSTART, SETTING + list(overrides)))
    try:
        secs, updates, overheads = timed_rounds(sim, rounds)
        row = {"executor": label, "ms/round": 1e3 * secs / rounds, "upd/s": updates / secs}
        if overheads:
            row["overhead ms"] = 1e3 * statistics.median(overheads)
            row["overhead p90 ms"] = 1e3 * sorted(overheads)[int(0.9 * (len(overheads) - 1))]
        if reference is not None:
            row["max|Δ|"] = max_diff(reference, sim.state.params)
        if getattr(sim.executor, "pool", None) is not None:
            row.update(worker_memory(sim))
        return row, sim.state.params
    finally:
        sim.executor.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per setting")
    ap.add_argument("--clients-per-round", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="config override, e.g. client.local_steps=100")
    args = ap.parse_args(argv)
    import ray

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]           # 1-minute load average before and after the runs
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    base = [f"algorithm.clients_per_round={args.clients_per_round}", *args.overrides]
    device = "cuda" if args.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
    try:
        rows = []
        row, ref = bench(base + ["executor.num_threads=1", f"executor.device={device}"],
                         args.rounds, "in-process, 1 thread", None)
        rows.append(row)
        local_1 = row
        row, _ = bench(base + [f"executor.num_threads={cores}", f"executor.device={device}"],
                       args.rounds, f"in-process, {cores} threads", ref)
        rows.append(row)
        idle = idle_uss_mib()
        ray_1 = None
        for w in args.workers:
            cpus = min(1.0, cores / w)
            row, _ = bench(base + ["executor.name=ray", f"executor.num_workers={w}",
                                   f"executor.num_cpus_per_worker={cpus:g}",
                                   f"executor.num_gpus_per_worker={args.gpus_per_worker:g}",
                                   "executor.num_threads=1"],
                           args.rounds, f"ray W={w}", ref)
            ray_1 = ray_1 or row
            row["speed-up"] = row["upd/s"] / ray_1["upd/s"]
            rows.append(row)
    finally:
        ray.shutdown()
    from fedopt.simulations.plot import results_table

    print(f"cores={cores} torch={torch.__version__} ray={ray.__version__} "
          f"clients/round={args.clients_per_round} rounds={args.rounds} "
          f"gpus/worker={args.gpus_per_worker:g} overrides={args.overrides} "
          f"idle worker USS={idle:.0f} MiB load={load:.2f}->{os.getloadavg()[0]:.2f}")
    print(results_table(rows, ["executor", "ms/round", "upd/s", "speed-up", "overhead ms",
                               "overhead p90 ms", "max|Δ|", "data MiB", "shard MiB",
                               "USS MiB"]))
    w1 = next((r for r in rows if r["executor"] == "ray W=1"), None)
    if w1 is not None:
        print(f"ray W=1 minus in-process (1 thread): "
              f"{w1['ms/round'] - local_1['ms/round']:.1f} ms/round")


if __name__ == "__main__":
    main()
