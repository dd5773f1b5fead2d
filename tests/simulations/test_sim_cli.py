"""The ``fedopt`` CLI, against fake config loading and a fake run (plus a few real-config checks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedopt.progress import Progress
from fedopt.records import RunRecorder
from fedopt.simulations import cli

CONFIGS = Path(cli.__file__).parent / "configs"
RESOLVED = {"seed": 0, "data": {"name": "synthetic", "num_clients": 100},
            "algorithm": {"name": "fedavg", "rounds": 30, "clients_per_round": 10}}


class FakeConfigError(ValueError):
    pass


@pytest.fixture
def fake_config(monkeypatch):
    """load_config that accepts anything except files named bad*.yaml; records its calls."""
    calls = []

    def load(source, overrides=()):
        calls.append((os.fspath(source), list(overrides)))
        if Path(source).name.startswith("bad"):
            raise FakeConfigError("algorithm.clients_per_round: 200 exceeds data.num_clients (100)")
        cfg = json.loads(json.dumps(RESOLVED))
        for o in overrides:
            key, value = o.split("=", 1)
            cfg["algorithm"][key.split(".")[-1]] = yaml.safe_load(value)
        return cfg

    monkeypatch.setattr(cli, "load_config", load)
    return calls


@pytest.fixture
def fake_run(monkeypatch):
    """A run that records like the engine does, through RunRecorder and Progress."""
    calls = []

    def run(config, out_dir, progress, resume):
        calls.append(dict(out_dir=out_dir, progress=progress, resume=resume))
        rounds = config["algorithm"]["rounds"]
        rows = []
        with RunRecorder(out_dir, config, seed=config["seed"], resume=resume) as rec, \
                Progress(rounds, enabled=progress) as bar:
            for r in range(1, rounds + 1):
                row = {"round": r, "test_loss": 1.0 / r, "test_accuracy": 1 - 0.5 / r,
                       "train_loss": 0.9 / r, "client_updates": 10 * r, "wall_time_s": 0.5 * r}
                rec.log(row)
                rows.append(row)
                bar.update(test_loss=row["test_loss"])
            rec.write_summary({"final": rows[-1]})
        return SimpleNamespace(metrics=rows, summary={"final": rows[-1]}, out_dir=out_dir)

    monkeypatch.setattr(cli, "run_experiment", run)
    return calls


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- help

@pytest.mark.parametrize("command, options", [
    ([], ["run", "plot", "validate", "show", "--version"]),
    (["run"], ["CONFIG.yaml", "--out", "--set", "--no-progress", "--resume", "example"]),
    (["validate"], ["CONFIG.yaml", "--set", "example"]),
    (["show"], ["RUN_DIR", "--every", "example"]),
    (["plot"], ["RUN_DIR", "--out", "--label", "example"]),
])
def test_help_exits_0_and_lists_options(capsys, command, options):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in options:
        assert opt in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedopt {cli.package_version()}"


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "commands" in out


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "fedopt.simulations.cli", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: fedopt" in proc.stdout


# ----------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_config_is_one_error_line_exit_2(capsys, tmp_path, fake_config, fake_run, command):
    code, out, err = run_cli(capsys, command, str(tmp_path / "bad.yaml"), "--set", "a.b=1")
    assert code == 2
    assert err == "error: algorithm.clients_per_round: 200 exceeds data.num_clients (100)\n"
    assert "Traceback" not in out + err
    assert fake_config == [(str(tmp_path / "bad.yaml"), ["a.b=1"])]
    assert fake_run == []  # nothing ran


def test_validate_prints_resolved_yaml(capsys, fake_config):
    code, out, _ = run_cli(capsys, "validate", "good.yaml", "--set", "algorithm.rounds=5")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["algorithm"]["rounds"] == 5 and cfg["data"] == RESOLVED["data"]


# ----------------------------------------------------------------------------- run

def test_run_prints_results_and_run_dir(capsys, tmp_path, fake_config, fake_run):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(out_dir),
                             "--set", "algorithm.rounds=20")
    assert code == 0
    assert fake_run == [dict(out_dir=str(out_dir), progress=True, resume=False)]
    lines = out.strip().splitlines()
    header = lines[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "round", "test acc", "test loss", "train loss", "client updates", "updates/s",
        "wall time (s)"]
    assert lines[2].split() == ["20", "0.9750", "0.0500", "0.0450", "200", "20.0000", "10.0000"]
    assert f"run directory: {out_dir}" in out
    assert f"{cli.invoked_as()} plot {out_dir}" in out
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 20


def test_run_default_out_dir_and_no_progress(capsys, tmp_path, monkeypatch, fake_config, fake_run):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "run", "configs/quick.yaml", "--no-progress")
    assert code == 0 and fake_run[0]["progress"] is False
    out_dir = fake_run[0]["out_dir"]
    assert Path(out_dir).parent == Path("runs")
    assert Path(out_dir).name.startswith("quick-") and len(Path(out_dir).name) == len("quick-") + 15
    assert (tmp_path / out_dir / "config.json").is_file()


def test_run_into_existing_run_needs_resume(capsys, tmp_path, fake_config, fake_run):
    out_dir = str(tmp_path / "run")
    assert run_cli(capsys, "run", "cfg.yaml", "--out", out_dir)[0] == 0
    code, out, err = run_cli(capsys, "run", "cfg.yaml", "--out", out_dir)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert "Traceback" not in err
    code, _, _ = run_cli(capsys, "run", "cfg.yaml", "--out", out_dir, "--resume")
    assert code == 0 and fake_run[-1]["resume"] is True


def test_run_interrupted_prints_resume_hint(capsys, tmp_path, monkeypatch, fake_config):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_experiment", interrupted)
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(tmp_path / "r"),
                           "--set", "algorithm.rounds=3")
    assert code == 130
    assert f"{cli.invoked_as()} run cfg.yaml --out {tmp_path / 'r'} --resume --set algorithm.rounds=3" in err


def test_unexpected_error_inside_run_keeps_traceback(tmp_path, monkeypatch, fake_config):
    def broken(*a, **k):
        raise ValueError("shape mismatch deep in the engine")

    monkeypatch.setattr(cli, "run_experiment", broken)
    with pytest.raises(ValueError, match="shape mismatch"):
        cli.main(["run", "cfg.yaml", "--out", str(tmp_path / "r")])


# ----------------------------------------------------------------------------- show / plot

def test_show_prints_config_and_every_10th_row(capsys, tmp_path, fake_config, fake_run):
    out_dir = str(tmp_path / "run")
    run_cli(capsys, "run", "cfg.yaml", "--out", out_dir, "--set", "algorithm.rounds=100")
    code, out, _ = run_cli(capsys, "show", out_dir)
    assert code == 0
    assert "algorithm: name=fedavg rounds=100 clients_per_round=10" in out
    assert "metrics: 100 rows, 11 shown" in out
    assert table_rounds(out) == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert "updates/s" in out and "latest checkpoint" not in out
    code, out, _ = run_cli(capsys, "show", out_dir, "--every", "40")
    assert code == 0 and table_rounds(out) == [1, 41, 81, 100]
    code, _, err = run_cli(capsys, "show", out_dir, "--every", "0")
    assert code == 2 and err.startswith("error: --every")


def table_rounds(out: str) -> list[int]:
    table = out[out.index("metrics:"):].splitlines()[3:]
    return [int(line.split()[0]) for line in table if line.strip() and line.split()[0].isdigit()]


def test_show_and_plot_on_missing_dir_exit_2(capsys, tmp_path):
    for command in ("show", "plot"):
        code, _, err = run_cli(capsys, command, str(tmp_path / "nope"))
        assert code == 2 and err.startswith("error: RUN_DIR:") and "Traceback" not in err


def test_plot_single_and_several_runs(capsys, tmp_path, fake_config, fake_run):
    dirs = [str(tmp_path / f"r{i}") for i in range(3)]
    for d in dirs:
        run_cli(capsys, "run", "cfg.yaml", "--out", d, "--set", "algorithm.rounds=5")
    code, out, _ = run_cli(capsys, "plot", dirs[0])
    assert code == 0
    paths = out.split()
    assert len(paths) == 6 and all(Path(p).stat().st_size > 0 for p in paths)  # 2 x 3 axes
    assert all(p.startswith(os.path.join(dirs[0], "plots")) for p in paths)

    code, out, _ = run_cli(capsys, "plot", *dirs, "--label", "A", "--label", "A", "--label", "B",
                           "--out", str(tmp_path / "cmp"))
    assert code == 0
    paths = out.split()
    assert len(paths) == 9  # 3 metrics x (round, client_updates, wall_time_s)
    assert all(Path(p).is_file() and p.startswith(str(tmp_path / "cmp")) for p in paths)

    code, _, err = run_cli(capsys, "plot", *dirs, "--label", "A")
    assert code == 2 and err.startswith("error: --label:")


# ----------------------------------------------------------------------------- example configs

def test_quickstart_config_is_verbatim():
    assert yaml.safe_load((CONFIGS / "quickstart.yaml").read_text()) == {
        "seed": 0,
        "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 100},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "rounds": 50, "clients_per_round": 10,
                      "server_optimizer": {"name": "sgd", "lr": 1.0}},
        "client": {"local_steps": 20, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.01}},
        "executor": {"name": "local", "device": "cpu"},
        "eval_every": 1,
    }


def test_other_example_configs():
    digits = yaml.safe_load((CONFIGS / "digits_fedadam.yaml").read_text())
    assert digits["data"] == {"name": "digits", "num_clients": 100,
                              "partition": {"name": "dirichlet", "alpha": 0.5}}
    assert digits["algorithm"]["server_optimizer"] == {"name": "adam", "lr": 0.01}
    assert digits["client"]["local_epochs"] == 1 and "local_steps" not in digits["client"]
    prox = yaml.safe_load((CONFIGS / "fedprox_synthetic.yaml").read_text())
    quick = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert prox["algorithm"].pop("mu") == 0.01 and prox["algorithm"].pop("name") == "fedprox"
    quick["algorithm"].pop("name")
    assert prox == quick


# ----------------------------------------------------------------------------- real config module

def _require_registries():
    pytest.importorskip("fedopt.config")
    try:
        from fedopt.data import DATASET_KEYS  # noqa: F401
        from fedopt.models import MODEL_KEYS  # noqa: F401
        from fedopt.optim import make  # noqa: F401
    except ImportError as e:
        pytest.skip(f"config registries not available yet: {e}")


def test_real_load_config_bad_override_is_one_line(capsys):
    pytest.importorskip("fedopt.config")
    code, out, err = run_cli(capsys, "validate", str(CONFIGS / "quickstart.yaml"),
                             "--set", "algorithm.rounds")
    assert code == 2
    assert err.startswith("error: --set 'algorithm.rounds'") and err.count("\n") == 1
    assert "Traceback" not in err


def test_real_load_config_names_the_field(capsys):
    _require_registries()
    code, _, err = run_cli(capsys, "validate", str(CONFIGS / "quickstart.yaml"),
                           "--set", "algorithm.clients_per_round=200")
    assert code == 2
    assert err == "error: algorithm.clients_per_round: 200 exceeds data.num_clients (100)\n"


@pytest.mark.parametrize("name", ["quickstart", "digits_fedadam", "fedprox_synthetic"])
def test_example_configs_validate(capsys, name):
    _require_registries()
    code, out, err = run_cli(capsys, "validate", str(CONFIGS / f"{name}.yaml"))
    assert code == 0, err
    assert yaml.safe_load(out)["seed"] == 0


# ----------------------------------------------------------------------------- run directory errors

def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("error: "):-1]


def test_out_that_is_a_file_is_one_error(capsys, tmp_path, fake_config, fake_run):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(tmp_path / "f"))
    assert code == 2
    assert one_error_line(err) == f"--out: {tmp_path / 'f'} exists and is not a directory"
    assert (tmp_path / "f").read_text() == "x"


def test_read_only_out_is_one_error_naming_the_path(capsys, tmp_path, monkeypatch, fake_config,
                                                    fake_run):
    import errno

    from fedopt import records

    real_open = records.os.open

    def read_only(path, flags, *a, **k):
        if os.fspath(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(records.os, "open", read_only)
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(tmp_path / "ro"))
    assert code == 2
    assert one_error_line(err) == (f"{tmp_path / 'ro' / '.fedopt.lock'}: cannot create the lock "
                                   f"file: Read-only file system")


def test_full_disk_is_one_error_naming_the_file(capsys, tmp_path, monkeypatch, fake_config,
                                                fake_run):
    import errno

    from fedopt import records

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records.os, "write", no_space)
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(tmp_path / "r"))
    assert code == 2
    message = one_error_line(err)
    assert message.startswith(str(tmp_path / "r") + os.sep)
    assert message.endswith(": cannot write: No space left on device")


def test_resume_warnings_are_one_line_each(capsys, tmp_path, fake_config, fake_run):
    out_dir = str(tmp_path / "r")
    run_cli(capsys, "run", "cfg.yaml", "--out", out_dir, "--set", "algorithm.rounds=6")
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", out_dir, "--resume",
                           "--no-progress", "--set", "algorithm.rounds=3")
    assert code == 0
    assert err == (f"warning: algorithm.rounds: 3 is shorter than the recorded 6; the resumed "
                   f"run of {out_dir} keeps 6 (give a larger value to extend it)\n")


def test_show_tells_non_finite_from_not_measured(capsys, tmp_path):
    import math

    with RunRecorder(tmp_path, RESOLVED, seed=0) as rec:
        rec.log({"round": 1, "test_accuracy": None, "test_loss": math.nan, "train_loss": math.inf})
        rec.write_summary({"final_test_loss": math.nan, "best_test_accuracy": None})
    code, out, _ = run_cli(capsys, "show", str(tmp_path))
    assert code == 0
    table = out[out.index("metrics:"):].splitlines()
    assert table[3].split() == ["1", "-", "nan", "inf"]
    assert "final_test_loss: nan" in out and "best_test_accuracy: None" in out


def test_show_and_plot_os_errors_are_one_line(capsys, tmp_path, monkeypatch, fake_config,
                                              fake_run):
    import errno

    out_dir = tmp_path / "r"
    run_cli(capsys, "run", "cfg.yaml", "--out", str(out_dir), "--set", "algorithm.rounds=3")
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "plot", str(out_dir), "--out", str(tmp_path / "file"))
    assert code == 2 and one_error_line(err).startswith(str(tmp_path / "file"))
    metrics = out_dir / "metrics.jsonl"
    real = Path.read_bytes

    def denied(self):
        if self == metrics:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    for command in ("show", "plot"):
        code, _, err = run_cli(capsys, command, str(out_dir))
        assert code == 2 and one_error_line(err) == f"{metrics}: Permission denied"


# ----------------------------------------------------------------------------- demo folders

def test_demo_never_deletes_what_it_did_not_write(capsys, tmp_path):
    from fedopt.simulations import demo

    out = tmp_path / "demo"
    run = out / "quickstart"
    with RunRecorder(run, RESOLVED, seed=0) as rec:       # an earlier demo's run folder
        rec.log({"round": 1})
    (out / "my-notes.txt").parent.mkdir(exist_ok=True)
    (out / "my-notes.txt").write_text("mine")
    names = [n for n, _, _ in demo._runs(1.0)]
    with pytest.raises(demo.DemoError, match=r"quickstart exists .*--replace"):
        demo.prepare_out(out, names, replace=False)
    (run / "data.csv").write_text("the user's")             # something the demo did not write
    (out / "comparison").mkdir()
    (out / "comparison" / "test_accuracy.png").write_bytes(b"png")
    with pytest.raises(demo.DemoError, match=r"data\.csv: not written by fedopt"):
        demo.prepare_out(out, names, replace=True)
    assert (run / "metrics.jsonl").is_file() and (out / "comparison" / "test_accuracy.png").exists()
    (run / "data.csv").unlink()
    demo.prepare_out(out, names, replace=True)
    assert sorted(os.listdir(out)) == ["my-notes.txt"]       # only the demo's folders went
    (tmp_path / "file").write_text("x")
    assert demo.main(["--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: --out: {tmp_path / 'file'} exists and is not a directory\n"
    assert (tmp_path / "file").read_text() == "x"


def test_unreadable_out_is_one_error(capsys, tmp_path, monkeypatch, fake_config, fake_run):
    import errno

    from fedopt import records

    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(records, "_checkpoint_files", denied)
    code, _, err = run_cli(capsys, "run", "cfg.yaml", "--out", str(tmp_path))
    assert code == 2 and one_error_line(err) == f"--out: {tmp_path}: Permission denied"
    assert fake_run == []


def test_help_states_each_default_once(capsys):
    from fedopt.simulations.cli import build_parser

    parser = build_parser()
    for command in ("run", "validate", "show", "plot"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(default: False)" not in text, command
        if command == "run":   # its --out help says the default in words, once
            out_help = text.split("--out DIR run directory", 1)[1].split(" --set")[0]
            assert out_help.count("default") == 1, out_help


def test_printed_hints_call_the_program_as_the_user_did(monkeypatch, tmp_path):
    import shutil

    from fedopt.simulations import cli

    venv_fedopt = tmp_path / ".venv/bin/fedopt"
    monkeypatch.setattr(cli.sys, "argv", [str(venv_fedopt)])
    monkeypatch.setattr(shutil, "which", lambda name: None)          # not on PATH
    assert cli.invoked_as() == str(venv_fedopt)
    monkeypatch.setattr(shutil, "which", lambda name: str(venv_fedopt))  # on PATH, the same file
    assert cli.invoked_as() == "fedopt"
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/fedopt")  # another install
    assert cli.invoked_as() == str(venv_fedopt)
    monkeypatch.setattr(cli.sys, "argv", [cli.__file__])             # python -m fedopt.simulations.cli
    assert cli.invoked_as().endswith(" -m simulations.cli")
