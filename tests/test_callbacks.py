"""Callbacks (order, rows, early stopping) and the TensorBoard / CSV logs of a run (issue 19)."""
from __future__ import annotations

import csv
import math

import pytest

import fedopt
from fedopt.callbacks import Callback, EarlyStopping, metrics_csv
from fedopt.records import read_metrics, read_summary

CFG = {"seed": 1, "data": {"name": "synthetic", "num_clients": 30},
       "model": {"name": "logreg"},
       "algorithm": {"name": "fedavg", "rounds": 6, "clients_per_round": 5},
       "client": {"local_steps": 3, "batch_size": 10,
                  "optimizer": {"name": "sgd", "lr": 0.05}},
       "eval_every": 2, "checkpoint_every": 3}


class Recorder(Callback):
    def __init__(self):
        self.events, self.rows, self.start_rows, self.end_rows = [], [], None, None

    def on_run_start(self, ctx, rows):
        self.events.append(("start", ctx.simulation.state.round))
        self.start_rows = list(rows)

    def on_round_end(self, ctx, round, stats):
        assert "local_loss" in stats
        self.events.append(("round", round))

    def on_evaluation(self, ctx, round, row):
        self.events.append(("eval", round))
        self.rows.append(row)

    def on_checkpoint(self, ctx, round, path):
        assert path.endswith(f"round_{round:06d}.safetensors")
        self.events.append(("ckpt", round))

    def on_run_end(self, ctx, rows):
        self.events.append(("end", len(rows)))
        self.end_rows = rows


def test_hooks_run_in_order_with_the_recorded_rows(tmp_path):
    rec, second = Recorder(), Recorder()
    res = fedopt.run(CFG, out_dir=tmp_path / "r", progress=False, callbacks=[rec, second])
    assert rec.events == [("start", 0),
                          ("round", 1), ("round", 2), ("eval", 2), ("round", 3), ("ckpt", 3),
                          ("round", 4), ("eval", 4), ("round", 5), ("round", 6), ("eval", 6),
                          ("ckpt", 6), ("end", 3)]
    assert second.events == rec.events
    assert rec.rows == read_metrics(tmp_path / "r") == res.metrics == rec.end_rows
    assert "stopped_by" not in read_summary(tmp_path / "r")


def test_a_resumed_run_calls_the_hooks_only_for_the_rounds_it_runs(tmp_path):
    fedopt.run({**CFG, "algorithm": {**CFG["algorithm"], "rounds": 3}}, out_dir=tmp_path / "r",
               progress=False)
    rec = Recorder()
    res = fedopt.run(CFG, out_dir=tmp_path / "r", progress=False, resume=True, callbacks=[rec])
    assert rec.events[0] == ("start", 3) and rec.start_rows == read_metrics(tmp_path / "r")[:2]
    assert [e for e in rec.events if e[0] == "eval"] == [("eval", 4), ("eval", 6)]
    assert rec.rows == res.metrics[2:]


def _untimed(row):
    return {k: v for k, v in row.items() if not k.endswith("time_s") and not k.endswith("per_s")}


def test_early_stopping_stops_where_the_recorded_metric_says(tmp_path):
    cfg = {**CFG, "eval_every": 1, "algorithm": {**CFG["algorithm"], "rounds": 30},
           "checkpoint_every": 0}
    full = fedopt.run(cfg, progress=False).metrics            # the uninterrupted trajectory
    # the oracle: first round after which `patience` evaluations in a row did not improve on
    # the best test loss by more than min_delta
    patience, delta, best, bad, expect = 2, 1e-3, math.inf, 0, None
    for row in full:
        if row["test_loss"] < best - delta:
            best, bad = row["test_loss"], 0
        else:
            bad += 1
        if bad >= patience:
            expect = row["round"]
            break
    assert expect is not None, "the trajectory never plateaus: pick another setting"
    stop = EarlyStopping("test_loss", patience=patience, mode="min", min_delta=delta)
    res = fedopt.run(cfg, out_dir=tmp_path / "r", progress=False, callbacks=[stop])
    assert res.metrics[-1]["round"] == expect
    assert [_untimed(r) for r in res.metrics] == [_untimed(r) for r in full[:expect]]
    summary = read_summary(tmp_path / "r")
    assert summary["rounds"] == expect and "early stopping: test_loss" in summary["stopped_by"]
    assert (tmp_path / "r" / "checkpoints" / f"round_{expect:06d}.safetensors").is_file()


def test_callbacks_are_checked():
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        fedopt.run(CFG, progress=False, callbacks=[EarlyStopping])
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_and_csv_hold_every_metric_and_a_resume_adds_no_duplicates(tmp_path):
    out = tmp_path / "r"
    cfg = {**CFG, "tensorboard": True, "csv": True, "eval_every": 1, "checkpoint_every": 2,
           "per_client_eval": {"every": 2}, "algorithm": {**CFG["algorithm"], "rounds": 5}}
    fedopt.run(cfg, out_dir=out, progress=False)
    # a crash after round 5's rows were logged but before its checkpoint was written
    (out / "checkpoints" / "round_000005.safetensors").unlink()
    fedopt.run(cfg, out_dir=out, progress=False, resume=True)
    rows = read_metrics(out)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    scalars = _scalars(out / "tensorboard")     # tensorboard's own reader
    numeric = {k for r in rows for k, v in r.items()
               if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(scalars) and "client_test_accuracy_worst10" in numeric
    for tag in numeric:
        expect = [(r["round"], r[tag]) for r in rows if isinstance(r.get(tag), (int, float))]
        got = scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in expect], tag      # each round once
        for (_, v), (_, e) in zip(got, expect):
            if tag not in ("train_time_s", "wall_time_s", "client_updates_per_s"):
                assert v == pytest.approx(e, rel=1e-6, abs=1e-7), tag   # float32 events
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    for r, line in zip(rows, table):
        for k, v in r.items():
            assert (line[k] == "") if v is None else float(line[k]) == float(v), k
    assert (out / "metrics.csv").read_text() == metrics_csv(rows)
    from fedopt.simulations.plot import plot_run
    assert plot_run(out)                          # `fedopt plot` reads the same run directory
    from fedopt.records import remove_run_dir
    remove_run_dir(out)                           # fedopt deletes what it wrote, logs included
    assert not out.exists()


def test_metrics_csv_keeps_missing_and_nonfinite_values_apart():
    text = metrics_csv([{"round": 1, "a": None, "b": float("nan")}, {"round": 2, "c": 0.1}])
    assert text.splitlines() == ["round,a,b,c", "1,,nan,", "2,,,0.1"]


def test_sampled_and_per_client_evaluation_resume_exactly(tmp_path):
    cfg = {**CFG, "eval_every": 1, "checkpoint_every": 2, "eval_clients": 10,
           "per_client_eval": {"every": 2, "clients": 12, "personalize_steps": 2},
           "algorithm": {**CFG["algorithm"], "rounds": 4}}
    whole = fedopt.run(cfg, out_dir=tmp_path / "a", progress=False).metrics
    fedopt.run({**cfg, "algorithm": {**cfg["algorithm"], "rounds": 2}}, out_dir=tmp_path / "b",
               progress=False)
    resumed = fedopt.run(cfg, out_dir=tmp_path / "b", progress=False, resume=True).metrics
    assert "personal_test_accuracy_worst10" in whole[-1] and "test_accuracy_ci" in whole[-1]
    assert [_untimed(r) for r in resumed] == [_untimed(r) for r in whole]
