"""The asynchrony study: FedAvg (wait for all / drop the slowest), FedFix, FedBuff and
asynchronous FedAvg (unbiased / identical weights) on the virtual clock, under (a) i.i.d.
exponential delays, (b) heavy-tailed Pareto stragglers and (c) a 10x slow cohort holding its own
label skew, on Synthetic(1,1) and digits (Dirichlet 0.1).

    python -m fedopt.simulations.studies.asynchrony.run --out DIR [--quick] [--seeds 0 1 2]

Every algorithm gets the same virtual-time budget T: the number of server steps that fit in T is
counted on the clock alone (the schedule does not depend on the data), then the run is a plain
:func:`fedopt.run` into ``DIR/runs/<dataset>/<scenario>/<algorithm>/seed<s>`` (config, metrics,
summary; a finished run found there is reused). Then it writes

* ``DIR/results.md`` / ``results.json`` — per (dataset, scenario, algorithm), mean ± std over
  seeds of the test accuracy at T/4 and at T, the final global train loss F(x) = Σ n_i/n F_i,
  the client updates aggregated, the dropped jobs, the mean staleness and the run's wall time;
* ``DIR/plots/<dataset>/<scenario>/<metric>_vs_{virtual_time,client_updates}.png`` — curves
  averaged over seeds with a min/max band (drawn from ``DIR/curves/...``: each run's rows plus
  its initial model at t = 0 and its last state carried to t = T).

DIR must be new, empty, or a folder this study created (its ``study.json``): the study never
overwrites a file it did not write. Every file is written atomically, non-finite numbers as
``"nan"``/``"inf"``/``"-inf"`` (:mod:`fedopt.jsonio`).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fedopt.simulations.studies import claim_out_dir, deep_merge

HERE = Path(__file__).parent
STUDY_FILE = HERE / "study.yaml"
SCENARIO_DIR = HERE / "scenarios"
METRICS = ("test_accuracy", "train_loss", "test_loss")


# ----------------------------------------------------------------------------- study description

def load_study(quick: bool = False, study_file: Path = STUDY_FILE,
               scenario_dir: Path = SCENARIO_DIR) -> dict[str, Any]:
    """study.yaml plus every scenario file (by name); ``quick`` applies the ``quick:`` block
    (fewer seeds and data sets, budgets scaled by ``budget_scale``)."""
    from fedopt.config import load_yaml   # YAML 1.2 floats, repeated keys refused

    study = load_yaml(Path(study_file).read_text(), str(study_file))
    scenarios = [load_yaml(p.read_text(), str(p)) for p in sorted(Path(scenario_dir).glob("*.yaml"))]
    study["scenarios"] = {s["name"]: s for s in scenarios}
    if quick:
        q = study.get("quick", {})
        study["seeds"] = q.get("seeds", study["seeds"][:2])
        keep = q.get("datasets", list(study["datasets"]))
        study["datasets"] = {k: v for k, v in study["datasets"].items() if k in keep}
        study["eval_points"] = q.get("eval_points", study["eval_points"])
        for s in study["scenarios"].values():
            s["time_budget"] = s["time_budget"] * q.get("budget_scale", 1.0)
    return study


def slow_cohort(data_cfg: dict[str, Any], seed: int, spec: dict[str, Any]) -> list[int]:
    """The ``round(fraction · N)`` clients with the largest share of their training labels in
    ``classes`` (ties by lowest id): the cohort of scenario (c)."""
    from fedopt.config import load_config
    from fedopt.data import build_dataset

    cfg = load_config({"seed": seed, "data": data_cfg, "client": {"local_steps": 1},
                       "algorithm": {"rounds": 1, "clients_per_round": 1}})
    counts = build_dataset(cfg["data"], seed=seed).label_counts().numpy().astype(np.float64)
    share = counts[:, spec["classes"]].sum(1) / np.maximum(counts.sum(1), 1.0)
    k = int(round(spec["fraction"] * len(share)))
    return sorted(np.argsort(-share, kind="stable")[:k].tolist())


def run_config(study: dict[str, Any], dataset: str, scenario: str, algorithm: str,
               seed: int) -> dict[str, Any]:
    """The plain fedopt config of one run (``rounds`` still 1: see :func:`rounds_within`)."""
    d, s, n = study["datasets"][dataset], study["scenarios"][scenario], study["num_clients"]
    clock = copy.deepcopy(s.get("clock", {}))
    data = {**d["data"], "num_clients": n}
    if "slow_cohort" in s:
        c = s["slow_cohort"]
        clock["speed"] = {"name": "cohort", "factor": c["factor"],
                          "clients": slow_cohort(data, seed, c)}
    alg = deep_merge(study["algorithms"][algorithm], s.get("overrides", {}).get(algorithm, {}))
    alg = {"rounds": 1, "clients_per_round": n, **alg}
    return {"seed": seed, "name": f"{dataset}/{scenario}/{algorithm}/seed{seed}", "data": data,
            "model": d["model"], "client": d["client"], "algorithm": alg, "clock": clock,
            "executor": {"name": "local", "device": "cpu", "num_threads": 1},
            "eval_train": True, "checkpoint_every": 0}


def rounds_within(config: dict[str, Any], time_budget: float) -> tuple[int, dict[str, Any]]:
    """Server steps of this config whose virtual time is <= the budget (clock only), and the
    metrics of the initial model (virtual time 0, no client update yet)."""
    from fedopt.config import load_config
    from fedopt.simulation import Simulation

    sim = Simulation(load_config(config))
    initial = {"round": 0, "virtual_time": 0.0, "client_updates": 0, **sim.evaluate()}
    return max(1, sim.algorithm.steps_within(sim.state, time_budget)), initial


def write_curve(path: Path, initial: dict[str, Any], rows: list[dict[str, Any]],
                budget: float) -> Path:
    """Plot input of one run: the initial model at t = 0, the recorded rows, and the last row
    carried to t = T (the model does not change between server steps), so that the curves of
    all seeds span [0, T] in virtual time and start at 0 client updates."""
    from fedopt.jsonio import to_json_line
    from fedopt.records import METRICS_FILE
    from fedopt.runfiles import atomic_write_bytes

    path.mkdir(parents=True, exist_ok=True)
    tail = [{**rows[-1], "virtual_time": budget}] if rows[-1]["virtual_time"] < budget else []
    text = "".join(to_json_line(r) + "\n" for r in [initial, *rows, *tail])
    atomic_write_bytes(path / METRICS_FILE, text.encode())
    return path


# ----------------------------------------------------------------------------- results

def value_at(rows: list[dict[str, Any]], key: str, t: float) -> float | None:
    """The last recorded ``key`` at virtual time <= t (None if no step finished by then)."""
    pts = [r[key] for r in rows if r.get("virtual_time", math.inf) <= t and r.get(key) is not None]
    return float(pts[-1]) if pts else None


def run_row(rows: list[dict[str, Any]], budget: float, wall_s: float) -> dict[str, Any]:
    last = rows[-1]
    return {"acc_T/4": value_at(rows, "test_accuracy", budget / 4),
            "acc_T": last["test_accuracy"], "train_loss_T": last.get("train_loss"),
            "steps": last["round"], "updates": last["client_updates"],
            "dropped": last.get("dropped", 0), "staleness": last.get("staleness_mean", 0.0),
            "wall_s": wall_s}


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None, 0
    return float(np.mean(v)), float(np.std(v)), len(v)


def _fmt(mean: float | None, std: float | None, n: int, total: int, digits: int = 3) -> str:
    if mean is None:
        return "—"
    s = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return s if n == total else f"{s} ({n}/{total})"


COLUMNS = (("acc_T/4", "test acc @ T/4", 3), ("acc_T", "test acc @ T", 3),
           ("train_loss_T", "train loss @ T", 3), ("updates", "client updates", 0),
           ("dropped", "dropped", 0), ("staleness", "mean staleness", 1), ("wall_s", "wall s/run", 2))


def markdown_table(summary: list[dict[str, Any]]) -> str:
    head = "| data | scenario | algorithm | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for r in summary:
        cells = [_fmt(*r[k], r["seeds"], d) for k, _, d in COLUMNS]
        lines.append(f"| {r['dataset']} | {r['scenario']} | {r['algorithm']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the sweep

def _plot(dirs: list[Path], labels: list[str], out: Path) -> list[str]:
    from fedopt.simulations.plot import plot_runs

    written = plot_runs(dirs, labels, out, x="virtual_time", metrics=METRICS)
    written += plot_runs(dirs, labels, out, x="client_updates", metrics=METRICS)
    return written


def run_study(out: str | Path, quick: bool = False, seeds: list[int] | None = None,
              study_file: str | Path = STUDY_FILE, scenario_dir: str | Path = SCENARIO_DIR,
              log=print) -> dict[str, Any]:
    from fedopt.api import run as fedopt_run
    from fedopt.records import SUMMARY_FILE, read_metrics
    from fedopt.runfiles import atomic_write_bytes, atomic_write_json

    study = load_study(quick, Path(study_file), Path(scenario_dir))
    if seeds is not None:
        study["seeds"] = list(seeds)
    out = claim_out_dir(out, "asynchrony")
    start = time.perf_counter()
    summary: list[dict[str, Any]] = []
    plots: list[str] = []
    total_runs = 0
    for dataset in study["datasets"]:
        for scenario, sc in study["scenarios"].items():
            budget = float(sc["time_budget"])
            dirs, labels = [], []
            for algorithm in study["algorithms"]:
                per_seed = []
                for seed in study["seeds"]:
                    where = Path(dataset) / scenario / algorithm / f"seed{seed}"
                    run_dir = out / "runs" / where
                    t0 = time.perf_counter()
                    cfg = run_config(study, dataset, scenario, algorithm, seed)
                    rounds, initial = rounds_within(cfg, budget)
                    if not (run_dir / SUMMARY_FILE).is_file():
                        cfg["algorithm"]["rounds"] = rounds
                        cfg["eval_every"] = max(1, rounds // study["eval_points"])
                        fedopt_run(cfg, out_dir=run_dir, progress=False)
                        total_runs += 1
                    wall = time.perf_counter() - t0
                    rows = read_metrics(run_dir)
                    per_seed.append(run_row(rows, budget, wall))
                    dirs.append(write_curve(out / "curves" / where, initial, rows, budget))
                    labels.append(algorithm)
                row = {"dataset": dataset, "scenario": scenario, "algorithm": algorithm,
                       "time_budget": budget, "seeds": len(per_seed)}
                for key, _, _ in COLUMNS:
                    row[key] = mean_std([r[key] for r in per_seed])
                summary.append(row)
                log(f"{dataset:9s} {scenario:14s} {algorithm:16s} acc@T "
                    f"{_fmt(*row['acc_T'], row['seeds'], 3)}  updates {row['updates'][0]:.0f}  "
                    f"{sum(r['wall_s'] for r in per_seed):.1f}s")
            plots += _plot(dirs, labels, out / "plots" / dataset / scenario)
    elapsed = time.perf_counter() - start
    table = markdown_table(summary)
    scen = "\n".join(f"* **{s['name']}** — {s['title']}, time budget T = {s['time_budget']:g}"
                     for s in study["scenarios"].values())
    text = (f"# Asynchrony study{' (quick)' if quick else ''}\n\n"
            f"{len(study['datasets'])} data set(s) × {len(study['scenarios'])} scenarios × "
            f"{len(study['algorithms'])} algorithms × {len(study['seeds'])} seeds "
            f"({total_runs} runs executed now), N = {study['num_clients']} clients all training; "
            f"wall time {elapsed:.1f} s.\n\n{scen}\n\nMean ± std over seeds "
            f"{study['seeds']}; '—': no server step finished by then.\n\n{table}\n")
    atomic_write_bytes(out / "results.md", text.encode())
    atomic_write_json(out / "results.json", {"rows": summary, "elapsed_s": elapsed,
                                             "seeds": study["seeds"], "quick": quick})
    log(text)
    return {"summary": summary, "plots": plots, "elapsed_s": elapsed, "table": table}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (runs, table, plots)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, synthetic only, short budgets")
    ap.add_argument("--seeds", type=int, nargs="+", help="override the study's seeds")
    ap.add_argument("--study", default=str(STUDY_FILE), help="shared settings (YAML)")
    ap.add_argument("--scenarios", default=str(SCENARIO_DIR), help="folder of scenario YAMLs")
    args = ap.parse_args(argv)
    import torch

    from fedopt.records import RunExistsError
    from fedopt.runfiles import RunDirError

    torch.set_num_threads(1)
    try:
        run_study(args.out, quick=args.quick, seeds=args.seeds, study_file=args.study,
                  scenario_dir=args.scenarios)
    except (RunExistsError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
