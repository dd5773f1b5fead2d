"""Run directories: atomic writes, metrics JSONL, resume trimming, checkpoints, locks,
permissions, ownership of what is deleted."""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import stat
import warnings

import numpy as np
import pytest
import torch

from fedopt import environment, runfiles
from fedopt.checkpoint import (CheckpointError, decode_checkpoint, encode_checkpoint,
                               load_checkpoint)
from fedopt.environment import environment_info
from fedopt.jsonio import to_jsonable
from fedopt.records import (MetricsError, ResumeMismatchError, RunExistsError, RunLockedError,
                            RunRecorder, holds_run, latest_checkpoint, load_resume_checkpoint,
                            read_metrics, read_summary, remove_run_dir)
from fedopt.runfiles import RunDirError, atomic_write_bytes, atomic_write_json

CONFIG = {"seed": 3, "algorithm": {"name": "fedavg", "rounds": 5}, "data": {"num_clients": 4}}


def leftovers(directory) -> list[str]:
    return [p for p in os.listdir(directory) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_bytes_replaces_content(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert leftovers(tmp_path) == []


def test_failure_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"a": 1})

    def broken_fsync(fd):  # data half-way to disk when the "crash" happens
        raise OSError("disk full")

    monkeypatch.setattr(runfiles.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"a": 2, "b": "x" * 10_000})
    assert json.loads(path.read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []


def test_atomic_write_killed_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    atomic_write_bytes(path, encode_checkpoint({"w": torch.ones(3)}))
    real_write = os.write

    def partial_write(fd, data):
        real_write(fd, bytes(data)[:5])
        raise KeyboardInterrupt   # killed half-way

    monkeypatch.setattr(runfiles.os, "write", partial_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, encode_checkpoint({"w": torch.zeros(3)}))
    monkeypatch.setattr(runfiles.os, "write", real_write)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert leftovers(tmp_path) == []


def test_atomic_write_bytes_rejects_text(tmp_path):
    with pytest.raises(TypeError, match="data"):
        atomic_write_bytes(tmp_path / "x", "text")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- JSON

def test_to_jsonable_converts_tensors_numpy_and_non_finite():
    obj = {"t0": torch.tensor(0.5), "t1": torch.tensor([1, 2]), "n": np.float32(0.25),
           "i": np.int64(7), "arr": np.array([[1.0, np.nan]]), "nan": float("nan"),
           "inf": -math.inf, "tup": (1, torch.tensor(float("inf"))), "b": np.bool_(True)}
    out = to_jsonable(obj)
    assert out == {"t0": 0.5, "t1": [1, 2], "n": 0.25, "i": 7, "arr": [[1.0, "nan"]],
                   "nan": "nan", "inf": "-inf", "tup": [1, "inf"], "b": True}
    assert type(out["i"]) is int and type(out["b"]) is bool
    json.dumps(out, allow_nan=False)  # strictly valid JSON


def test_to_jsonable_names_unconvertible_entry():
    with pytest.raises(TypeError, match=r"metrics\['bad'\]: cannot convert object"):
        to_jsonable({"ok": 1, "bad": object()}, "metrics")


# ----------------------------------------------------------------------------- environment

def test_environment_info_fields():
    info = environment_info()
    for key in ("python", "platform", "torch", "numpy", "ray", "grpcio", "fedopt", "cuda_device",
                "git_commit", "hostname", "time"):
        assert key in info
    assert info["torch"] == torch.__version__
    assert info["time"].endswith("+00:00")
    assert info["git_commit"] is None or len(info["git_commit"]) >= 40
    json.dumps(info)


def test_git_commit_reads_refs_and_tolerates_non_checkout(tmp_path):
    assert environment.git_commit(tmp_path) is None  # not a git checkout: no error
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert environment.git_commit(tmp_path / "repo") is None  # branch without commits
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert environment.git_commit(tmp_path / "repo") == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    (tmp_path / "repo" / "pkg").mkdir()
    assert environment.git_commit(tmp_path / "repo" / "pkg") == "b" * 40


# ----------------------------------------------------------------------------- recorder

def test_recorder_writes_config_versions_metrics_summary(tmp_path):
    out = tmp_path / "run"
    with RunRecorder(out, CONFIG, seed=3) as rec:
        rec.log({"round": 1, "test_loss": torch.tensor(0.7), "acc": np.float64(0.5)})
        # flushed line by line: visible before close
        assert read_metrics(out) == [{"round": 1, "test_loss": pytest.approx(0.7), "acc": 0.5}]
        rec.log({"round": 2, "test_loss": float("nan"), "train_loss": math.inf, "x": None})
        rec.write_summary({"final_accuracy": np.float32(0.75), "rounds": 2})
    assert json.loads((out / "config.json").read_text()) == CONFIG
    versions = json.loads((out / "versions.json").read_text())
    assert versions["seed"] == 3 and versions["torch"] == torch.__version__
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # non-finite is measured, null is "not measured": they stay distinct, in strict JSON
    assert json.loads(lines[1]) == {"round": 2, "test_loss": "nan", "train_loss": "inf", "x": None}
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    row = read_metrics(out)[1]
    assert math.isnan(row["test_loss"]) and row["train_loss"] == math.inf and row["x"] is None
    assert json.loads((out / "summary.json").read_text()) == {"final_accuracy": 0.75, "rounds": 2}
    assert rec.checkpoint_dir == os.path.join(out, "checkpoints")


def test_existing_run_needs_resume(tmp_path):
    with RunRecorder(tmp_path / "run", CONFIG, seed=3) as rec:
        rec.log({"round": 1})   # a started run: it has a metrics row
    with pytest.raises(RunExistsError, match=r"already holds a run.*--out.*--resume"):
        RunRecorder(tmp_path / "run", CONFIG, seed=3)
    RunRecorder(tmp_path / "run", CONFIG, seed=3, resume=True).close()


def test_empty_existing_directory_is_fine(tmp_path):
    RunRecorder(tmp_path, CONFIG, seed=0).close()
    assert (tmp_path / "config.json").is_file()


def test_resume_rejects_changed_config_or_seed_but_allows_more_rounds(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        rec.save_checkpoint({"x": 1}, round=1)   # a started run: it has a checkpoint
    changed = {**CONFIG, "data": {"num_clients": 8}}
    with pytest.raises(ResumeMismatchError, match=r"^data\.num_clients: differs"):
        RunRecorder(tmp_path, changed, seed=3, resume=True)
    with pytest.raises(ResumeMismatchError, match=r"^seed: 4 differs"):
        RunRecorder(tmp_path, CONFIG, seed=4, resume=True)
    longer = {**CONFIG, "algorithm": {"name": "fedavg", "rounds": 9}}
    RunRecorder(tmp_path, longer, seed=3, resume=True).close()
    assert json.loads((tmp_path / "config.json").read_text())["algorithm"]["rounds"] == 9
    versions = json.loads((tmp_path / "versions.json").read_text())
    assert len(versions["resumed"]) == 1 and versions["seed"] == 3


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="seed"):
        RunRecorder(tmp_path, CONFIG, seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep"):
        RunRecorder(tmp_path, CONFIG, seed=0, keep=0)
    with pytest.raises(TypeError, match="config"):
        RunRecorder(tmp_path, [1, 2], seed=0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- reading

def test_read_metrics_ignores_truncated_last_line_with_warning(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "test_lo')
    with pytest.warns(UserWarning, match="truncated last line 3"):
        rows = read_metrics(tmp_path)
    assert rows == [{"round": 1}, {"round": 2}]


def test_read_metrics_rejects_corruption_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(tmp_path)


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics"):
        read_metrics(tmp_path)


def test_log_after_crash_starts_on_a_fresh_line(tmp_path):
    rec = RunRecorder(tmp_path, CONFIG, seed=3)
    rec.log({"round": 1})
    rec.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "te')  # crash mid-line
    rec = RunRecorder(tmp_path, CONFIG, seed=3, resume=True)
    rec.log({"round": 2})
    rec.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metrics(tmp_path) == [{"round": 1}, {"round": 2}]


# ----------------------------------------------------------------------------- resume

def run_rounds(rec: RunRecorder, rounds: range, crash_after: int | None = None) -> None:
    for r in rounds:
        rec.log({"round": r, "test_loss": 1.0 / r, "client_updates": 10 * r})
        if r % 2 == 0:
            rec.save_checkpoint({"params": torch.full((2,), float(r))}, round=r)
        if r == crash_after:
            return


def test_resume_truncation_reproduces_uninterrupted_file(tmp_path):
    full = tmp_path / "full"
    with RunRecorder(full, CONFIG, seed=3) as rec:
        run_rounds(rec, range(1, 8))

    part = tmp_path / "part"
    with RunRecorder(part, CONFIG, seed=3) as rec:
        run_rounds(rec, range(1, 8), crash_after=5)  # checkpoint at 4, rows up to 5
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"round": 6, "test_')  # and a torn line

    ckpt = load_checkpoint(latest_checkpoint(part))
    assert ckpt["round"] == 4 and torch.equal(ckpt["params"], torch.full((2,), 4.0))
    with RunRecorder(part, CONFIG, seed=3, resume=True) as rec:
        assert rec.truncate_after(ckpt["round"]) == 1  # round 5 dropped
        assert [r["round"] for r in rec.read_metrics()] == [1, 2, 3, 4]
        run_rounds(rec, range(ckpt["round"] + 1, 8))
    assert (part / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert leftovers(part) == []


def test_truncate_after_rejects_non_integer(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        with pytest.raises(TypeError, match="round"):
            rec.truncate_after("4")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- checkpoint format

def same(a, b) -> bool:
    """Exact equality of nested values: types, tensor dtypes, shapes and bits, NaN included."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        x, y = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
        return torch.equal(x.view(torch.uint8), y.view(torch.uint8)) if x.numel() else True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def test_checkpoint_round_trips_every_kind_of_value_bit_exactly():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(3, generator=g)
    base = torch.randn(4, 5, dtype=torch.float64, generator=g)
    state = {
        "f64": base, "view": base.t()[1:, ::2],                  # a non-contiguous view
        "f32": torch.tensor([1.0, float("nan"), -float("inf"), -0.0]),
        "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "i64": torch.tensor([2 ** 62 + 1, -(2 ** 63)], dtype=torch.int64),
        "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 7),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "nested": {"list": [1, None, "s", (2, 3.25)], "tuple": (True, False),
                   3: "int key", (1, 2): "tuple key", "deep": {"a": [shared, {"b": shared}]}},
        "big": 2 ** 64 + 1, "neg_big": -(2 ** 70), "safe": 2 ** 53,
        "floats": [0.1, float("nan"), float("inf"), -float("inf"), -0.0, 1e308],
        "np": np.arange(6, dtype=np.int32).reshape(2, 3), "np_scalar": np.float32(0.1),
        "none": None, "empty_list": [], "empty_dict": {},
    }
    back = decode_checkpoint(encode_checkpoint(state))
    assert same(back, state)
    assert back["view"].is_contiguous() and same(back["view"], base.t()[1:, ::2])
    nested = back["nested"]["deep"]["a"]
    assert nested[0] is nested[1]["b"]   # a tensor stored twice is one tensor again


def test_distinct_numpy_arrays_stay_distinct():
    """Arrays built on the fly (their temporary tensor views could share an id once freed) each
    come back as themselves: six int arrays and a float one, none equal to another."""
    state = {"a": [np.arange(i, i + 3) for i in range(6)], "b": np.array([1.5, 2.5])}
    back = decode_checkpoint(encode_checkpoint(state))
    assert [x.tolist() for x in back["a"]] == [[i, i + 1, i + 2] for i in range(6)]
    assert back["b"].dtype == np.float64 and back["b"].tolist() == [1.5, 2.5]


def test_checkpoint_structure_too_large_for_a_header_is_refused_when_writing(monkeypatch):
    import fedopt.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "MAX_STRUCTURE_BYTES", 1000)
    with pytest.raises(TypeError, match="checkpoint header"):
        encode_checkpoint({"ids": list(range(1000))})
    assert decode_checkpoint(encode_checkpoint({"ids": list(range(10))}))["ids"] == list(range(10))


def test_checkpoint_refuses_values_it_cannot_store():
    with pytest.raises(TypeError, match=r"^obj/x: cannot store object"):
        encode_checkpoint({"obj": {"x": object()}})
    with pytest.raises(TypeError, match="complex"):
        encode_checkpoint({"c": torch.zeros(2, dtype=torch.complex64)})


class _Evil:
    def __reduce__(self):   # what a malicious pickle does: call something on load
        return (os.mkdir, (_Evil.marker,))


def test_pickle_checkpoints_are_refused_never_unpickled(tmp_path):
    _Evil.marker = os.fspath(tmp_path / "pwned")
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    torch.save({"round": 2, "x": _Evil()}, ckpt_dir / "round_000002.pt")   # zip pickle
    (ckpt_dir / "raw.safetensors").write_bytes(pickle.dumps(_Evil()))       # raw pickle
    for path in (ckpt_dir / "round_000002.pt", ckpt_dir / "raw.safetensors"):
        with pytest.raises(CheckpointError, match=r"pickle checkpoint.*never unpickles"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"round_000002\.pt: a pickle checkpoint"):
        load_resume_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_damaged_checkpoints_are_named(tmp_path):
    data = encode_checkpoint({"w": torch.arange(100.0), "round": 1})
    cases = {"truncated": data[:-7], "short": data[:5], "header": data[:8] + b"{" * 40,
             "flipped": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
             "foreign": __import__("safetensors.torch").torch.save({"w": torch.ones(1)})}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(CheckpointError, match=f"^{tmp_path / name}: "):
            load_checkpoint(tmp_path / name)


# ----------------------------------------------------------------------------- checkpoint files

def test_checkpoints_keep_last_and_newest_is_the_highest_round(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3, keep=2) as rec:
        for r in (2, 4, 6):
            path = rec.save_checkpoint({"params": torch.tensor([float(r)])}, round=r)
            assert path.endswith(f"round_{r:06d}.safetensors")
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["round_000004.safetensors", "round_000006.safetensors"]
    latest = latest_checkpoint(tmp_path)
    assert latest == os.path.join(tmp_path, "checkpoints", "round_000006.safetensors")
    state = load_checkpoint(latest)
    assert state["round"] == 6 and state["params"].item() == 6.0 and state["metrics_rows"] == 0
    assert RunRecorder.latest_checkpoint(tmp_path) == latest


def test_checkpoint_from_an_earlier_round_drops_later_files(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3, keep=3) as rec:
        for r in (1, 2, 3):
            rec.save_checkpoint({"x": r}, round=r)
        rec.save_checkpoint({"x": 22}, round=2)  # resumed from round 1, trajectory diverged
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["round_000001.safetensors", "round_000002.safetensors"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["x"] == 22


def test_pruning_deletes_only_checkpoints_fedopt_wrote(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    with RunRecorder(tmp_path, CONFIG, seed=3, keep=1) as rec:
        ckpt_dir.mkdir()
        (ckpt_dir / "round_000001.safetensors").write_bytes(b"the user's own file")
        (ckpt_dir / "round_000009.safetensors").write_bytes(b"another, of a later round")
        (ckpt_dir / "notes.txt").write_text("keep me")
        for r in (2, 3, 4):
            rec.save_checkpoint({"x": r}, round=r)
    assert sorted(os.listdir(ckpt_dir)) == ["notes.txt", "round_000001.safetensors",
                                            "round_000004.safetensors", "round_000009.safetensors"]
    assert (ckpt_dir / "round_000001.safetensors").read_bytes() == b"the user's own file"


def test_latest_checkpoint_none_and_highest_round(tmp_path):
    assert latest_checkpoint(tmp_path) is None and load_resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    for r in (3, 12):
        atomic_write_bytes(tmp_path / "checkpoints" / f"round_{r:06d}.safetensors",
                           encode_checkpoint({"round": r}))
    assert latest_checkpoint(tmp_path).endswith("round_000012.safetensors")


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3, keep=3) as rec:
        for r in (2, 4, 6):
            rec.save_checkpoint({"w": torch.full((3,), float(r))}, round=r)
    newest = tmp_path / "checkpoints" / "round_000006.safetensors"
    newest.write_bytes(newest.read_bytes()[:-4])                   # torn write
    middle = tmp_path / "checkpoints" / "round_000004.safetensors"
    raw = bytearray(middle.read_bytes())
    raw[-1] ^= 0xFF                                                # a flipped bit on disk
    middle.write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as caught:
        state = load_resume_checkpoint(tmp_path)
    assert state["round"] == 2 and torch.equal(state["w"], torch.full((3,), 2.0))
    text = " ".join(str(w.message) for w in caught)
    assert "round_000006.safetensors: truncated" in text
    assert "round_000004.safetensors: damaged (checksum mismatch)" in text
    (tmp_path / "checkpoints" / "round_000002.safetensors").write_bytes(b"x" * 3)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no checkpoint could"):
        load_resume_checkpoint(tmp_path)


def test_save_checkpoint_validates(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        with pytest.raises(ValueError, match="round"):
            rec.save_checkpoint({"x": 1}, round=-1)
        with pytest.raises(ValueError, match=r"state\['round'\]"):
            rec.save_checkpoint({"round": 3}, round=4)
        with pytest.raises(TypeError, match="state"):
            rec.save_checkpoint([1], round=4)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- resume checks

def test_resume_metrics_detects_missing_rows(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        run_rounds(rec, range(1, 7))        # rows 1..6, checkpoints at 2, 4, 6
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.jsonl").write_text("".join(lines[:2] + lines[3:]))   # row 3 lost
    ckpt = load_resume_checkpoint(tmp_path)
    assert (ckpt["round"], ckpt["metrics_rows"]) == (6, 6)
    with RunRecorder(tmp_path, CONFIG, seed=3, resume=True) as rec:
        with pytest.raises(MetricsError, match=r"metrics\.jsonl: holds 5 rows up to round 6, "
                                               r"but 6 had been written.*missing"):
            rec.resume_metrics(ckpt["round"], ckpt["metrics_rows"])
    (tmp_path / "metrics.jsonl").write_text("".join(lines[:3] + lines[2:]))   # row 3 twice
    with RunRecorder(tmp_path, CONFIG, seed=3, resume=True) as rec:
        with pytest.raises(MetricsError, match="out of order"):
            rec.resume_metrics(6, 7)


def test_resume_without_metrics_file_has_no_rows(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        rec.save_checkpoint({"x": 1}, round=2)   # eval_every > checkpoint_every: no row yet
    with RunRecorder(tmp_path, CONFIG, seed=3, resume=True) as rec:
        assert rec.resume_metrics(2, load_resume_checkpoint(tmp_path)["metrics_rows"]) == []


def test_resume_never_shrinks_the_recorded_run(tmp_path):
    long = {**CONFIG, "algorithm": {"name": "fedavg", "rounds": 100, "time_budget": 50.0}}
    with RunRecorder(tmp_path, long, seed=3) as rec:
        rec.log({"round": 1})
    short = {**CONFIG, "algorithm": {"name": "fedavg", "rounds": 50, "time_budget": 10.0}}
    with pytest.warns(UserWarning) as caught:
        rec = RunRecorder(tmp_path, short, seed=3, resume=True)
    rec.close()
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["algorithm.rounds",
                                                                   "algorithm.time_budget"]
    assert "50 is shorter than the recorded 100" in " ".join(str(w.message) for w in caught)
    assert rec.kept_values == {"algorithm.rounds": 100, "algorithm.time_budget": 50.0}
    assert rec.apply_kept_values(short)["algorithm"] == long["algorithm"]
    assert short["algorithm"]["rounds"] == 50   # the caller's dict is not modified
    assert json.loads((tmp_path / "config.json").read_text()) == long
    # time_budget not set (the README's resume command omits the override): the recorded
    # budget stays; more rounds and a larger budget extend the run
    unset = {**CONFIG, "algorithm": {"name": "fedavg", "rounds": 200, "time_budget": None}}
    with pytest.warns(UserWarning, match=r"algorithm\.time_budget: not given; .* keeps 50"):
        with RunRecorder(tmp_path, unset, seed=3, resume=True) as rec:
            assert rec.kept_values == {"algorithm.time_budget": 50.0}
    assert json.loads((tmp_path / "config.json").read_text())["algorithm"] == {
        "name": "fedavg", "rounds": 200, "time_budget": 50.0}
    longer = {**CONFIG, "algorithm": {"name": "fedavg", "rounds": 300, "time_budget": 80.0}}
    with RunRecorder(tmp_path, longer, seed=3, resume=True) as rec:
        assert rec.kept_values == {}
    assert json.loads((tmp_path / "config.json").read_text()) == longer


# ----------------------------------------------------------------------------- folders

def test_a_run_that_failed_at_start_can_be_taken_over(tmp_path):
    RunRecorder(tmp_path, CONFIG, seed=3).close()     # config + versions, then the run died
    assert not holds_run(tmp_path)
    other = {**CONFIG, "data": {"num_clients": 9}}
    with RunRecorder(tmp_path, other, seed=4) as rec:  # not held: a new run takes it over
        rec.log({"round": 1})
    assert json.loads((tmp_path / "config.json").read_text()) == other
    assert holds_run(tmp_path)


def test_files_fedopt_did_not_write_are_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text('{"my": "config"}')   # no fedopt versions.json
    with pytest.raises(RunExistsError, match=r"config\.json was not written by fedopt"):
        RunRecorder(tmp_path, CONFIG, seed=3)
    assert (tmp_path / "config.json").read_text() == '{"my": "config"}'
    (tmp_path / "config.json").unlink()
    RunRecorder(tmp_path, CONFIG, seed=3).close()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_one_writer_per_run_directory(tmp_path):
    first = RunRecorder(tmp_path, CONFIG, seed=3)
    first.log({"round": 1})
    with pytest.raises(RunLockedError, match=r"in use by another fedopt process.*\.fedopt\.lock"):
        RunRecorder(tmp_path, CONFIG, seed=3, resume=True)
    first.close()
    with RunRecorder(tmp_path, CONFIG, seed=3, resume=True) as rec:   # released on close
        rec.log({"round": 2})
    assert [r["round"] for r in read_metrics(tmp_path)] == [1, 2]


def test_out_dir_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match=r"^out_dir: .*f exists and is not a directory$"):
        RunRecorder(tmp_path / "f", CONFIG, seed=3)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_file_of_a_run_has_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        with RunRecorder(tmp_path / "run", CONFIG, seed=3) as rec:
            rec.log({"round": 1})
            rec.save_checkpoint({"w": torch.ones(2)}, round=1)
            rec.write_summary({"rounds": 1})
            rec.truncate_after(1)   # rewrites metrics.jsonl through a temporary file
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) == 6   # config, versions, metrics, summary, lock, checkpoint
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == \
        {p.name: expected for p in files}


def test_full_disk_is_one_error_naming_the_file(tmp_path, monkeypatch):
    rec = RunRecorder(tmp_path, CONFIG, seed=3)
    rec.log({"round": 1})

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runfiles.os, "write", no_space)
    with pytest.raises(RunDirError, match=r"metrics\.jsonl: cannot write: No space left"):
        rec.log({"round": 2})
    with pytest.raises(RunDirError, match=r"round_000002\.safetensors: cannot write: No space"):
        rec.save_checkpoint({"x": 1}, round=2)
    with pytest.raises(RunDirError, match=r"summary\.json: cannot write: No space"):
        rec.write_summary({"rounds": 2})
    rec.close()
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "checkpoints") == []
    assert not (tmp_path / "summary.json").exists()


def test_summary_non_finite_round_trip(tmp_path):
    with RunRecorder(tmp_path, CONFIG, seed=3) as rec:
        rec.write_summary({"best": None, "loss": math.nan, "hi": math.inf,
                           "nested": {"lo": -math.inf, "name": "x"}})
    s = read_summary(tmp_path)
    assert s["best"] is None and math.isnan(s["loss"]) and s["hi"] == math.inf
    assert s["nested"] == {"lo": -math.inf, "name": "x"}


def test_remove_run_dir_deletes_only_a_fedopt_run(tmp_path):
    run = tmp_path / "run"
    with RunRecorder(run, CONFIG, seed=3) as rec:
        rec.log({"round": 1, "test_loss": 0.5})
        rec.save_checkpoint({"x": 1}, round=1)
    from fedopt.simulations.plot import plot_run

    assert plot_run(run)                                   # fedopt's own PNGs: removable
    users = {"checkpoints/mine.txt": b"mine",                # a user's files, some under the
             "checkpoints/round_000009.safetensors": b"not a checkpoint",   # names fedopt uses
             "plots/figure.png": b"\x89PNG\r\n\x1a\n a user's plot"}
    for name, data in users.items():
        (run / name).write_bytes(data)
        with pytest.raises(RunDirError, match=rf"{name}: not written by fedopt"):
            remove_run_dir(run)
        assert (run / "metrics.jsonl").is_file() and (run / name).read_bytes() == data
        (run / name).unlink()
    remove_run_dir(run)
    assert not run.exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match="not a fedopt run directory"):
        remove_run_dir(plain)
    assert (plain / "config.json").exists()


def test_a_checkpoint_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle():
    """safetensors files begin with their header's length, little-endian: a length whose low
    byte is 0x80 (as 0x80 starts a raw pickle) must still load. Pad the structure until the
    header length's low byte is 0x80."""
    for pad in range(300):
        data = encode_checkpoint({"x": torch.arange(3.0), "pad": "p" * pad})
        if data[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    back = decode_checkpoint(data)
    assert back["x"].tolist() == [0.0, 1.0, 2.0]


def test_resuming_a_run_another_version_recorded_names_the_schema_difference(tmp_path):
    """A recorded config whose keys differ from this version's (a key added since, one
    removed) is not the user's change: the error says another version wrote it."""
    old = {**CONFIG, "executor": {"name": "local", "num_workers": 2}}          # a removed key
    with RunRecorder(tmp_path, old, seed=3) as rec:
        rec.log({"round": 1})
    new = {**CONFIG, "executor": {"name": "local"}, "on_nonfinite": "error"}  # an added key
    with pytest.raises(ResumeMismatchError, match=r"written by another fedopt version \(keys "
                       r"this version adds: on_nonfinite; keys it no longer has: "
                       r"executor\.num_workers\)"):
        RunRecorder(tmp_path, new, seed=3, resume=True)
    with pytest.raises(ResumeMismatchError, match=r"^data\.num_clients: differs from the recorded"):
        RunRecorder(tmp_path, {**old, "data": {"num_clients": 99}}, seed=3, resume=True)
