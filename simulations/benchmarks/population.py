"""Population scale from a memory-mapped store: FedAvg on logreg over N Synthetic clients.

The quickstart workload (Synthetic(1,1), logreg, K = 20 local steps, B = 10) with
``data.num_clients = N`` and ``data.storage: mmap`` (:mod:`fedopt.data.store`): the data set is
built once into a store on disk, then for each number m of clients per round a Simulation
opens the store (as a second run would) and runs FedAvg rounds, evaluating with
``eval_clients`` (a keyed sample of clients, :mod:`fedopt.sampled_eval`). Reported: the build's
time and the store's size on disk; per m the start-up time (opening the store and the checks
over all rows), client updates/s over a window of rounds (after one warm-up round), one
sampled evaluation's time; and the process's peak memory two ways: ``ru_maxrss`` (peak resident
set, which counts the pages of the memory-mapped files a pass has touched: page cache the
kernel reclaims at will) and peak ``RssAnon`` (anonymous memory, what the process allocated:
sampled from /proc/self/status every 20 ms).

    python -m fedopt.simulations.benchmarks.population --clients 1000000 --cache-dir /big/s1m

The store is deleted at the end when this run created it (``--keep`` keeps it); a store that
existed is reused and left alone.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import torch

from fedopt.config import load_config
from fedopt.data import build_dataset
from fedopt.simulation import Simulation
from fedopt.simulations.benchmarks.throughput import QUICKSTART, machine


class AnonPeak:
    """The largest ``RssAnon`` of this process seen by a sampling thread (bytes)."""

    def __init__(self, every_s: float = 0.02):
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every_s)

    def reset(self) -> None:
        self.peak = self.now()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10**6, help="population N")
    ap.add_argument("--cache-dir", required=True, help="the store's directory (data.cache_dir)")
    ap.add_argument("--clients-per-round", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--eval-clients", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0, help="seconds of timed rounds per m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep a store this run created")
    ap.add_argument("--set", nargs="*", default=[],
                    help="more config overrides, e.g. data.max_samples=200")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(os.path.expanduser(args.cache_dir))
    created = not os.path.lexists(path)
    base = [f"data.num_clients={args.clients}", "data.storage=mmap",
            f"data.cache_dir={path}", f"eval_clients={args.eval_clients}", *args.set]
    load0 = os.getloadavg()[0]
    anon = AnonPeak()
    try:
        cfg = load_config(QUICKSTART, base + [f"algorithm.clients_per_round="
                                              f"{args.clients_per_round[0]}"])
        t = time.perf_counter()
        data = build_dataset(cfg["data"], seed=cfg["seed"])
        build_s = time.perf_counter() - t
        disk = sum(p.stat().st_size for p in path.iterdir())
        print(f"build: {build_s:.1f} s ({'built' if created else 'reused'}), "
              f"{data.num_clients:,} clients, {data.x.shape[0]:,} train + "
              f"{data.x_test.shape[0]:,} test rows, store {_gib(disk)} on disk; peak RssAnon "
              f"{_gib(anon.peak)}, ru_maxrss {_gib(maxrss())}", flush=True)
        del data
        rows = []
        for m in args.clients_per_round:
            anon.reset()
            cfg = load_config(QUICKSTART, base + [f"algorithm.clients_per_round={m}"])
            t = time.perf_counter()
            sim = Simulation(cfg)
            start_s = time.perf_counter() - t
            sim.step()                                   # warm-up round
            t, u0, n = time.perf_counter(), sim.client_updates, 0
            while n < 3 or time.perf_counter() - t < args.window:
                sim.step()
                n += 1
            rate = (sim.client_updates - u0) / (time.perf_counter() - t)
            t = time.perf_counter()
            row = sim.evaluate()
            eval_s = time.perf_counter() - t
            sim.close()
            rows.append((m, start_s, n, rate, eval_s, row.get("test_accuracy"), anon.peak))
            print(f"m={m}: start-up {start_s:.1f} s, {n} rounds, {rate:,.0f} client updates/s, "
                  f"eval ({args.eval_clients} clients) {eval_s:.2f} s, test_accuracy "
                  f"{row.get('test_accuracy'):.3f}; peak RssAnon {_gib(anon.peak)}", flush=True)
    finally:
        anon.stop()
        if created and not args.keep and os.path.lexists(path):
            shutil.rmtree(path)
    print(f"machine: {machine()}; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at "
          f"end; ru_maxrss (whole run) {_gib(maxrss())}")
    print("| clients/round | start-up s | rounds | client updates/s | eval s | peak RssAnon |")
    print("|---|---|---|---|---|---|")
    for m, start_s, n, rate, eval_s, _, peak in rows:
        print(f"| {m} | {start_s:.1f} | {n} | {rate:,.0f} | {eval_s:.2f} | {_gib(peak)} |")


if __name__ == "__main__":
    main()
