"""fedopt.run end to end: records, resume == uninterrupted, learning on real data; damaged,
shortened or shared run folders; what is closed when a run fails."""
import json
import warnings

import pytest
import torch

import fedopt
from fedopt import simulation
from fedopt.checkpoint import CheckpointError
from fedopt.records import MetricsError, RunExistsError, RunLockedError, RunRecorder, read_metrics

TIME_KEYS = {"wall_time_s", "train_time_s", "client_updates_per_s"}


def _config(**algorithm):
    return {
        "seed": 3,
        "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 30},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "rounds": 6, "clients_per_round": 5, **algorithm},
        "client": {"local_steps": 5, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
        "checkpoint_every": 1,
    }


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.mark.parametrize("algorithm", [{}, {"name": "fedadam"}, {"name": "fedprox", "mu": 0.1}])
def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path, algorithm):
    full = fedopt.run(_config(**algorithm), out_dir=tmp_path / "full", progress=False)
    part_cfg = _config(**algorithm)
    part_cfg["algorithm"]["rounds"] = 3
    fedopt.run(part_cfg, out_dir=tmp_path / "part", progress=False)
    resumed = fedopt.run(_config(**algorithm), out_dir=tmp_path / "part", progress=False,
                         resume=True)
    assert _strip(resumed.metrics) == _strip(full.metrics)
    for k, v in full.final_params.items():
        assert torch.equal(v, resumed.final_params[k])
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert _strip(rows) == _strip(json.loads(json.dumps(full.metrics)))


