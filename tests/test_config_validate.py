"""``validate`` refuses what building a run refuses, with the same field, without building data.

Each case below is a run-time rejection: the resolved config of a valid base is changed
behind the validator's back and :class:`Simulation` must refuse it (so the case is real), then
``load_config`` must refuse the same change naming the same field.
"""
import copy

import numpy as np
import pytest
import torch

from fedopt.config import ConfigError, load_config

BASE = {
    "seed": 0,
    "data": {"name": "synthetic", "num_clients": 6, "max_samples": 60},
    "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2},
    "client": {"local_steps": 1, "batch_size": 4},
}


def _set(cfg, dotted, value):
    *head, last = dotted.split(".")
    node = cfg
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


# (base overrides, field changed after validation, its value, field named in both errors)
CASES = [
    ({}, "data.alpha", -1.0, "data.alpha"),
    ({}, "data.beta", -0.5, "data.beta"),
    ({}, "data.test_fraction", 1.0, "data.test_fraction"),
    ({"data": {"name": "synthetic", "num_clients": 6, "max_samples": 60}},
     "data.min_samples", 61, "data.max_samples"),
    ({}, "data.lognormal_sigma", -1.0, "data.lognormal_sigma"),
    ({"data": {"name": "digits", "num_clients": 10}}, "data.num_clients", 1798,
     "data.num_clients"),                      # digits has 1797 rows
    ({"data": {"name": "digits", "num_clients": 10, "partition": {"name": "shards"}}},
     "data.num_clients", 899, "data.num_clients"),   # 899 clients x 2 shards > 1797 rows
    ({"data": {"name": "digits", "num_clients": 10}},
     "data.partition", {"name": "dirichlet", "alpha": 0.0}, "data.partition.alpha"),
    ({"data": {"name": "digits", "num_clients": 10}},
     "data.partition", {"name": "power_law", "sigma": -1.0}, "data.partition.sigma"),
    ({}, "model", {"name": "cnn", "channels": [4], "kernel_size": 3, "hidden": 8}, "model"),
    ({"data": {"name": "digits", "num_clients": 10, "flatten": False}},
     "model", {"name": "cnn", "channels": [2, 2, 2, 2], "kernel_size": 3, "hidden": 4},
     "model.channels"),                        # 4 poolings need 16x16, digits are 8x8
    ({"algorithm": {"name": "fedbuff", "rounds": 1, "clients_per_round": 2, "buffer_size": 2}},
     "algorithm.buffer_size", 10, "algorithm.buffer_size"),   # FedBuff's default K = 10 > m = 2
    ({"algorithm": {"name": "fedavg_sync", "rounds": 1, "clients_per_round": 2}},
     "algorithm.drop_slowest", 2, "algorithm.drop_slowest"),
    ({"algorithm": {"name": "async_general", "rounds": 1, "clients_per_round": 2}},
     "algorithm.buffer_size", None, "algorithm.buffer_size"),  # neither buffer nor interval
    ({"algorithm": {"name": "fedbuff", "rounds": 1, "clients_per_round": 2, "buffer_size": 2}},
     "algorithm.participation", "expected", "algorithm.participation"),
    ({"algorithm": {"name": "fedfix", "rounds": 1, "clients_per_round": 2}},
     "clock", {"speed": {"name": "list", "values": [1.0, 2.0]}}, "clock.speed.values"),
    ({"algorithm": {"name": "fedfix", "rounds": 1, "clients_per_round": 2}},
     "clock", {"speed": {"name": "cohort", "clients": [7]}}, "clock.speed.clients"),
]


def _resolved(overrides):
    return load_config({**copy.deepcopy(BASE), **copy.deepcopy(overrides)})


def _with_clock(cfg, value):
    from fedopt.clock import validate_clock_config

    return validate_clock_config(value)   # the resolved form a run receives


@pytest.mark.parametrize("overrides, dotted, value, field", CASES,
                         ids=[f"{c[1]}={c[2]}" for c in CASES])
def test_validate_refuses_every_run_time_rejection_naming_the_same_field(overrides, dotted,
                                                                         value, field):
    from fedopt.simulation import Simulation

    resolved = _resolved(overrides)
    if dotted == "clock":
        resolved["clock"] = _with_clock(resolved, value)
    elif dotted == "model":
        resolved["model"] = value
    else:
        _set(resolved, dotted, value)
    with pytest.raises(ConfigError) as run_error:
        Simulation(resolved).close()
    assert field in str(run_error.value)

    raw = {**copy.deepcopy(BASE), **copy.deepcopy(overrides)}
    _set(raw, dotted, value)
    with pytest.raises(ConfigError) as validate_error:
        load_config(raw)
    message = str(validate_error.value)
    assert message.startswith(field), message


