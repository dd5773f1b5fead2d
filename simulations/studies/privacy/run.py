"""The privacy study: accuracy and training loss against the budget ε for DP-FedAvg, DP-GD and
DIFF2-GD on digits (MLP 64-32-10) and Synthetic(1,1) (softmax regression), 10 clients.

    python -m fedopt.simulations.studies.privacy.run --out DIR [--quick] [--seeds 0 1 2]

Every run is :func:`fedopt.run` on the in-process engine with a ``privacy:`` section, the noise
calibrated from (ε, δ = 1e-5) over the R rounds by the RDP accountant of dp-accounting:

* ``dp_fedavg``: user-level DP-FedAvg, all 10 clients every round (q = 1), 5 local SGD steps,
  updates clipped to C, central noise σC/m on the average;
* ``dp_gd``: record-level DP-GD = DIFF2 with restart period T = 1 (every round a clipped,
  noised full gradient, C1);
* ``diff2``: record-level DIFF2-GD, T = 5, C2 = 0.2·C1, restart share ρ = 0.5.

C = C1 = 1 and the server step η = 0.5 for both DP-GD and DIFF2 (picked, with T and C2, from a
one-seed sweep on Synthetic at ε ∈ {1, 8}; see the README).

ε = inf keeps the clipping and drops the noise. The two mechanisms protect different units (a
client's whole data set vs one record of it), so their ε are not the same guarantee; DP-GD
against DIFF2 is the paper's comparison at equal (ε, δ). Per (setting, method, ε, seed) the
final row goes to ``DIR/runs/<setting>/<method>/eps<ε>_seed<s>.json``; then
``DIR/results.json``, ``DIR/results.md`` (mean ± std over seeds) and ``DIR/plots/privacy.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
SETTINGS = {
    "digits": ({"name": "digits", "num_clients": 10}, {"name": "mlp", "hidden": [32]}),
    "synthetic": ({"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 10},
                  {"name": "logreg"}),
}
#: one hyperparameter setting per method (not tuned per ε or data set; see the README)
CLIP = 1.0
ETA = 0.5
PERIOD = 5
CLIP_DIFF = 0.2


def method_config(method: str, setting: str, rounds: int, eps: float) -> dict[str, Any]:
    """The algorithm, client and privacy sections of one run."""
    if method == "dp_fedavg":
        return {"algorithm": {"name": "fedavg", "rounds": rounds, "clients_per_round": 10,
                              "aggregation_weights": "uniform"},
                "client": {"local_steps": 5, "batch_size": 32,
                           "optimizer": {"name": "sgd", "lr": 0.1}},
                "privacy": {"mechanism": "dp_fedavg", "epsilon": eps, "clip": CLIP}}
    period = 1 if method == "dp_gd" else PERIOD
    return {"algorithm": {"name": "diff2", "rounds": rounds, "clients_per_round": 10,
                          "restart_period": period, "aggregation_weights": "uniform",
                          "server_optimizer": {"name": "sgd", "lr": ETA}},
            "client": {"local_steps": 1, "batch_size": 100000},
            "privacy": {"mechanism": "diff2", "epsilon": eps, "clip": CLIP,
                        "clip_diff": CLIP_DIFF * CLIP}}


METHODS = ("dp_fedavg", "dp_gd", "diff2")


def run_one(setting: str, method: str, eps: float, seed: int, rounds: int) -> dict[str, Any]:
    import fedopt

    data, model = SETTINGS[setting]
    cfg = {"seed": seed, "data": data, "model": model, "executor": {"dtype": "float32"},
           "eval_every": rounds, "checkpoint_every": 0,
           **method_config(method, setting, rounds, eps)}
    t = time.perf_counter()
    res = fedopt.run(cfg, progress=False)
    last = res.metrics[-1]
    p = res.config["privacy"]
    return {"test_accuracy": last["test_accuracy"], "train_loss": last["train_loss"],
            "epsilon_spent": last["epsilon_spent"], "noise_multiplier": p["noise_multiplier"],
            "noise_multiplier_diff": p.get("noise_multiplier_diff"),
            "seconds": time.perf_counter() - t}


def _key(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        return "diverged" if len(v) == 1 else f"{np.nanmean(np.where(np.isfinite(v), v, np.nan)):.3f} ({int((~np.isfinite(v)).sum())} diverged)"
    return f"{v.mean():.3f} ± {v.std():.3f}"


def summarize(results: dict, seeds: list[int]) -> str:
    lines = []
    for s, by_method in results.items():
        for metric, what in (("test_accuracy", "final test accuracy"),
                             ("train_loss", "final training loss")):
            lines += [f"### {s}: {what} (mean ± std over seeds {seeds})", "",
                      "| method | " + " | ".join(f"ε = {k}" for k in by_method[METHODS[0]])
                      + " |", "|---" * (1 + len(by_method[METHODS[0]])) + "|"]
            for m, by_eps in by_method.items():
                cells = [_mean_std([by_eps[e][str(k)][metric] for k in seeds]) for e in by_eps]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
        if {"diff2", "dp_gd"} <= set(by_method):
            lines += [f"### {s}: DIFF2 − DP-GD, paired by seed (mean ± std; negative loss, "
                      f"positive accuracy: DIFF2 better)", "",
                      "| metric | " + " | ".join(f"ε = {k}" for k in by_method["diff2"]) + " |",
                      "|---" * (1 + len(by_method["diff2"])) + "|"]
            for metric in ("train_loss", "test_accuracy"):
                cells = []
                for e, runs in by_method["diff2"].items():
                    d = np.array([runs[str(k)][metric] - by_method["dp_gd"][e][str(k)][metric]
                                  for k in seeds])
                    cells.append(f"{d.mean():+.3f} ± {d.std():.3f}")
                lines.append(f"| {metric} | " + " | ".join(cells) + " |")
            lines.append("")
        z = {m: by_method[m][_key(1.0)][str(seeds[0])] for m in by_method if _key(1.0) in
             by_method[m]}
        lines.append(f"Noise multipliers at ε = 1 ({s}): " + "; ".join(
            f"{m} z = {r['noise_multiplier']:.3g}" + (
                f", z2 = {r['noise_multiplier_diff']:.3g}" if r.get("noise_multiplier_diff")
                else "") for m, r in z.items()))
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, seeds: list[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (s, by_method) in zip(axes[0], results.items()):
        for m, by_eps in by_method.items():
            keys = list(by_eps)
            xs = [16.0 if k == "inf" else float(k) for k in keys]
            acc = np.array([[by_eps[k][str(sd)]["test_accuracy"] for sd in seeds] for k in keys])
            ax.errorbar(xs, acc.mean(1), yerr=acc.std(1), marker="o", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "∞"])
        ax.set_xlabel("ε (δ = 1e-5)")
        ax.set_ylabel("final test accuracy")
        ax.set_title(s)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="10 rounds, one seed")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = p.parse_args(argv)
    import torch

    from fedopt.simulations.studies import claim_out_dir

    torch.set_num_threads(1)   # small problems: intra-op threads only contend on shared cores
    out = claim_out_dir(args.out, "privacy")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    rounds = args.rounds or (10 if args.quick else 50)
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    start = time.perf_counter()
    for s in args.settings:
        results[s] = {}
        for m in METHODS:
            results[s][m] = {}
            for eps in EPSILONS:
                results[s][m][_key(eps)] = {}
                for seed in seeds:
                    f = out / "runs" / s / m / f"eps{_key(eps)}_seed{seed}.json"
                    if f.exists():
                        run = json.loads(f.read_text())
                    else:
                        run = run_one(s, m, eps, seed, rounds)
                        f.parent.mkdir(parents=True, exist_ok=True)
                        f.write_text(json.dumps(run))
                    results[s][m][_key(eps)][str(seed)] = run
                    print(f"{s:9s} {m:9s} eps {_key(eps):>3s} seed {seed}: acc "
                          f"{run['test_accuracy']:.3f}, train loss {run['train_loss']:.4g}, "
                          f"{run['seconds']:.1f} s", flush=True)
    run_seconds = sum(r["seconds"] for by_m in results.values() for by_e in by_m.values()
                      for by_s in by_e.values() for r in by_s.values())
    meta = {"rounds": rounds, "seeds": seeds, "run_seconds": run_seconds,
            "wall_seconds_this_call": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}))
    (out / "results.md").write_text(summarize(results, seeds)
                                    + f"\n{rounds} rounds; the runs took {run_seconds:.0f} s "
                                      f"in all (sum of their wall times).\n")
    (out / "plots").mkdir(exist_ok=True)
    plot(results, seeds, out / "plots" / "privacy.png")
    print(summarize(results, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
