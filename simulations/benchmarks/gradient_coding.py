"""Gradient-coding benchmark, measured in one run on one machine:

* decode time per iteration at n = 256 (cyclic code, s = 15 and 31; FRC, s = 15): uncached (a
  new arrival pattern every iteration: one float64 least-squares solve with two refinement
  steps) and cached (the pattern seen before: an LRU lookup), with the worst reconstruction error
  ‖aᵀB − 1‖∞ and the largest decoding coefficient;
* coded-gradient throughput: ms per iteration and coded gradients per second of the
  ``gradient_coding`` algorithm (Synthetic(1,1), 64 clients, logistic regression, n workers)
  in-process (virtual clock) and on Ray (``algorithm.live``: 2 worker actors, one coded-task
  call per actor and iteration computing its coded workers' results, the master takes first
  responders with ``ray.wait``; real compute times, no injected delay), same configs.

    python -m fedopt.simulations.benchmarks.gradient_coding [--repeats 50] [--no-ray]

BLAS
runs single-threaded (``OPENBLAS_NUM_THREADS=1`` unless set): on a shared 2-core machine a
threaded least-squares solve is ~13x slower than a single-threaded one.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np


def decode_times(repeats: int) -> list[dict]:
    from fedopt.coding import cyclic, frc

    rows = []
    for name, make, n, s in [("cyclic", cyclic, 256, 15), ("cyclic", cyclic, 256, 31),
                             ("frc", lambda n, s: frc(n, s), 256, 15)]:
        t0 = time.perf_counter()
        code = make(n, s) if name == "frc" else make(n, s, 0)
        build = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        sets = [rng.choice(n, n - s, replace=False) for _ in range(repeats)]
        t0 = time.perf_counter()
        vecs = [code.decode(F) for F in sets]
        uncached = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for F in sets:
            code.decode(F)
        cached = (time.perf_counter() - t0) / repeats
        rows.append({"code": name, "n": n, "s": s, "build_ms": 1e3 * build,
                     "uncached_ms": 1e3 * uncached, "cached_ms": 1e3 * cached,
                     "max_recon_err": max(code.reconstruction_error(a) for a in vecs),
                     "max_coef": max(float(np.abs(a).max()) for a in vecs)})
    return rows


def throughput(iters: int, ray: bool) -> list[dict]:
    from fedopt.config import load_config
    from fedopt.simulation import Simulation

    rows = []
    for executor in (["local", "ray"] if ray else ["local"]):
        for code, n, s in [("uncoded", 16, 0), ("cyclic", 16, 3), ("frc", 16, 3),
                           ("cyclic", 64, 7)]:
            cfg = {"seed": 0, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0,
                                       "num_clients": 64},
                   "model": {"name": "logreg"},
                   "algorithm": {"name": "gradient_coding", "code": code, "num_workers": n,
                                 "stragglers": s, "rounds": iters + 1,
                                 "live": executor == "ray"},
                   "client": {"local_steps": 1, "batch_size": 100_000,
                              "optimizer": {"name": "sgd", "lr": 0.1}},
                   "clock": {"compute": {"name": "exponential", "shift": 0.5, "scale": 1.0}},
                   "executor": {"name": executor, "device": "cpu"}, "eval_every": 10 ** 6}
            if executor == "ray":
                cfg["executor"].update({"num_workers": 2, "num_threads": 1})
            sim = Simulation(load_config(cfg))
            try:
                sim.step()                                   # warm-up
                t0 = time.perf_counter()
                for _ in range(iters):
                    sim.step()
                dt = (time.perf_counter() - t0) / iters
            finally:
                sim.close()
            rows.append({"executor": executor, "code": code, "n": n, "s": s,
                         "ms_per_iter": 1e3 * dt, "coded_gradients_per_s": n / dt})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true", help="in-process only")
    args = ap.parse_args(argv)
    print("| code | n | s | build ms | decode ms (uncached) | decode ms (cached) | speed-up | "
          "max ‖aᵀB−1‖∞ | max |a_i| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in decode_times(args.repeats):
        print(f"| {r['code']} | {r['n']} | {r['s']} | {r['build_ms']:.1f} | "
              f"{r['uncached_ms']:.3f} | {r['cached_ms']:.4f} | "
              f"{r['uncached_ms'] / r['cached_ms']:.0f}× | {r['max_recon_err']:.1e} | "
              f"{r['max_coef']:.1e} |")
    print()
    print("| executor | code | n | s | ms/iteration | coded gradients/s |")
    print("|---|---|---|---|---|---|")
    for r in throughput(args.iters, not args.no_ray):
        print(f"| {r['executor']} | {r['code']} | {r['n']} | {r['s']} | "
              f"{r['ms_per_iter']:.1f} | {r['coded_gradients_per_s']:.0f} |")


if __name__ == "__main__":
    main()
