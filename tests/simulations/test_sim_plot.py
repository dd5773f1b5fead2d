"""Plots from run directories and the text results table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedopt.simulations.plot import aggregate, format_cell, plot_run, plot_runs, results_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, rounds=10, virtual=False, seed=0, name=None, eval_every=1):
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for r in range(1, rounds + 1):
            row = {"round": r, "train_loss": 1.0 / r + 0.01 * rng.random(),
                   "client_updates": 10 * r, "wall_time_s": 0.1 * r + 0.01 * seed}
            if r % eval_every == 0:
                row.update(test_loss=1.2 / r, test_accuracy=1 - 0.5 / r)
            else:
                row.update(test_loss=None, test_accuracy=None)
            if virtual:
                row["virtual_time"] = 2.0 * r
            f.write(json.dumps(row) + "\n")
    if name:
        (run_dir / "config.json").write_text(json.dumps({"name": name}))
    return run_dir


def assert_pngs(paths):
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_plot_run_writes_round_and_wall_time_pngs(tmp_path):
    run = write_run(tmp_path / "run", eval_every=3)
    paths = plot_run(run)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["accuracy_vs_client_updates.png", "accuracy_vs_round.png",
                     "accuracy_vs_wall_time_s.png", "loss_vs_client_updates.png",
                     "loss_vs_round.png", "loss_vs_wall_time_s.png"]
    assert all(p.startswith(str(run / "plots")) for p in paths)
    assert_pngs(paths)


def test_plot_run_adds_virtual_time_when_present(tmp_path):
    paths = plot_run(write_run(tmp_path / "run", virtual=True), out=tmp_path / "figs")
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert {"loss_vs_virtual_time.png", "accuracy_vs_virtual_time.png"} <= names
    assert len(names) == 8 and all(p.startswith(str(tmp_path / "figs")) for p in paths)
    assert_pngs(paths)


def test_plot_run_empty_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        plot_run(tmp_path)


def test_plot_runs_groups_seeds_by_label(tmp_path):
    dirs = [write_run(tmp_path / f"{alg}-s{s}", seed=s) for alg in ("a", "b") for s in (0, 1)]
    out = tmp_path / "cmp"
    paths = plot_runs(dirs, labels=["A", "A", "B", "B"], out=out)
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == [
        "test_accuracy_vs_round.png", "test_loss_vs_round.png", "train_loss_vs_round.png"]
    assert_pngs(paths)
    wall = plot_runs(dirs, labels=["A", "A", "B", "B"], out=out, x="wall_time_s")
    assert len(wall) == 3 and all("wall_time_s" in p for p in wall)


def test_plot_runs_default_labels_and_out(tmp_path):
    dirs = [write_run(tmp_path / "runs" / "x", name="fedavg"), write_run(tmp_path / "runs" / "y")]
    paths = plot_runs(dirs, metrics=("test_loss",))
    assert paths == [str(tmp_path / "runs" / "comparison" / "test_loss_vs_round.png")]


def test_plot_runs_validates_arguments(tmp_path):
    run = write_run(tmp_path / "r")
    with pytest.raises(ValueError, match="labels"):
        plot_runs([run], labels=["a", "b"], out=tmp_path)
    with pytest.raises(ValueError, match="x: must be one of"):
        plot_runs([run], out=tmp_path, x="epoch")
    with pytest.raises(ValueError, match="virtual_time"):
        plot_runs([run], out=tmp_path, x="virtual_time")


def test_aggregate_mean_min_max_shared_and_interpolated():
    x = np.array([1.0, 2.0, 3.0])
    grid, mean, lo, hi = aggregate([(x, np.array([1.0, 2.0, 3.0])), (x, np.array([3.0, 4.0, 5.0]))])
    np.testing.assert_allclose(grid, x)
    np.testing.assert_allclose(mean, [2, 3, 4])
    np.testing.assert_allclose(lo, [1, 2, 3])
    np.testing.assert_allclose(hi, [3, 4, 5])
    # different x: interpolated on the overlap [1, 2] of y = x and y = 2x
    grid, mean, lo, hi = aggregate([(np.array([0.0, 2.0]), np.array([0.0, 2.0])),
                                    (np.array([1.0, 3.0]), np.array([2.0, 6.0]))], grid_points=3)
    np.testing.assert_allclose(grid, [1.0, 1.5, 2.0])
    np.testing.assert_allclose(mean, [1.5, 2.25, 3.0])
    np.testing.assert_allclose(hi, [2.0, 3.0, 4.0])


# ----------------------------------------------------------------------------- table

def test_results_table_aligns_columns():
    rows = [{"round": 1, "test_accuracy": 0.5, "algo": "fedavg", "updates_per_s": 12345.678},
            {"round": 100, "test_accuracy": None, "algo": "fedprox", "updates_per_s": 2.5e-5}]
    text = results_table(rows, columns=["round", ("test_accuracy", "acc"), "algo",
                                        ("updates_per_s", "upd/s")])
    lines = text.splitlines()
    assert lines[0].split() == ["round", "acc", "algo", "upd/s"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == ["1", "0.5000", "fedavg", "12345.7"]
    assert lines[3].split() == ["100", "-", "fedprox", "2.500e-05"]
    # numbers right-aligned: each numeric cell ends where its header ends
    for header, cells in (("round", ("1", "100")), ("acc", ("0.5000", "-")),
                          ("upd/s", ("12345.7", "2.500e-05"))):
        end = lines[0].index(header) + len(header)
        assert [line.index(c, end - len(c)) + len(c) for line, c in zip(lines[2:], cells)] \
            == [end, end]
    assert lines[2].index("fedavg") == lines[3].index("fedprox") == lines[0].index("algo")
    assert len({len(line) for line in lines[:2]}) == 1


def test_results_table_default_columns_union_in_order():
    text = results_table([{"a": 1}, {"b": 2.0, "a": 3}])
    assert text.splitlines()[0].split() == ["a", "b"]
    assert text.splitlines()[2].split() == ["1", "-"]


def test_results_table_rejects_bad_column_spec():
    with pytest.raises(ValueError, match="columns"):
        results_table([{"a": 1}], columns=[("a", "b", "c")])


@pytest.mark.parametrize("value, text", [(None, "-"), (3, "3"), (0.0, "0"), (0.51234, "0.5123"),
                                         (1234.56, "1234.6"),
                                         (999.99999999, "1000.0"), (999.9994, "999.9994"), (math.nan, "nan"), (True, "true"),
                                         (np.float32(0.25), "0.2500"), (3.2e8, "3.200e+08")])
def test_format_cell(value, text):
    assert format_cell(value) == text


def test_plot_run_with_nonfinite_rows_draws_the_finite_prefix_and_warns(tmp_path):
    """A run whose losses become NaN at round 4 (float NaN or the JSON string "nan") and whose
    accuracy is then not reported (None): the loss curves are still drawn, up to round 3, and
    a warning names the run and each non-finite metric with the round where it started."""
    from fedopt.simulations.plot import NonFiniteMetricWarning, _finite_prefix, first_nonfinite

    run = tmp_path / "diverged"
    run.mkdir()
    rows = []
    for r in range(1, 7):
        bad = r >= 4
        rows.append({"round": r, "wall_time_s": 0.1 * r,
                     "test_loss": "nan" if bad else 1.0 / r,
                     "train_loss": float("inf") if r >= 5 else 0.9 / r,
                     "test_accuracy": None if bad else 0.5 + 0.1 * r})
    with open(run / "metrics.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")      # json writes float inf as Infinity
    read = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert first_nonfinite(read, "round", "test_loss") == 4.0
    assert first_nonfinite(read, "round", "train_loss") == 5.0
    xs, ys, bad = _finite_prefix(read, "round", "test_loss")
    assert xs.tolist() == [1.0, 2.0, 3.0] and bad == 4.0
    with pytest.warns(NonFiniteMetricWarning) as caught:
        paths = plot_run(run)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert "loss_vs_round.png" in names and "accuracy_vs_round.png" in names
    assert_pngs(paths)
    messages = [str(w.message) for w in caught]
    assert any("diverged" in m and "test_loss" in m and "round 4" in m for m in messages)
    assert any("train_loss" in m and "round 5" in m for m in messages)


def test_plot_run_all_nan_loss_is_not_skipped_silently(tmp_path):
    run = tmp_path / "nan_from_start"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for r in range(1, 4):
            f.write(json.dumps({"round": r, "test_loss": "nan", "test_accuracy": None}) + "\n")
    from fedopt.simulations.plot import NonFiniteMetricWarning

    with pytest.warns(NonFiniteMetricWarning, match="test_loss is non-finite .* round 1"):
        paths = plot_run(run)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["loss_vs_round.png"]


def test_plots_never_replace_a_file_fedopt_did_not_write(tmp_path):
    from fedopt.runfiles import is_fedopt_png

    run = write_run(tmp_path / "run")
    paths = plot_run(run)
    assert paths and all(is_fedopt_png(p) for p in paths)
    assert plot_run(run) == paths                       # its own plots: redrawn in place
    users = tmp_path / "figures"
    users.mkdir()
    mine = users / "loss_vs_round.png"                  # a user's figure under a plot's name
    mine.write_bytes(PNG_MAGIC + b" a user's figure")
    with pytest.raises(ValueError, match=r"loss_vs_round\.png: exists and was not written by fedopt"):
        plot_run(run, out=users)
    assert mine.read_bytes() == PNG_MAGIC + b" a user's figure"


def test_runs_sharing_only_the_root_need_an_out_folder(tmp_path, monkeypatch):
    import os

    a, b = write_run(tmp_path / "a" / "r"), write_run(tmp_path / "b" / "r")
    real = os.path.commonpath
    monkeypatch.setattr(os.path, "commonpath", lambda paths: os.sep if len(paths) > 1 else real(paths))
    with pytest.raises(ValueError, match=r"^out: the run directories share no parent"):
        plot_runs([a, b])
    assert_pngs(plot_runs([a, b], out=tmp_path / "cmp"))
