"""The zeroth-order study: queries and rounds to a target value for FedZO, FZooS, ZO-RankSGD and
FedCBO, with first-order FedAvg as the reference, on FZooS's heterogeneous quadratic and on a
black-box model task (softmax regression on the bundled digits, the loss evaluated only).

    python -m fedopt.simulations.studies.zeroth_order.run --out DIR [--quick] [--seeds 0 1 2]

Every run is :func:`fedopt.run` on the in-process engine (the clients' local programs: the
ZerothOrder estimator, the ranking oracle, LossOnly evaluations; FedAvg: autograd). Per
(setting, method, seed) the metrics rows (``test_loss``, cumulative ``queries``) go to
``DIR/runs/<setting>/<method>/seed<s>.json``; then ``DIR/results.json``, ``DIR/results.md``
(the table) and ``DIR/plots/<setting>.png`` (F against queries and rounds, mean over seeds).

Targets: the quadratic's F(x) − F* ≤ 0.05 (F0 − F*) with F* closed form (the clients'
coefficients average to 1, so x* = 0.475 per coordinate); digits: test loss ≤ 1.0 (from
ln 10 ≈ 2.30). Rounds/queries to target: the first evaluated round whose value reaches it
(a seed that never does counts as not reached, "n/3" in the table, mean over those that did).
FedAvg's "queries" are its loss+gradient evaluations (one per local step), listed for scale.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

QUAD_D, QUAD_N = 300, 5


def quad_setup(seed: int):
    import torch

    from fedopt.zo.objectives import FunctionModel, function_dataset, fzoos_quadratic, \
        fzoos_quadratic_rows

    rows = torch.tensor(fzoos_quadratic_rows(QUAD_N, QUAD_D, 0.5, seed=seed))
    x0 = torch.tensor(np.random.default_rng(seed).uniform(size=QUAD_D))
    f0 = float(fzoos_quadratic(x0[None], rows[None]).mean())
    f_star = -0.025 + 0.1 / QUAD_D          # p* = −Σc2/(2Σc1) = −1/2, x* = 0.475
    return (function_dataset(rows), FunctionModel(fzoos_quadratic, x0)), f0, f_star


def methods(setting: str, quick: bool) -> dict[str, tuple[dict, dict]]:
    """method -> (algorithm section, client section) of the setting."""
    adam = {"name": "adam", "lr": 0.01}
    small_fz = {"rff_features": 2000} if quick else {}
    if setting == "quadratic":
        return {
            "fedavg (first order)": ({"name": "fedavg"}, {"local_steps": 10, "optimizer": adam}),
            "fedzo": ({"name": "fedzo"}, {"local_steps": 10, "optimizer": adam, "estimator":
                                          {"name": "sphere", "directions": 20, "mu": 0.01}}),
            "fzoos": ({"name": "fzoos", "iters": 10, **small_fz},
                      {"local_steps": 1, "optimizer": adam}),
            "zo_ranksgd": ({"name": "zo_ranksgd", "m": 5, "k": 2, "mu": 0.01},
                           {"local_steps": 10, "optimizer": adam}),
            "fedcbo": ({"name": "fedcbo", "particles": 50, "alpha": 1000.0, "sigma": 0.5,
                        "dt": 0.1, "init_std": 0.1}, {"local_steps": 1}),
        }
    sgd = {"name": "sgd", "lr": 0.1}
    return {
        "fedavg (first order)": ({"name": "fedavg"}, {"local_steps": 10, "optimizer": sgd}),
        "fedzo": ({"name": "fedzo"}, {"local_steps": 10, "optimizer": {"name": "sgd", "lr": 0.01},
                                      "estimator": {"name": "sphere", "directions": 20,
                                                    "mu": 1e-3}}),
        "fzoos": ({"name": "fzoos", "iters": 10, **small_fz},
                  {"local_steps": 1, "optimizer": adam}),
        "zo_ranksgd": ({"name": "zo_ranksgd", "m": 5, "k": 2, "mu": 1e-2},
                       {"local_steps": 10, "optimizer": adam}),
        "fedcbo": ({"name": "fedcbo", "particles": 50, "alpha": 50.0, "sigma": 0.5, "dt": 0.1,
                    "init_std": 0.5}, {"local_steps": 1}),
    }


def run_one(setting: str, method: str, seed: int, rounds: int, quick: bool) -> dict[str, Any]:
    import fedopt
    from fedopt.zo.objectives import value

    alg, client = methods(setting, quick)[method]
    base_client = {"batch_size": 1 if setting == "quadratic" else 32, **client}
    cfg = {"seed": seed, "algorithm": {**alg, "rounds": rounds, "clients_per_round": QUAD_N},
           "client": base_client, "executor": {"dtype": "float64"}, "eval_train": False,
           "checkpoint_every": 0}
    t = time.perf_counter()
    if setting == "quadratic":
        (data, model), f0, f_star = quad_setup(seed)
        cfg["data"] = {"name": "regression", "num_clients": QUAD_N}
        res = fedopt.run(cfg, dataset=data, model=model, loss=value, metrics={}, progress=False)
    else:
        cfg["data"] = {"name": "digits", "num_clients": QUAD_N}
        cfg["model"] = {"name": "logreg"}
        res = fedopt.run(cfg, progress=False)
        f0, f_star = math.log(10), None
    rows = [{"round": r["round"], "value": r["test_loss"],
             "queries": r.get("queries", r["round"] * QUAD_N * base_client["local_steps"])}
            for r in res.metrics]
    return {"rows": rows, "f0": f0, "f_star": f_star, "seconds": time.perf_counter() - t}


def to_target(run: dict[str, Any], setting: str) -> tuple[float | None, float | None]:
    if setting == "quadratic":
        target = run["f_star"] + 0.05 * (run["f0"] - run["f_star"])
    else:
        target = 1.0
    for r in run["rows"]:
        if r["value"] <= target:
            return r["round"], r["queries"]
    return None, None


def summarize(results: dict, settings: list[str], seeds: list[int]) -> str:
    lines = []
    for s in settings:
        what = ("F − F* ≤ 0.05 (F0 − F*)" if s == "quadratic" else "test loss ≤ 1.0")
        lines += [f"### {s} ({what})", "",
                  "| method | rounds to target | queries to target | final value | s/run |",
                  "|---|---|---|---|---|"]
        for m, runs in results[s].items():
            hits = [to_target(runs[str(k)], s) for k in seeds]
            ok = [h for h in hits if h[0] is not None]
            n = f" ({len(ok)}/{len(seeds)})" if len(ok) < len(seeds) else ""
            rnd = f"{np.mean([h[0] for h in ok]):.1f}{n}" if ok else f"not reached (0/{len(seeds)})"
            qry = f"{np.mean([h[1] for h in ok]):,.0f}{n}" if ok else "–"
            final = np.mean([runs[str(k)]["rows"][-1]["value"] for k in seeds])
            sec = np.mean([runs[str(k)]["seconds"] for k in seeds])
            lines.append(f"| {m} | {rnd} | {qry} | {final:.4g} | {sec:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, setting: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, runs in results[setting].items():
        seeds = sorted(runs)
        vals = np.mean([[r["value"] for r in runs[k]["rows"]] for k in seeds], axis=0)
        if setting == "quadratic":
            f_star = runs[seeds[0]]["f_star"]
            vals = np.maximum(vals - f_star, 1e-12)
        qs = np.mean([[r["queries"] for r in runs[k]["rows"]] for k in seeds], axis=0)
        rounds = [r["round"] for r in runs[seeds[0]]["rows"]]
        axes[0].plot(qs, vals, label=m)
        axes[1].plot(rounds, vals, label=m)
    for ax, x in zip(axes, ("queries (all clients)", "round")):
        ax.set_xlabel(x)
        ax.set_ylabel("F − F*" if setting == "quadratic" else "test loss")
        ax.set_yscale("log")
        if x.startswith("queries"):
            ax.set_xscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"zeroth-order study: {setting} (mean of seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="fewer rounds, one seed, smaller RFF")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--settings", nargs="*", default=["quadratic", "digits"])
    p.add_argument("--methods", nargs="*", default=None)
    args = p.parse_args(argv)
    import torch

    from fedopt.simulations.studies import claim_out_dir

    torch.set_num_threads(1)   # small problems: intra-op threads only contend on shared cores
    out = claim_out_dir(args.out, "zeroth_order")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    rounds = {"quadratic": 10 if args.quick else 50, "digits": 10 if args.quick else 50}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for s in args.settings:
        results[s] = {}
        for m in methods(s, args.quick):
            if args.methods and m.split()[0] not in args.methods:
                continue
            results[s][m] = {}
            for seed in seeds:
                f = out / "runs" / s / m.split()[0] / f"seed{seed}.json"
                if f.exists():
                    run = json.loads(f.read_text())
                else:
                    run = run_one(s, m, seed, rounds[s], args.quick)
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(json.dumps(run))
                results[s][m][str(seed)] = run
                print(f"{s:9s} {m:22s} seed {seed}: final {run['rows'][-1]['value']:.5g}, "
                      f"queries {run['rows'][-1]['queries']:,}, {run['seconds']:.1f} s",
                      flush=True)
    (out / "results.json").write_text(json.dumps(results))
    (out / "results.md").write_text(summarize(results, list(results), seeds))
    (out / "plots").mkdir(exist_ok=True)
    for s in results:
        plot(results, s, out / "plots" / f"{s}.png")
    print(summarize(results, list(results), seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
