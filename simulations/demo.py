"""The README's main job: a short tour of federated simulations, with a results table and plots.

Runs, on the embedded data and CPU (each prints what it shows; every row is labelled by the
resolved config of what ran):
  1. the quickstart config as written (FedAvg, FedProx's Synthetic(1,1), 100 clients, 10 per
     round): test accuracy rises from chance (0.10) to ~0.57;
  2. the vectorized engine at scale: 1,000 clients (100 per round) and 10,000 clients (1,000 per
     round) of Synthetic-IID, where every client draws from one shared model so one global model
     can fit them all (in Synthetic(1,1) every client has its own random model; with 10,000 of
     them a single global model stays at chance, which says nothing about the engine);
  3. FedAvg, FedProx and FedAdam on the real digits data split by Dirichlet(0.5) label skew,
     3 seeds each, compared in one plot (mean and min/max band over seeds).
Each run writes its own run directory under OUT (default runs/demo), and the plots go to
OUT/comparison; nothing else in OUT is touched. When those folders exist already (an earlier
demo), the demo stops before running anything unless ``--replace`` is given; ``--replace``
removes them only if they hold nothing but files fedopt writes (else it names the first other
entry and stops, deleting nothing).

    python -m fedopt.simulations.demo [--out runs/demo] [--rounds-scale 1.0] [--replace]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import fedopt
from fedopt.config import load_config
from fedopt.records import remove_run_dir
from fedopt.runfiles import RunDirError
from fedopt.simulations.plot import plot_runs, results_table
from fedopt.simulations.shipped import resolve_config

#: shown before each group of runs (by the run-name prefix)
SECTIONS = {
    "quickstart": "the quickstart config as written (chance accuracy is 0.10)",
    "synthetic-iid": "the same engine at scale: Synthetic-IID (one shared model), 1,000 and "
                     "10,000 clients",
    "digits": "FedAvg vs FedProx vs FedAdam on real 8x8 digits, Dirichlet(0.5) label skew, "
              "3 seeds",
}


def _runs(rounds_scale: float) -> list[tuple[str, str, list[str]]]:
    """``(run name, shipped config, overrides)`` of every demo run, in order."""
    r = lambda n: max(1, int(n * rounds_scale))  # noqa: E731
    iid = ["data.iid=true", "client.optimizer.lr=0.5", "data.max_samples=100"]
    runs = [("quickstart", "quickstart", [f"algorithm.rounds={r(50)}"]),
            ("synthetic-iid-1000-clients", "quickstart",
             iid + ["data.num_clients=1000", "algorithm.clients_per_round=100",
                    f"algorithm.rounds={r(20)}", "eval_every=5"]),
            ("synthetic-iid-10000-clients", "quickstart",
             iid + ["data.num_clients=10000", "algorithm.clients_per_round=1000",
                    f"algorithm.rounds={r(10)}", "eval_every=5"])]
    digits = ["algorithm.clients_per_round=10", f"algorithm.rounds={r(150)}", "eval_every=5"]
    for seed in (0, 1, 2):
        runs += [
            (f"digits-fedavg-s{seed}", "digits_fedadam",
             digits + [f"seed={seed}", "algorithm.name=fedavg", "algorithm.server_optimizer=null"]),
            (f"digits-fedprox-s{seed}", "digits_fedadam",
             digits + [f"seed={seed}", "algorithm.name=fedprox", "algorithm.mu=0.01",
                       "algorithm.server_optimizer=null"]),
            (f"digits-fedadam-s{seed}", "digits_fedadam", digits + [f"seed={seed}"]),
        ]
    return runs


def describe_algorithm(cfg: Mapping[str, Any]) -> str:
    """What ran, from the resolved config: ``fedadam (server adam, lr 0.01)``, ``fedprox
    (mu 0.01)``, ``fedavg`` (a plain server step, SGD with lr 1, is not repeated)."""
    alg = cfg["algorithm"]
    parts = []
    if alg.get("mu") is not None:
        parts.append(f"mu {alg['mu']:g}")
    server = alg.get("server_optimizer") or {}
    name, lr = server.get("name"), server.get("lr")
    plain = name == "sgd" and lr == 1.0 and not server.get("momentum")
    if name and not plain:
        parts.append(f"server {name}" + (f", lr {lr:g}" if lr is not None else ""))
    return alg["name"] + (f" ({'; '.join(parts)})" if parts else "")


COMPARISON = "comparison"


class DemoError(Exception):
    """A problem with --out, printed as one ``error:`` line (exit code 2)."""


def prepare_out(out: Path, names: list[str], replace: bool) -> None:
    """Check (and with ``replace``, clear) the demo's own folders under ``out`` before any run.

    Every check runs before anything is deleted. Raises :class:`DemoError` when ``out`` is not
    a directory, when one of the demo's folders exists and ``replace`` is false, or when one of
    them holds anything fedopt does not write (naming it).
    """
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out: {out} exists and is not a directory")
    runs = [out / n for n in names if (out / n).exists()]
    comparison = out / COMPARISON
    if (runs or comparison.exists()) and not replace:
        first = (runs or [comparison])[0]
        raise DemoError(f"--out: {first} exists (an earlier demo?); pass --replace to replace "
                        f"the demo's own folders in {out}, or choose another --out")
    pngs: list[Path] = []
    try:
        for d in runs:
            remove_run_dir(d, dry_run=True)
        if comparison.exists():
            if not comparison.is_dir():
                raise DemoError(f"--out: {comparison} is not a folder of demo plots; left alone")
            for p in comparison.iterdir():
                if not (p.is_file() and p.suffix == ".png"):
                    raise DemoError(f"--out: {p} was not written by the demo; {comparison} is "
                                    f"left alone")
                pngs.append(p)
        for d in runs:
            remove_run_dir(d)
        for p in pngs:
            p.unlink()
        if comparison.exists():
            comparison.rmdir()
    except (RunDirError, OSError) as e:
        raise DemoError(f"--out: {e}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/demo", help="parent directory of the run directories")
    ap.add_argument("--rounds-scale", type=float, default=1.0,
                    help="multiply every run's number of rounds (e.g. 0.2 for a smoke test)")
    ap.add_argument("--replace", action="store_true",
                    help="replace the run folders of an earlier demo in --out (only files "
                         "fedopt wrote are deleted)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    runs = _runs(args.rounds_scale)
    try:
        prepare_out(out, [name for name, _, _ in runs], args.replace)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows, digits_dirs, digits_labels = [], [], []
    start = time.perf_counter()
    section = None
    for name, config, overrides in runs:
        group = next(k for k in SECTIONS if name.startswith(k))
        if group != section:
            section = group
            print(f"\n# {SECTIONS[group]}", flush=True)
        cfg = load_config(resolve_config(config), overrides)
        what = describe_algorithm(cfg)
        print(f"== {name}: {what} on {cfg['data']['name']}"
              f"{' (iid)' if cfg['data'].get('iid') else ''}, "
              f"{cfg['algorithm']['clients_per_round']} of {cfg['data']['num_clients']} clients "
              f"per round, {cfg['algorithm']['rounds']} rounds", flush=True)
        res = fedopt.run(cfg, out_dir=out / name, progress=False)
        s = res.summary
        rows.append({"run": name, "algorithm": what,
                     "clients": f"{cfg['algorithm']['clients_per_round']}/{s['num_clients']}",
                     "rounds": s["rounds"], "test acc": s["final_test_accuracy"],
                     "best acc": s["best_test_accuracy"], "test loss": s["final_test_loss"],
                     "updates/s": s["client_updates_per_s"], "samples/s": s["samples_per_s"],
                     "train s": s["train_time_s"]})
        if group == "digits":
            digits_dirs.append(out / name)
            digits_labels.append(cfg["algorithm"]["name"])    # what ran, not the run's name
    print()
    print(results_table(rows))
    plots = plot_runs(digits_dirs, digits_labels, out=out / COMPARISON)
    print(f"\nall runs took {time.perf_counter() - start:.1f} s; run directories in {out}/")
    print("comparison plots (mean and min/max over 3 seeds):")
    for p in plots:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
