"""The sequential-gradient-coding runtime study (spec gradient_coding.md §2.6–2.7): total virtual
runtime of J jobs for no coding, GC, SR-SGC and M-SGC on bursty Gilbert–Elliott delays.

    python -m fedopt.simulations.studies.gradient_coding.run --out DIR [--quick] [--seeds 0 1 2]

For each n ∈ {16, 64, 256}, seed and delay model (``compute``: §3.3's defaults, only the compute
part slows down; ``trace``: the whole round slows down, overhead included, as in the authors'
Lambda traces), every scheme runs the authors' protocol (:func:`fedopt.coding.sgc.
simulate_runtime`: stragglers past 2× the fastest worker, μ = 1; a round the scheme cannot
absorb waits for everybody) with its parameters grid-searched on that same delay matrix, as the
authors did (GC: every s; SR-SGC: B ≤ 8 and every s; M-SGC: B ≤ 6, W ≤ B + 6, λ on a
geometric grid; ``--quick``: s = 1..16 then every 8th). Writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/runtime.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fedopt.coding.delays import gilbert_elliott
from fedopt.coding.sgc import GC, MSGC, SRSGC, simulate_runtime

MODELS = {
    "compute": dict(p=0.02, q=0.5, slow=5.0, c0=0.5, c1=2.0, m=0.5, overhead_slows=False),
    "trace": dict(p=0.02, q=0.5, slow=5.0, c0=0.5, c1=2.0, m=0.5, overhead_slows=True),
}


def lam_grid(n: int) -> list[int]:
    g = sorted({v for v in [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192] if v < n})
    return g + [n]


def s_grid(n: int, quick: bool) -> list[int]:
    return list(range(1, n)) if not quick else sorted({*range(1, min(n, 17)), *range(16, n, 8)})


def best(schemes, times) -> tuple[float, str, float]:
    out = []
    for label, sch in schemes:
        out.append((simulate_runtime(sch, times, mu=1.0).total, label, sch.load))
    return min(out)


def study(n: int, J: int, seed: int, model: str, quick: bool) -> dict:
    times = gilbert_elliott(n, J + 40, seed=seed, **MODELS[model])
    res = {}
    res["uncoded"] = best([("s=0", GC(n, 0, J))], times)
    res["gc"] = best([(f"s={s}", GC(n, s, J)) for s in s_grid(n, quick)], times)
    sr = []
    for B in range(1, 9):
        for s in s_grid(n, quick):
            W = B + 1               # W − 1 = B: s = ⌈Bλ / 2B⌉ = ⌈λ / 2⌉, λ = 2s (s ≤ n/2);
            sch = SRSGC(n, B, W, min(n, 2 * s), J)
            if sch.s == s:
                sr.append((f"B={B},W={W},s={s}", sch))
    res["sr_sgc"] = best(sr, times)
    ms = []
    for B in range(1, 7):
        for W in range(B + 1, min(B + 7, 22 - B)):
            for lam in lam_grid(n):
                ms.append((f"B={B},W={W},λ={lam}", MSGC(n, B, W, lam, J)))
    res["m_sgc"] = best(ms, times)
    return {k: {"runtime": v[0], "params": v[1], "load": v[2]} for k, v in res.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ns", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--jobs", type=int, default=80)
    ap.add_argument("--quick", action="store_true", help="coarser grids")
    args = ap.parse_args(argv)
    from fedopt.simulations.studies import claim_out_dir

    out = claim_out_dir(args.out, "gradient_coding")
    rows = []
    t0 = time.perf_counter()
    for model in MODELS:
        for n in args.ns:
            for seed in args.seeds:
                r = study(n, args.jobs, seed, model, args.quick)
                rows.append({"model": model, "n": n, "seed": seed, **r})
                print(model, n, seed, {k: round(v["runtime"], 2) for k, v in r.items()},
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
    from fedopt.runfiles import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / "results.json", rows)
    atomic_write_bytes(out / "results.md", table(rows, args.jobs).encode())
    plot(rows, out / "runtime.png")


SCHEMES = ("uncoded", "gc", "sr_sgc", "m_sgc")


def table(rows, J) -> str:
    lines = [f"J = {J} jobs, mean ± std over seeds of the total virtual runtime (s); the best "
             f"parameters and per-round load of seed 0; gain = 1 − M-SGC / GC.", "",
             "| delays | n | no coding | GC | SR-SGC | M-SGC | M-SGC vs GC | M-SGC vs none |",
             "|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for n in sorted({r["n"] for r in rows}):
            sel = [r for r in rows if r["model"] == model and r["n"] == n]
            if not sel:
                continue
            cells = []
            for k in SCHEMES:
                v = np.array([r[k]["runtime"] for r in sel])
                p0 = sel[0][k]
                cells.append(f"{v.mean():.1f} ± {v.std():.1f} ({p0['params']}; {p0['load']:.4f})")
            gc = np.array([r["gc"]["runtime"] for r in sel])
            ms = np.array([r["m_sgc"]["runtime"] for r in sel])
            un = np.array([r["uncoded"]["runtime"] for r in sel])
            lines.append(f"| {model} | {n} | " + " | ".join(cells)
                         + f" | {100 * (1 - ms / gc).mean():+.1f} % | "
                           f"{100 * (1 - ms / un).mean():+.1f} % |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(10, 3.8), sharey=False)
    for ax, model in zip(np.atleast_1d(axes), MODELS):
        ns = sorted({r["n"] for r in rows if r["model"] == model})
        for k in SCHEMES:
            means = [np.mean([r[k]["runtime"] for r in rows
                              if r["model"] == model and r["n"] == n]) for n in ns]
            ax.plot(ns, means, marker="o", label=k)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers n")
        ax.set_ylabel("total runtime (virtual s)")
        ax.set_title(f"Gilbert–Elliott, {model} slows")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
