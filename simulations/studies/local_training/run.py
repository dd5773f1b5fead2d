"""The local-training study: adaptive batch sizes (AdAdaGrad), SSO and curricula inside FedAvg,
on digits (MLP 64-32-10) and Synthetic(1, 1) (softmax regression), 3 seeds.

    python -m fedopt.simulations.studies.local_training.run --out DIR [--quick] [--seeds 0 1 2]

(a) **batch size**: AdaGrad and Adam clients with a fixed small batch (b = 4), a fixed large
    batch (b = 32) and the adaptive batch (b₀ = 4, norm test η ∈ {0.25, 1}, b_max = n_i; η = 0.25
    also with the sqrt learning-rate rule); equal samples per round (one local epoch) by design.
    Per run: local steps (all clients) and samples until the train loss reaches the target (the
    b = 32 run's final train loss, mean of seeds), and the final train loss / test accuracy.
(b) **SSO**: SGD (10 local steps, b = 10) against SSO(m = 5, η = 2) with the same inner SGD and
    the same 10 outer steps (equal ∇_z ℓ queries), and SGD with 50 steps (equal parameter passes).
(c) **curricula**: curriculum / anti / random ordering (global-model loss scores, linear pacing
    a = 0.8, b = 0.2, min prefix 8) under IID and strong heterogeneity (digits: Dirichlet(0.1)
    label skew; Synthetic: IID vs Synthetic(1, 1)); two local epochs, SGD lr 0.05, b = 10.

Every run is :func:`fedopt.run` on the in-process engine (10 clients, all every round), float32.
Runs go to ``DIR/runs/<part>/<dataset>/<method>/seed<s>.json`` (reused when present); then
``DIR/results.json``, ``DIR/results.md`` and ``DIR/plots/*.png``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

CLIENTS = 10


def data(dataset: str, hetero: bool = True) -> tuple[dict, dict]:
    if dataset == "digits":
        part = {"name": "dirichlet", "alpha": 0.1} if hetero else {"name": "iid"}
        return ({"name": "digits", "num_clients": CLIENTS, "partition": part},
                {"name": "mlp", "hidden": [32]})
    syn = {"alpha": 1.0, "beta": 1.0} if hetero else {"alpha": 0.0, "beta": 0.0, "iid": True}
    return ({"name": "synthetic", "num_clients": CLIENTS, "min_samples": 40, "max_samples": 160,
             **syn}, {"name": "logreg"})


def experiments(quick: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """part -> method -> {client: ..., hetero: bool}."""
    opts = {"adagrad": {"name": "adagrad", "lr": 0.05}, "adam": {"name": "adam", "lr": 0.005}}
    a: dict[str, dict[str, Any]] = {}
    for o, spec in opts.items():
        base = {"local_epochs": 1, "optimizer": spec}
        # a test that can never grow (b_max = b) keeps the fixed trajectory bit for bit and
        # gives the rows their batch_size columns (local steps)
        a[f"{o} b=4"] = {**base, "batch_size": 4,
                         "batch_size_test": {"name": "norm", "max_batch_size": 4}}
        a[f"{o} b=32"] = {**base, "batch_size": 32,
                          "batch_size_test": {"name": "norm", "max_batch_size": 32}}
        for eta in (0.25, 1.0):
            a[f"{o} adaptive η={eta:g}"] = {**base, "batch_size": 4,
                                            "batch_size_test": {"name": "norm", "eta": eta}}
        a[f"{o} adaptive η=0.25+sqrt"] = {**a[f"{o} adaptive η=0.25"], "lr_batch_scaling": "sqrt"}
    sgd = {"name": "sgd", "lr": 0.05}
    b = {"sgd K=10": {"local_steps": 10, "batch_size": 10, "optimizer": sgd,
                      "sso": {"inner_steps": 1}},
         "sso m=5 K=10": {"local_steps": 10, "batch_size": 10, "optimizer": sgd,
                          "sso": {"inner_steps": 5, "eta": 2.0}},
         "sgd K=50": {"local_steps": 50, "batch_size": 10, "optimizer": sgd,
                      "sso": {"inner_steps": 1}}}
    c = {}
    for het in (False, True):
        for order in ("curriculum", "anti", "random"):
            c[f"{'hetero' if het else 'iid'} {order}"] = {
                "local_epochs": 2, "batch_size": 10, "optimizer": sgd, "hetero": het,
                "curriculum": {"order": order, "pacing": "linear", "a": 0.8, "b": 0.2,
                               "min_prefix": 8}}
    return {"batch_size": a, "sso": b, "curriculum": c}


def run_one(part: str, dataset: str, client: dict[str, Any], seed: int, rounds: int
            ) -> dict[str, Any]:
    import fedopt

    client = dict(client)
    hetero = client.pop("hetero", False)
    d, m = data(dataset, hetero)
    cfg = {"seed": seed, "data": d, "model": m,
           "algorithm": {"name": "fedavg", "rounds": rounds, "clients_per_round": CLIENTS},
           "client": client, "eval_train": True, "checkpoint_every": 0}
    t = time.perf_counter()
    res = fedopt.run(cfg, progress=False)
    rows, steps = [], 0.0
    prev = 0
    for r in res.metrics:
        s_round = r["samples"] - prev
        prev = r["samples"]
        steps += s_round / r["batch_size_mean"] if r.get("batch_size_mean") else 0.0
        rows.append({"round": r["round"], "train_loss": r["train_loss"],
                     "test_accuracy": r["test_accuracy"], "samples": r["samples"],
                     "steps": steps, "batch_size_mean": r.get("batch_size_mean"),
                     "batch_size_max": r.get("batch_size_max")})
    return {"rows": rows, "seconds": time.perf_counter() - t}


def first_reach(rows: list[dict], target: float) -> tuple[float | None, float | None]:
    for r in rows:
        if r["train_loss"] <= target:
            return r["steps"], r["samples"]
    return None, None


def summarize(results: dict, seeds: list[str]) -> str:
    lines = []
    for part, by_data in results.items():
        for dataset, by_method in by_data.items():
            lines += [f"### {part}: {dataset}", ""]
            finals = {m: np.mean([runs[s]["rows"][-1]["train_loss"] for s in seeds])
                      for m, runs in by_method.items()}
            accs = {m: (np.mean([runs[s]["rows"][-1]["test_accuracy"] for s in seeds]),
                        np.std([runs[s]["rows"][-1]["test_accuracy"] for s in seeds]))
                    for m, runs in by_method.items()}
            secs = {m: np.mean([runs[s]["seconds"] for s in seeds]) for m, runs in by_method.items()}
            if part == "batch_size":
                for opt in ("adagrad", "adam"):
                    group = [m for m in by_method if m.startswith(opt)]
                    target = finals[f"{opt} b=32"]
                    lines += [f"{opt}: target train loss {target:.4f} (the fixed b = 32 run's "
                              f"final, mean of seeds)",
                              "", "| method | local steps to target | samples to target | "
                              "final train loss | final test acc (± sd) | mean / max batch, "
                              "last round | s/run |", "|---|---|---|---|---|---|---|"]
                    for m in group:
                        hits = [first_reach(by_method[m][s]["rows"], target) for s in seeds]
                        ok = [h for h in hits if h[0] is not None]
                        n = f" ({len(ok)}/{len(seeds)})" if len(ok) < len(seeds) else ""
                        st = f"{np.mean([h[0] for h in ok]):,.0f}{n}" if ok else "not reached"
                        sa = f"{np.mean([h[1] for h in ok]):,.0f}{n}" if ok else "–"
                        last = [by_method[m][s]["rows"][-1] for s in seeds]
                        bm = np.mean([r["batch_size_mean"] for r in last])
                        bx = max(r["batch_size_max"] for r in last)
                        lines.append(f"| {m} | {st} | {sa} | {finals[m]:.4f} | "
                                     f"{accs[m][0]:.3f} ± {accs[m][1]:.3f} | {bm:.1f} / {bx} | "
                                     f"{secs[m]:.1f} |")
                    lines.append("")
            else:
                lines += ["| method | final train loss | final test acc (± sd) | "
                          "best test acc | s/run |", "|---|---|---|---|---|"]
                for m, runs in by_method.items():
                    best = np.mean([max(r["test_accuracy"] for r in runs[s]["rows"])
                                    for s in seeds])
                    lines.append(f"| {m} | {finals[m]:.4f} | {accs[m][0]:.3f} ± "
                                 f"{accs[m][1]:.3f} | {best:.3f} | {secs[m]:.1f} |")
                lines.append("")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for part, by_data in results.items():
        fig, axes = plt.subplots(1, len(by_data) * (2 if part == "batch_size" else 1),
                                 figsize=(5.5 * len(by_data) * (2 if part == "batch_size" else 1),
                                          4), squeeze=False)
        col = 0
        for dataset, by_method in by_data.items():
            xs = ("steps", "samples") if part == "batch_size" else ("round",)
            for x in xs:
                ax = axes[0, col]
                col += 1
                for m, runs in by_method.items():
                    seeds = sorted(runs)
                    key = "train_loss" if part != "curriculum" else "test_accuracy"
                    ys = np.mean([[r[key] for r in runs[s]["rows"]] for s in seeds], axis=0)
                    xv = np.mean([[r[x] for r in runs[s]["rows"]] for s in seeds], axis=0)
                    ax.plot(xv, ys, label=m, marker=".")
                ax.set_xlabel(f"{x} (cumulative)" if x != "round" else "round")
                ax.set_ylabel(key.replace("_", " "))
                if part != "curriculum":
                    ax.set_yscale("log")
                if x == "steps":
                    ax.set_xscale("log")
                ax.set_title(dataset)
                ax.legend(fontsize=7)
        fig.suptitle(f"local training study: {part} (mean of seeds)")
        fig.tight_layout()
        fig.savefig(out / f"{part}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="3 rounds, one seed")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--parts", nargs="*", default=["batch_size", "sso", "curriculum"])
    p.add_argument("--datasets", nargs="*", default=["digits", "synthetic"])
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    from fedopt.simulations.studies import claim_out_dir

    torch.set_num_threads(1)   # small problems: intra-op threads only contend on shared cores
    out = claim_out_dir(args.out, "local_training")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    rounds = args.rounds or (3 if args.quick else 15)
    exps = experiments(args.quick)
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for part in args.parts:
        results[part] = {}
        for dataset in args.datasets:
            results[part][dataset] = {}
            for m, client in exps[part].items():
                results[part][dataset][m] = {}
                for seed in seeds:
                    f = out / "runs" / part / dataset / m.replace(" ", "_") / f"seed{seed}.json"
                    if f.exists():
                        run = json.loads(f.read_text())
                    else:
                        run = run_one(part, dataset, client, seed, rounds)
                        f.parent.mkdir(parents=True, exist_ok=True)
                        f.write_text(json.dumps(run))
                    results[part][dataset][m][str(seed)] = run
                    last = run["rows"][-1]
                    print(f"{part:10s} {dataset:9s} {m:24s} seed {seed}: train loss "
                          f"{last['train_loss']:.4f}, acc {last['test_accuracy']:.3f}, "
                          f"{run['seconds']:.1f} s", flush=True)
    (out / "results.json").write_text(json.dumps(results))
    (out / "results.md").write_text(summarize(results, [str(s) for s in seeds]))
    (out / "plots").mkdir(exist_ok=True)
    plot(results, out / "plots")
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
