"""Values as users write them: YAML 1.2 numbers, repeated keys, numpy/torch scalars, lr = 0,
list-valued keys, and error paths that name the field."""
import numpy as np
import pytest
import torch

from fedopt.config import ConfigError, load_config, load_yaml

BASE = {"data": {"name": "synthetic", "num_clients": 10},
        "algorithm": {"name": "fedavg", "rounds": 3, "clients_per_round": 2},
        "client": {"local_steps": 1, "optimizer": {"name": "sgd", "lr": 0.01}}}

FILE = """\
data: {name: synthetic, num_clients: 10}
algorithm: {name: fedavg, rounds: 3, clients_per_round: 2}
client:
  local_steps: 1
  optimizer: {name: adam, lr: 1e-3, eps: 1E-8, weight_decay: .5e-2}
"""


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E5", 100000.0), (".5e-2", 0.005), ("-2.5E+3", -2500.0), ("3.", 3.0),
    ("+1e3", 1000.0), (".inf", float("inf")), ("-.inf", float("-inf")),
    ("10", 10), ("-7", -7), ("0x1F", 31),                  # integers stay integers
    ("1e", "1e"), ("1.2.3", "1.2.3"), ("e5", "e5"), ("2024-01-01x", "2024-01-01x"),
])
def test_yaml_1_2_floats(text, value):
    got = load_yaml(text)
    assert got == value and type(got) is type(value)


def test_exponent_floats_load_from_files_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FILE)
    cfg = load_config(path)
    assert cfg["client"]["optimizer"] == {"name": "adam", "lr": 0.001, "eps": 1e-8,
                                          "weight_decay": 0.005}
    cfg = load_config(path, ["client.optimizer.lr=2e-4", "algorithm.server_optimizer.lr=5E-1"])
    assert cfg["client"]["optimizer"]["lr"] == 2e-4
    assert cfg["algorithm"]["server_optimizer"]["lr"] == 0.5


def test_duplicate_keys_are_refused_naming_the_key_and_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(FILE + "  optimizer: {name: sgd}\n")                 # client.optimizer twice
    with pytest.raises(ConfigError, match=r"^client\.optimizer: duplicate key .*lines 5 and 6"):
        load_config(path)
    path.write_text("seed: 1\n" + FILE + "seed: 2\n")
    with pytest.raises(ConfigError, match=r"^seed: duplicate key .*lines 1 and 7"):
        load_config(path)
    path.write_text(FILE.replace("lr: 1e-3,", "lr: 1e-3, lr: 0.1,"))
    with pytest.raises(ConfigError, match=r"^client\.optimizer\.lr: duplicate key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^data\.partition\.name: duplicate key"):
        load_config(BASE, ["data.partition={name: iid, name: shards}"])


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {local_steps: 1, batch_size: 4}\n".replace("base", "x-base") +
                    FILE.replace("client:\n  local_steps: 1\n", "client:\n  <<: *b\n"
                                 "  batch_size: 8\n"))
    with pytest.raises(ConfigError, match=r"^x-base: unknown key"):   # merged fine, then refused
        load_config(path)


@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.array(0.25),
                                   torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64)])
def test_numpy_and_torch_scalars_are_python_numbers(value):
    cfg = {**BASE, "seed": np.int64(3),
           "algorithm": {**BASE["algorithm"], "rounds": np.int32(4), "clients_per_round": 2},
           "client": {"local_steps": torch.tensor(2), "optimizer": {"name": "sgd", "lr": value}}}
    out = load_config(cfg)
    assert out["client"]["optimizer"]["lr"] == 0.25 and type(out["client"]["optimizer"]["lr"]) is float
    assert out["seed"] == 3 and type(out["seed"]) is int
    assert out["algorithm"]["rounds"] == 4 and type(out["algorithm"]["rounds"]) is int
    assert out["client"]["local_steps"] == 2 and type(out["client"]["local_steps"]) is int
    cfg["data"] = {"name": "synthetic", "num_clients": 10, "iid": np.bool_(True)}
    assert load_config(cfg)["data"]["iid"] is True


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adabelief", "lion", "mfac"])
def test_client_lr_zero_is_refused(name):
    """lr = 0 never moves the model: every client optimizer refuses it in a config."""
    with pytest.raises(ConfigError, match=r"^client\.optimizer\.lr: must be > 0"):
        load_config(BASE, [f"client.optimizer.name={name}", "client.optimizer.lr=0"])
    with pytest.raises(ConfigError, match=r"^algorithm\.server_optimizer\.lr: must be > 0"):
        load_config(BASE, ["algorithm.server_optimizer.lr=0"])


@pytest.mark.parametrize("override, field", [
    ("client.optimizer.betas=[0.9]", "client.optimizer.betas"),
    ("client.optimizer.betas=[0.9, zero]", r"client.optimizer.betas\[1\]"),
    ("client.optimizer.betas=[0.9, 1.0]", r"client.optimizer.betas\[1\]"),
    ("client.optimizer.momentom=0.9", "client.optimizer.momentom"),
    ("client.optimizer.name=adamq", "client.optimizer.name"),
    ("model={name: mlp, hidden: [10, 0]}", r"model.hidden\[1\]"),
    ("model={name: mlp, hidden: [10, x]}", r"model.hidden\[1\]"),
    ("model={name: cnn, channels: []}", "model.channels"),
    ("clock={speed: {name: list, values: [1, a]}}", "clock.speed.values"),
    ("clock={speed: {name: cohort, clients: [1.5]}}", "clock.speed.clients"),
])
def test_list_valued_keys_are_checked_for_length_and_elements(override, field):
    overrides = [override]
    if override.startswith("client.optimizer.betas"):
        overrides = ["client.optimizer.name=adam", override]
    if override.startswith("clock"):
        overrides = ["algorithm.name=fedfix", override]
    with pytest.raises(ConfigError, match=rf"^{field}"):
        load_config(BASE, overrides)


def test_unknown_top_level_key_is_named_without_a_dot():
    with pytest.raises(ConfigError, match=r"^foo: unknown key"):
        load_config({**BASE, "foo": 1})
    with pytest.raises(ConfigError, match=r"^foo: unknown key"):
        load_config(BASE, ["foo=1"])