def test_missing_or_directory_npz_path_is_refused_by_validate(tmp_path):
    cfg = {**copy.deepcopy(BASE), "data": {"name": "npz", "path": str(tmp_path / "nope.npz")}}
    with pytest.raises(ConfigError, match=r"^data\.path: no such file"):
        load_config(cfg)
    cfg["data"]["path"] = str(tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.path: .* is a directory"):
        load_config(cfg)
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    cfg["data"]["path"] = str(tmp_path / "text.npz")
    with pytest.raises(ConfigError, match=r"^data\.path: .* not an \.npz"):
        load_config(cfg)


def test_npz_facts_come_from_headers_not_data(tmp_path):
    """A plain npz of 5 rows cannot feed 6 clients; a flat npz cannot feed a CNN; the
    federated layout's client count is max(client_train) + 1 = 4, so 5 per round is refused."""
    plain = _npz(tmp_path, x=np.zeros((5, 3), np.float32), y=np.zeros(5, np.int64))
    cfg = {**copy.deepcopy(BASE), "data": {"name": "npz", "path": plain, "num_clients": 6}}
    with pytest.raises(ConfigError, match=r"^data\.num_clients: cannot give 6 clients"):
        load_config(cfg)
    cfg["data"]["num_clients"] = 2
    cfg["model"] = {"name": "cnn", "channels": [2], "kernel_size": 3, "hidden": 4}
    with pytest.raises(ConfigError, match=r"^model"):
        load_config(cfg)
    fed = tmp_path / "fed.npz"
    np.savez(fed, x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             client_train=np.array([0, 1, 2, 3]), x_test=np.zeros((1, 3)),
             y_test=np.zeros(1, np.int64), client_test=np.array([0]))
    cfg = {**copy.deepcopy(BASE), "data": {"name": "npz", "path": str(fed)},
           "algorithm": {"rounds": 1, "clients_per_round": 5}}
    with pytest.raises(ConfigError, match=r"^algorithm\.clients_per_round: 5 exceeds "
                                          r"data\.num_clients \(4\)"):
        load_config(cfg)


def test_seed_must_fit_the_64_bit_rng(tmp_path):
    from fedopt.simulation import Simulation

    top = 2 ** 64 - 1                         # the largest unsigned 64-bit integer
    Simulation(load_config({**BASE, "seed": top})).close()   # accepted end to end
    resolved = load_config(BASE)
    resolved["seed"] = top + 1
    with pytest.raises(Exception):            # what a run did with it: torch overflow
        Simulation(resolved)
    for key in ("seed", "clock.seed"):
        raw = copy.deepcopy(BASE)
        _set(raw, key, top + 1)
        with pytest.raises(ConfigError, match=rf"^{key}: .*2\*\*64 - 1"):
            load_config(raw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_cuda_device_is_refused_by_validate():
    with pytest.raises(ConfigError, match=r"^executor\.device: 'cuda' requested but CUDA"):
        load_config({**BASE, "executor": {"device": "cuda"}})


def test_realtime_needs_an_asynchronous_algorithm():
    with pytest.raises(ConfigError, match=r"^algorithm\.name: real-time mode"):
        load_config({**BASE, "executor": {"name": "ray", "realtime": True}})


def test_validate_builds_no_data_even_for_100000_clients(monkeypatch):
    """Validation never calls a data builder (so 10^5 clients validate instantly) and still
    runs the algorithm's checks for N = 10^5 (a clock list of 3 speeds is refused)."""
    import fedopt.data.registry as registry

    def refuse(*a, **k):
        raise AssertionError("validate built the data")

    monkeypatch.setattr(registry, "_BUILDERS", {k: refuse for k in registry._BUILDERS})
    cfg = {**copy.deepcopy(BASE), "data": {"name": "synthetic", "num_clients": 100_000},
           "algorithm": {"name": "fedbuff", "rounds": 1, "clients_per_round": 1000}}
    assert load_config(cfg)["algorithm"]["buffer_size"] == 10
    cfg["clock"] = {"speed": {"name": "list", "values": [1.0, 2.0, 3.0]}}
    with pytest.raises(ConfigError, match=r"^clock\.speed\.values: has 3 entries, the data set "
                                          r"has 100000 clients"):
        load_config(cfg)
