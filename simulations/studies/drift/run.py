"""The drift-correction study: rounds to a target accuracy and final accuracy of FedAvg, FedProx,
SCAFFOLD, FedDyn and FedSpeed on non-IID data with a long local interval.

    python -m fedopt.simulations.studies.drift.run --out DIR [--quick] [--study study.yaml]

Runs every (setting, algorithm, seed) of ``study.yaml`` with :func:`fedopt.run` into
``DIR/runs/<setting>/<algorithm>/seed<s>`` (config, metrics, summary: any run can be re-drawn or
repeated alone; runs already finished in DIR are reused), then writes ``DIR/results.md`` (the table), ``DIR/results.json`` (the numbers)
and ``DIR/plots/<setting>/test_accuracy_vs_round.png`` (mean and min/max band over seeds).

Rounds to target: the first round at which the running maximum of the test accuracy reaches the
target, linearly interpolated between evaluations (McMahan et al.'s monotonised curve); a seed
that never reaches it counts as not reached ("n/3 seeds" in the table, mean over those that did).

DIR must be new, empty, or a folder this study created (its ``study.json``): the study never
overwrites a file it did not write. Every file is written atomically, non-finite numbers as
``"nan"``/``"inf"``/``"-inf"`` (:mod:`fedopt.jsonio`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fedopt.simulations.studies import claim_out_dir, deep_merge

STUDY_FILE = Path(__file__).with_name("study.yaml")


# ----------------------------------------------------------------------------- configs

def load_study(path: str | Path = STUDY_FILE, quick: bool = False) -> dict[str, Any]:
    """The study description; ``quick`` applies its ``quick:`` overrides."""
    from fedopt.config import load_yaml   # YAML 1.2 floats, repeated keys refused

    with open(path) as f:
        study = load_yaml(f.read(), str(path))
    if quick:
        q = study.get("quick", {})
        study["seeds"] = q.get("seeds", study["seeds"][:1])
        for s in study["settings"].values():
            s["rounds"] = q.get("rounds", s["rounds"])
        if "local_steps" in q:
            for s in study["settings"].values():
                s.setdefault("client", {})["local_steps"] = q["local_steps"]
    return study


def run_config(study: dict[str, Any], setting: str, algorithm: str, seed: int) -> dict[str, Any]:
    """The plain fedopt config of one run."""
    s = study["settings"][setting]
    cfg = deep_merge(study["common"], {"data": s["data"], "model": s["model"],
                                   "client": s.get("client", {})})
    cfg["algorithm"] = deep_merge(cfg["algorithm"], {**study["algorithms"][algorithm],
                                                 "rounds": s["rounds"]})
    cfg["seed"] = int(seed)
    cfg["name"] = f"{setting}/{algorithm}/seed{seed}"
    return cfg


# ----------------------------------------------------------------------------- metrics

def rounds_to_target(rows: list[dict[str, Any]], target: float) -> float | None:
    """First (interpolated) round where the running max of test accuracy reaches ``target``."""
    pts = sorted((float(r["round"]), float(r["test_accuracy"])) for r in rows
                 if r.get("test_accuracy") is not None)
    best_prev, round_prev = 0.0, 0.0
    for rnd, acc in pts:
        if acc >= target:
            if best_prev >= target:
                return round_prev
            frac = (target - best_prev) / (acc - best_prev) if acc > best_prev else 1.0
            return round_prev + frac * (rnd - round_prev)
        if acc > best_prev:
            best_prev = acc
        round_prev = rnd
    return None


def summarize(study: dict[str, Any], results: dict[tuple[str, str], list[dict[str, Any]]]
              ) -> list[dict[str, Any]]:
    """One row per (setting, algorithm): means over seeds."""
    rows = []
    for (setting, algorithm), runs in results.items():
        target = study["settings"][setting]["target"]
        reached = [r["rounds_to_target"] for r in runs if r["rounds_to_target"] is not None]
        final = [r["final_accuracy"] for r in runs]
        best = [r["best_accuracy"] for r in runs]
        rows.append({
            "setting": setting, "algorithm": algorithm, "target": target, "seeds": len(runs),
            "reached": len(reached),
            "rounds_to_target": float(np.mean(reached)) if reached else None,
            "rounds_to_target_std": float(np.std(reached)) if len(reached) > 1 else None,
            "final_accuracy": float(np.mean(final)), "final_accuracy_std": float(np.std(final)),
            "best_accuracy": float(np.mean(best)),
            "train_time_s": float(np.mean([r["train_time_s"] for r in runs])),
        })
    return rows


def markdown_table(study: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as one markdown table per setting."""
    out = []
    for setting, s in study["settings"].items():
        part = [r for r in rows if r["setting"] == setting]
        if not part:
            continue
        cl = deep_merge(study["common"]["client"], s.get("client", {}))
        out.append(f"**{s.get('title', setting)}** — {cl['local_steps']} local steps, lr "
                   f"{cl['optimizer']['lr']}, {s['rounds']} rounds, target "
                   f"{100 * s['target']:.0f} % test accuracy\n")
        out.append("| algorithm | rounds to target (mean ± sd) | reached | final acc % (mean ± sd) "
                   "| best acc % | train s / run |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in part:
            if r["rounds_to_target"] is None:
                rt = f"> {s['rounds']}"
            else:
                sd = r["rounds_to_target_std"]
                rt = f"{r['rounds_to_target']:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")
            out.append(f"| {r['algorithm']} | {rt} | {r['reached']}/{r['seeds']} | "
                       f"{100 * r['final_accuracy']:.1f} ± {100 * r['final_accuracy_std']:.1f} | "
                       f"{100 * r['best_accuracy']:.1f} | {r['train_time_s']:.1f} |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- the study

def run_study(out: str | Path, quick: bool = False, study_file: str | Path = STUDY_FILE,
              verbose: bool = True) -> dict[str, Any]:
    """Run every (setting, algorithm, seed), write table, numbers and plots into ``out``."""
    import torch

    import fedopt
    from fedopt.records import holds_run
    from fedopt.runfiles import atomic_write_bytes, atomic_write_json
    from fedopt.simulations.plot import plot_runs

    torch.set_num_threads(1)
    study = load_study(study_file, quick)
    out = claim_out_dir(out, "drift")
    start = time.perf_counter()
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    dirs: dict[str, list[tuple[Path, str]]] = {}
    for setting, s in study["settings"].items():
        for algorithm in study["algorithms"]:
            for seed in study["seeds"]:
                run_dir = out / "runs" / setting / algorithm / f"seed{seed}"
                t = time.perf_counter()
                # a finished run in DIR is reused (resume = no new rounds), a broken one redone;
                # a run of a different config there is an error (ResumeMismatchError)
                res = fedopt.run(run_config(study, setting, algorithm, seed), out_dir=run_dir,
                                 progress=False, resume=holds_run(run_dir))
                record = {"seed": seed, "rounds_to_target": rounds_to_target(res.metrics, s["target"]),
                          "final_accuracy": res.summary["final_test_accuracy"],
                          "best_accuracy": res.summary["best_test_accuracy"],
                          "train_time_s": res.summary["train_time_s"]}
                results.setdefault((setting, algorithm), []).append(record)
                dirs.setdefault(setting, []).append((run_dir, algorithm))
                if verbose:
                    rt = record["rounds_to_target"]
                    print(f"{setting:>14} {algorithm:>9} seed {seed}: final acc "
                          f"{record['final_accuracy']:.3f}, rounds to {s['target']:.2f}: "
                          f"{'-' if rt is None else f'{rt:.1f}'}  ({time.perf_counter() - t:.1f} s)",
                          flush=True)
    rows = summarize(study, results)
    total = time.perf_counter() - start
    table = markdown_table(study, rows)
    c = study["common"]
    header = (f"Drift-correction study{' (quick)' if quick else ''}: 100 clients, "
              f"{c['algorithm']['clients_per_round']} per round, local SGD with batch "
              f"{c['client']['batch_size']}, seeds {study['seeds']}; total wall time "
              f"{total:.0f} s.\n\n")
    atomic_write_bytes(out / "results.md", (header + table).encode())
    atomic_write_json(out / "results.json", {"rows": rows, "runs": {
        f"{k[0]}/{k[1]}": v for k, v in results.items()}, "wall_time_s": total,
        "quick": quick, "study": study})
    for setting, pairs in dirs.items():
        plot_runs([d for d, _ in pairs], [a for _, a in pairs], out=out / "plots" / setting,
                  metrics=("test_accuracy", "test_loss"))
    if verbose:
        print(header + table)
    return {"rows": rows, "wall_time_s": total}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (runs, table, plots)")
    ap.add_argument("--quick", action="store_true", help="one seed, few rounds (< 30 s)")
    ap.add_argument("--study", default=str(STUDY_FILE), help="study description (YAML)")
    args = ap.parse_args(argv)
    from fedopt.records import RunExistsError
    from fedopt.runfiles import RunDirError

    try:
        run_study(args.out, quick=args.quick, study_file=args.study)
    except (RunExistsError, RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
