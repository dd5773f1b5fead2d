"""The asynchrony study's sweep end to end on a tiny study description: equal virtual-time
budgets, the slow cohort resolved from the data, table and plots written."""
import json

import numpy as np
import pytest
import yaml

from fedopt.data import build_dataset
from fedopt.config import load_config
from fedopt.jsonio import read_json
from fedopt.records import read_metrics
from simulations.studies.asynchrony import run as study_run

STUDY = {
    "num_clients": 6, "seeds": [0, 1], "eval_points": 5,
    "datasets": {"synthetic": {"data": {"name": "synthetic", "min_samples": 8, "max_samples": 30,
                                        "num_features": 6, "num_classes": 4},
                               "model": {"name": "logreg"},
                               "client": {"local_steps": 2, "batch_size": 4,
                                          "optimizer": {"name": "sgd", "lr": 0.1}}}},
    "algorithms": {"FedAvg": {"name": "fedavg_sync"},
                   "Async": {"name": "async_fedavg", "server_optimizer": {"name": "sgd",
                                                                          "lr": 0.2}}},
}
SCENARIO = {"name": "cohort", "title": "slow cohort", "time_budget": 12.0,
            "clock": {"compute": {"name": "exponential", "shift": 0.5, "scale": 0.5}},
            "slow_cohort": {"classes": [0, 1], "fraction": 0.5, "factor": 5.0}}


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    from simulations.plot import X_AXES
    X_AXES_BEFORE = dict(X_AXES)
    (tmp_path / "scen").mkdir()
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    (tmp_path / "scen" / "cohort.yaml").write_text(yaml.safe_dump(SCENARIO))
    out = tmp_path / "out"
    res = study_run.run_study(out, study_file=tmp_path / "study.yaml",
                              scenario_dir=tmp_path / "scen", log=lambda *_: None)
    assert len(res["summary"]) == 2 and (out / "results.md").is_file()
    assert "| synthetic | cohort | Async |" in (out / "results.md").read_text()
    for seed in (0, 1):
        # the cohort: the half of the clients with the largest label share in classes {0, 1}
        cfg = read_json(out / "runs/synthetic/cohort/Async" / f"seed{seed}" / "config.json")
        data = build_dataset(load_config(cfg)["data"], seed=seed)
        lc = data.label_counts().numpy()
        share = lc[:, :2].sum(1) / lc.sum(1)
        cohort = cfg["clock"]["speed"]["clients"]
        assert len(cohort) == 3 and share[cohort].min() >= np.delete(share, cohort).max()
        for alg in ("FedAvg", "Async"):
            rows = read_metrics(out / "runs/synthetic/cohort" / alg / f"seed{seed}")
            assert rows[-1]["virtual_time"] <= 12.0      # same budget for every algorithm
    names = {p.split("/")[-1] for p in res["plots"]}
    assert {"test_accuracy_vs_virtual_time.png", "train_loss_vs_client_updates.png"} <= names
    curve = read_metrics(out / "curves/synthetic/cohort/FedAvg/seed0")
    assert curve[0]["virtual_time"] == 0.0 and curve[-1]["virtual_time"] == 12.0
    assert json.loads((out / "results.json").read_text())["rows"][0]["seeds"] == 2
    assert X_AXES == X_AXES_BEFORE                                  # left as it was