def test_run_directory_holds_the_records(tmp_path):
    res = fedopt.run(_config(), out_dir=tmp_path / "r", progress=False)
    d = tmp_path / "r"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["algorithm"]["rounds"] == 6 and cfg["seed"] == 3
    versions = json.loads((d / "versions.json").read_text())
    assert versions["seed"] == 3 and versions["torch"] == torch.__version__
    summary = json.loads((d / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["client_updates"] == 30
    row = res.metrics[-1]
    for key in ("round", "test_loss", "test_accuracy", "train_loss", "client_updates", "wall_time_s"):
        assert key in row
    assert row["client_updates"] == 30
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == [
        "round_000005.safetensors", "round_000006.safetensors"]   # the newest two, no pickle


def test_same_seed_same_trajectory_and_other_seed_differs():
    a = fedopt.run(_config(), progress=False)
    b = fedopt.run(_config(), progress=False)
    assert _strip(a.metrics) == _strip(b.metrics)
    cfg = _config()
    cfg["seed"] = 4
    c = fedopt.run(cfg, progress=False)
    assert _strip(a.metrics) != _strip(c.metrics)


def test_test_metrics_cover_every_test_row_once():
    res = fedopt.run(_config(), progress=False)
    sim_rows = res.summary["dataset"]["test_rows"]
    from fedopt.data import build_dataset
    from fedopt.engine.local import FunctionalModel
    from fedopt.models import build_model

    data = build_dataset(res.config["data"], seed=3)
    assert data.x_test.shape[0] == sim_rows
    model = build_model(res.config["model"], data.feature_shape, data.num_classes, seed=3)
    logits = FunctionalModel(model).forward(res.final_params, data.x_test)
    acc = (logits.argmax(-1) == data.y_test).double().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, data.y_test).item()
    assert res.metrics[-1]["test_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert res.metrics[-1]["test_loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.slow
def test_fedavg_learns_the_real_digits_data():
    cfg = {"seed": 0, "data": {"name": "digits", "num_clients": 50,
                               "partition": {"name": "dirichlet", "alpha": 0.5}},
           "model": {"name": "mlp", "hidden": [64]},
           "algorithm": {"name": "fedavg", "rounds": 30, "clients_per_round": 10},
           "client": {"local_epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.1}},
           "eval_every": 10}
    res = fedopt.run(cfg, progress=False)
    assert res.metrics[0]["test_accuracy"] < res.metrics[-1]["test_accuracy"]
    assert res.metrics[-1]["test_accuracy"] > 0.85     # chance is 0.10


# ----------------------------------------------------------------------------- resume faults

class Crash(Exception):
    pass


def crash_after(monkeypatch, steps):
    """Make Simulation.step raise after ``steps`` successful steps (a killed process)."""
    real, done = simulation.Simulation.step, []

    def step(self):
        if len(done) == steps:
            raise Crash
        done.append(1)
        return real(self)

    monkeypatch.setattr(simulation.Simulation, "step", step)


def test_resume_with_a_checkpoint_but_no_metrics_row_yet(tmp_path, monkeypatch):
    cfg = _config()
    cfg["eval_every"] = 5                       # rows at 5 and 6; checkpoints every round
    full = fedopt.run(cfg, out_dir=tmp_path / "full", progress=False)
    crash_after(monkeypatch, 3)
    with pytest.raises(Crash):
        fedopt.run(cfg, out_dir=tmp_path / "part", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "part" / "metrics.jsonl").exists()
    resumed = fedopt.run(cfg, out_dir=tmp_path / "part", progress=False, resume=True)
    assert [r["round"] for r in resumed.metrics] == [5, 6]
    assert _strip(resumed.metrics) == _strip(full.metrics)
    assert _strip(read_metrics(tmp_path / "part")) == _strip(read_metrics(tmp_path / "full"))


def test_truncated_metrics_is_an_error_naming_the_file(tmp_path):
    d = tmp_path / "r"
    fedopt.run(_config(), out_dir=d, progress=False)
    lines = (d / "metrics.jsonl").read_text().splitlines(keepends=True)
    (d / "metrics.jsonl").write_text("".join(lines[:3]))     # rows 4..6 lost
    with pytest.raises(MetricsError, match=r"metrics\.jsonl: holds 3 rows up to round 6"):
        fedopt.run(_config(), out_dir=d, progress=False, resume=True)
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 3   # nothing silently added


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    full = fedopt.run(_config(), out_dir=tmp_path / "full", progress=False)
    part = _config()
    part["algorithm"]["rounds"] = 4
    fedopt.run(part, out_dir=tmp_path / "part", progress=False)
    newest = tmp_path / "part" / "checkpoints" / "round_000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])            # torn
    with pytest.warns(UserWarning, match=r"round_000004\.safetensors: truncated.*skipped"):
        resumed = fedopt.run(_config(), out_dir=tmp_path / "part", progress=False, resume=True)
    assert _strip(resumed.metrics) == _strip(full.metrics)   # from round 3: still exact
    for k, v in full.final_params.items():
        assert torch.equal(v, resumed.final_params[k])


def test_resume_with_fewer_rounds_keeps_the_recorded_run(tmp_path):
    d = tmp_path / "r"
    full = fedopt.run(_config(), out_dir=d, progress=False)          # 6 rounds
    short = _config()
    short["algorithm"]["rounds"] = 3                                  # the command minus --set
    with pytest.warns(UserWarning, match=r"algorithm\.rounds: 3 is shorter than the recorded 6"):
        again = fedopt.run(short, out_dir=d, progress=False, resume=True)
    assert json.loads((d / "config.json").read_text())["algorithm"]["rounds"] == 6
    assert [r["round"] for r in again.metrics] == list(range(1, 7))
    assert again.summary["rounds"] == 6 and _strip(again.metrics) == _strip(full.metrics)


def test_wall_time_continues_after_a_resume(tmp_path):
    part = _config()
    part["algorithm"]["rounds"] = 3
    fedopt.run(part, out_dir=tmp_path, progress=False)
    before = read_metrics(tmp_path)[-1]["wall_time_s"]
    fedopt.run(_config(), out_dir=tmp_path, progress=False, resume=True)
    times = [r["wall_time_s"] for r in read_metrics(tmp_path)]
    assert times == sorted(times) and times[3] > before
    trains = [r["train_time_s"] for r in read_metrics(tmp_path)]
    assert all(w >= t for w, t in zip(times, trains))   # wall time includes training time


def test_two_writers_on_one_folder_are_refused(tmp_path):
    fedopt.run(_config(), out_dir=tmp_path, progress=False)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with RunRecorder(tmp_path, json.loads((tmp_path / "config.json").read_text()), 3,
                     resume=True):
        with pytest.raises(RunLockedError, match="in use by another fedopt process"):
            fedopt.run(_config(), out_dir=tmp_path, progress=False, resume=True)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_pickle_checkpoint_folder_is_refused(tmp_path):
    d = tmp_path / "old"
    fedopt.run(_config(), out_dir=d, progress=False)
    for p in (d / "checkpoints").iterdir():
        p.unlink()
    torch.save({"round": 6}, d / "checkpoints" / "latest.pt")
    with pytest.raises(CheckpointError, match=r"latest\.pt: a pickle checkpoint"):
        fedopt.run(_config(), out_dir=d, progress=False, resume=True)


# ----------------------------------------------------------------------------- failures

@pytest.fixture
def built(monkeypatch):
    """Counts Simulation constructions and closes."""
    counts = {"built": 0, "closed": 0}
    real_init, real_close = simulation.Simulation.__init__, simulation.Simulation.close

    def init(self, *a, **k):
        counts["built"] += 1
        real_init(self, *a, **k)

    def close(self):
        counts["closed"] += 1
        real_close(self)

    monkeypatch.setattr(simulation.Simulation, "__init__", init)
    monkeypatch.setattr(simulation.Simulation, "close", close)
    return counts


def test_an_existing_run_is_refused_before_anything_is_built(tmp_path, built):
    fedopt.run(_config(), out_dir=tmp_path, progress=False)
    assert built == {"built": 1, "closed": 1}
    with pytest.raises(RunExistsError, match="already holds a run"):
        fedopt.run(_config(), out_dir=tmp_path, progress=False)
    assert built == {"built": 1, "closed": 1}                # no executor (no Ray) started


@pytest.mark.parametrize("where", ["restore", "evaluate", "save_checkpoint"])
def test_every_failure_after_the_build_closes_the_executor(tmp_path, monkeypatch, built, where):
    part = _config()
    part["algorithm"]["rounds"] = 2
    fedopt.run(part, out_dir=tmp_path, progress=False)

    def boom(*a, **k):
        raise Crash

    owner = RunRecorder if where == "save_checkpoint" else simulation.Simulation
    monkeypatch.setattr(owner, where, boom)
    with pytest.raises(Crash):
        fedopt.run(_config(), out_dir=tmp_path, progress=False, resume=True)
    assert built == {"built": 2, "closed": 2}
    monkeypatch.undo()
    fedopt.run(_config(), out_dir=tmp_path, progress=False, resume=True)   # lock released


def test_a_run_that_fails_at_start_leaves_a_reusable_folder(tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise Crash

    monkeypatch.setattr(simulation.Simulation, "__init__", broken)
    with pytest.raises(Crash):
        fedopt.run(_config(), out_dir=tmp_path, progress=False)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fedopt.run(_config(), out_dir=tmp_path, progress=False)   # no --resume needed
    assert [r["round"] for r in read_metrics(tmp_path)] == list(range(1, 7))
    assert res.summary["rounds"] == 6


def test_best_accuracy_ignores_unmeasured_and_non_finite_rows():
    class Sim:
        class state:
            round, params = 3, {"w": torch.zeros(2)}
        client_updates = samples = 1
        train_time_s = 1.0
        config = {"seed": 0}
        device = "cpu"
        executor = None

        class data:
            num_clients = 1

            @staticmethod
            def describe():
                return {}

    rows = [{"test_accuracy": 0.5}, {"test_accuracy": None}, {"test_accuracy": float("nan")},
            {"test_accuracy": 0.25}, {}]
    assert simulation.summarize(rows, Sim)["best_test_accuracy"] == 0.5
    assert simulation.summarize([{"test_accuracy": None}], Sim)["best_test_accuracy"] is None


def test_a_failure_while_building_closes_the_executor_already_built(monkeypatch):
    from fedopt.engine.executor import VectorizedExecutor

    closed = []
    real_close = VectorizedExecutor.close
    monkeypatch.setattr(VectorizedExecutor, "close",
                        lambda self: closed.append(1) or real_close(self))

    def broken_init(self, params):
        raise Crash

    from fedopt.algorithms.fedavg import FedAvg
    monkeypatch.setattr(FedAvg, "init", broken_init)
    with pytest.raises(Crash):
        fedopt.run(_config(), progress=False)
    assert closed == [1]
