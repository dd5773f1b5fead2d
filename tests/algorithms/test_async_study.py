"""The asynchrony study's sweep end to end on a tiny study description: equal virtual-time
budgets, the slow cohort resolved from the data, table and plots written; the studies write only
into an output folder they created, atomically, NaN as "nan"."""
import json
import math

import numpy as np
import pytest
import yaml

from fedopt.data import build_dataset
from fedopt.config import load_config
from fedopt.jsonio import read_json
from fedopt.records import RunExistsError, read_metrics
from fedopt.simulations.studies import STUDY_RECORD
from fedopt.simulations.studies.asynchrony import run as study_run
from fedopt.simulations.studies.drift import run as drift_run

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
    from fedopt.simulations.plot import X_AXES
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
    assert read_json(out / STUDY_RECORD)["study"] == "asynchrony"
    again = study_run.run_study(out, study_file=tmp_path / "study.yaml",  # its own folder:
                                scenario_dir=tmp_path / "scen", log=lambda *_: None)  # taken
    assert [r["acc_T"] for r in again["summary"]] == [r["acc_T"] for r in res["summary"]]
    assert not list(out.rglob("*.tmp"))


def _tiny_study(tmp_path):
    (tmp_path / "scen").mkdir()
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    (tmp_path / "scen" / "cohort.yaml").write_text(yaml.safe_dump(SCENARIO))
    return {"study_file": tmp_path / "study.yaml", "scenario_dir": tmp_path / "scen",
            "log": lambda *_: None}


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None)
            for p in folder.rglob("*")}


@pytest.mark.parametrize("study", ["asynchrony", "drift"])
@pytest.mark.parametrize("foreign", ["results.md", "results.json", "curves/x/metrics.jsonl",
                                     "notes.txt"])
def test_a_study_never_overwrites_a_file_it_did_not_write(tmp_path, study, foreign):
    """Regression: the studies wrote results.* and curves over whatever was in --out."""
    out = tmp_path / "out"
    (out / foreign).parent.mkdir(parents=True)
    (out / foreign).write_text("mine, not the study's\n")
    before = _snapshot(out)
    with pytest.raises(RunExistsError, match="not written by the .* study"):
        if study == "asynchrony":
            study_run.run_study(out, **_tiny_study(tmp_path))
        else:
            drift_run.run_study(out, quick=True, verbose=False)
    assert _snapshot(out) == before                   # nothing written, nothing replaced


def test_a_study_refuses_the_folder_of_another_study(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / STUDY_RECORD).write_text(json.dumps({"study": "drift", "fedopt": "0.1.0"}))
    (out / "results.md").write_text("the drift study's table\n")
    before = _snapshot(out)
    with pytest.raises(RunExistsError, match="output of the drift study"):
        study_run.run_study(out, **_tiny_study(tmp_path))
    assert _snapshot(out) == before
    # the command line: one error line, exit status 2
    assert study_run.main(["--out", str(out)]) == 2
    assert "error: --out:" in capsys.readouterr().err


def test_curves_are_written_atomically_with_nan_as_a_string(tmp_path):
    rows = [{"round": 1, "virtual_time": 1.0, "client_updates": 3, "test_accuracy": 0.5,
             "train_loss": math.nan, "test_loss": math.inf}]
    initial = {"round": 0, "virtual_time": 0.0, "client_updates": 0, "test_accuracy": 0.25,
               "train_loss": 1.0, "test_loss": 1.0}
    path = study_run.write_curve(tmp_path / "curve", initial, rows, budget=2.0)
    text = (path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text and '"nan"' in text
    back = read_metrics(path)
    assert [r["virtual_time"] for r in back] == [0.0, 1.0, 2.0]
    assert math.isnan(back[1]["train_loss"]) and back[2]["test_loss"] == math.inf
    assert not list(tmp_path.rglob("*.tmp"))
