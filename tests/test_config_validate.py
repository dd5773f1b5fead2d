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
    # a model too large for memory (1e16 parameters): sized on the meta device by both
    ({}, "model", {"name": "mlp", "hidden": [100_000_000, 100_000_000]}, "model.name"),
    # a billion Synthetic clients: refused before anything is allocated for them
    ({}, "data.num_clients", 1_000_000_000, "data.num_clients"),
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


# ----------------------------------------------------------------------------- npz contents

def _federated_arrays(**changes):
    arrays = dict(x_train=np.zeros((6, 3), np.float32), y_train=np.array([0, 1, 0, 1, 0, 1]),
                  client_train=np.array([0, 0, 1, 1, 2, 2]), x_test=np.zeros((3, 3), np.float32),
                  y_test=np.array([0, 1, 0]), client_test=np.array([0, 1, 2]))
    return {**arrays, **changes}


def _plain_arrays(**changes):
    return {"x": np.zeros((10, 3), np.float32), "y": np.arange(10) % 2, **changes}


_NAN_ROW = np.array([[0, 0, np.nan], [0, 0, 0], [0, 0, 0]], np.float32)
# (arrays of a file that run refuses, the field both errors name)
NPZ_CASES = [
    (_federated_arrays(y_train=np.array([0, 1, 0, 1, 0, 10**9])), "y_train"),  # 1e9 classes
    (_federated_arrays(y_train=np.array([0, 1, 0, 1, 0, -1])), "y_train"),
    (_federated_arrays(y_test=np.array([0.5, 1, 0])), "y_test"),
    (_federated_arrays(x_test=_NAN_ROW), "x_test"),
    (_federated_arrays(x_train=np.full((6, 3), np.inf, np.float32)), "x_train"),
    (_federated_arrays(client_test=np.array([0, 1, 5])), "client_test"),
    (_federated_arrays(client_train=np.array([0, 0, 1, 1, 3, 3])), "client_train"),  # no 2
    (_federated_arrays(x_train=np.zeros((6, 3), np.complex64)), "x_train"),
    (_federated_arrays(x_train=np.array([[object()] * 3] * 6, dtype=object)), "x_train"),
    (_federated_arrays(x_test=np.zeros((3, 4), np.float32)), "x_test"),
    (_federated_arrays(y_test=np.array([0, 1])), "y_test"),
    (_plain_arrays(y=np.array([0] * 9 + [-1])), "y"),
    (_plain_arrays(x=np.full((10, 3), np.nan)), "x"),
    (_plain_arrays(y=np.array([0] * 9 + [10**9])), "y"),
    ({"x_train": np.zeros((10, 3)), "y_train": np.zeros(10, np.int64),
      "x_test": np.zeros((2, 5)), "y_test": np.zeros(2, np.int64)}, "x_test"),
]


@pytest.mark.parametrize("arrays, field", NPZ_CASES,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(NPZ_CASES)])
def test_validate_checks_npz_contents_as_run_does(tmp_path, arrays, field):
    """validate reads the file and checks it with the builder's own validators: every file a
    run refuses is refused by validate, naming the same array."""
    from fedopt.simulation import Simulation

    good = tmp_path / "good.npz"
    plain = "client_train" not in arrays
    np.savez(good, **(_plain_arrays() if plain else _federated_arrays()))
    data = {"name": "npz", "path": str(good), **({"num_clients": 2} if plain else {})}
    resolved = load_config({**copy.deepcopy(BASE), "data": data})
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    resolved["data"]["path"] = str(bad)
    with pytest.raises(ConfigError) as run_error:
        Simulation(resolved).close()
    assert str(run_error.value).startswith(field), run_error.value

    with pytest.raises(ConfigError) as validate_error:
        load_config({**copy.deepcopy(BASE), "data": {**data, "path": str(bad)}})
    assert str(validate_error.value) == str(run_error.value)


def test_npz_facts_are_the_data_sets(tmp_path):
    """The number of classes validate checks the model with is the data's (max label + 1)."""
    from fedopt.data.npz import check_npz

    path = _npz(tmp_path, **_federated_arrays(y_train=np.array([0, 1, 0, 1, 0, 6])))
    facts = check_npz(path)
    assert (facts.num_clients, facts.feature_shape, facts.num_classes) == (3, (3,), 7)
    assert facts.federated


# ----------------------------------------------------------------------------- the clock

ASYNC = {"rounds": 2, "clients_per_round": 2}
# (algorithm, clock, algorithm keys changed after validation, the field both refuse)
CLOCK_CASES = [
    ({"name": "async_fedavg", **ASYNC}, {"timeout": 0.5}, {}, "clock.timeout"),
    ({"name": "fedfix", **ASYNC}, {"timeout": 0.5}, {}, "clock.timeout"),
    ({"name": "fedbuff", **ASYNC, "buffer_size": 2},
     {"compute": {"name": "exponential", "shift": 2.0}, "timeout": 1.5}, {}, "clock.timeout"),
    ({"name": "async_fedavg", **ASYNC},
     {"compute": {"name": "pareto", "scale": 2.0}, "speed": {"name": "linear", "spread": 50},
      "timeout": 0.9}, {}, "clock.timeout"),      # fastest client: 0.5 x 2 = 1
    ({"name": "fedfix", **ASYNC}, {"compute": "lognormal", "timeout": 3.0,
                                   "communication": {"bandwidth": 1000.0}},
     {}, "clock.timeout"),                         # 2 x 2440 model bytes / 1000 = 4.88
    ({"name": "fedavg_sync", **ASYNC}, {}, {"deadline": 0.5}, "algorithm.deadline"),
    ({"name": "async_general", **ASYNC, "buffer_size": None, "interval": 2.0,
      "cancel_stragglers": True}, {"compute": {"name": "constant", "value": 2.0}},
     {"interval": 1.5}, "algorithm.interval"),
]


@pytest.mark.parametrize("algorithm, clock, changed, field", CLOCK_CASES,
                         ids=[f"{c[0]['name']}-{c[3]}" for c in CLOCK_CASES])
def test_a_limit_no_job_can_meet_is_refused(algorithm, clock, changed, field):
    """A clock.timeout (or, with cancelled stragglers, a round deadline/interval) below the
    shortest possible job time: a run either stops with a clock error or only makes empty
    rounds (exit 0, no client update); validate refuses it naming the field and that time."""
    from fedopt.clock import validate_clock_config
    from fedopt.simulation import Simulation

    limits = {"timeout": clock.get("timeout")}
    lenient = {**clock, "timeout": None}
    raw = {**copy.deepcopy(BASE), "algorithm": {**algorithm}, "clock": lenient}
    resolved = load_config(raw)
    resolved["clock"] = validate_clock_config({**lenient, **limits})
    resolved["algorithm"].update(changed)
    sim = Simulation(resolved)
    try:
        sim.run()
        assert sim.client_updates == 0        # every round empty: a run that learns nothing
    except ConfigError as e:
        assert str(e).startswith(field)
    finally:
        sim.close()

    raw = {**copy.deepcopy(BASE), "algorithm": {**algorithm, **changed}, "clock": clock}
    with pytest.raises(ConfigError) as error:
        load_config(raw)
    message = str(error.value)
    assert message.startswith(field) and "shortest possible job time is" in message


def test_a_limit_some_job_can_meet_is_accepted():
    """At the shortest job time exactly a job still returns (an arrival at the limit counts);
    FedBuff's deadline without cancelled stragglers only adds steps; in real time without
    seconds_per_unit jobs take their real time, so the clock's laws do not bound it."""
    cfg = {**copy.deepcopy(BASE), "algorithm": {"name": "async_fedavg", **ASYNC},
           "clock": {"timeout": 1.0}}
    assert load_config(cfg)["clock"]["timeout"] == 1.0
    cfg = {**copy.deepcopy(BASE), "algorithm": {"name": "fedavg_sync", **ASYNC, "deadline": 1.0}}
    load_config(cfg)
    cfg["algorithm"] = {"name": "fedbuff", **ASYNC, "buffer_size": 2, "deadline": 0.1}
    load_config(cfg)
    cfg = {**copy.deepcopy(BASE), "algorithm": {"name": "async_fedavg", **ASYNC},
           "clock": {"timeout": 0.5}, "executor": {"name": "ray", "realtime": True}}
    load_config(cfg)
    cfg["executor"]["seconds_per_unit"] = 0.01
    with pytest.raises(ConfigError, match=r"^clock\.timeout: 0\.5 is below"):
        load_config(cfg)


# ----------------------------------------------------------------------------- memory bounds

def test_synthetic_is_bounded_by_free_memory_at_validate_and_at_build(monkeypatch):
    """The lower bound (min_samples rows per client) refuses a billion clients before a size
    is drawn; the drawn sizes (the builder's stream) refuse what the lower bound let through.
    Same error from validate and from the builder."""
    import fedopt.data.synthetic as synthetic
    from fedopt.data import build_dataset

    data = {"name": "synthetic", "num_clients": 20, "min_samples": 10, "max_samples": None,
            "lognormal_sigma": 3.0}
    keys = synthetic.check_synthetic(**{k: v for k, v in data.items() if k != "name"})
    rows = float(synthetic.check_synthetic_memory(0, keys).sum())
    assert rows > 20 * 10 * 2
    between = (synthetic.synthetic_nbytes(20, 60, 10, False, 20 * 10)
               + synthetic.synthetic_nbytes(20, 60, 10, False, rows)) / 2
    monkeypatch.setattr(synthetic, "available_memory_bytes", lambda device: int(between))
    with pytest.raises(ConfigError) as build_error:
        build_dataset(data, seed=0)
    with pytest.raises(ConfigError) as validate_error:
        load_config({**copy.deepcopy(BASE), "data": data})
    assert str(validate_error.value) == str(build_error.value)
    assert str(build_error.value).startswith(f"data.num_clients: 20 clients draw {rows:.4g} rows")


def test_synthetic_build_is_unchanged_by_the_bound():
    """The builder takes its sizes from the bound's draw: the same stream as before."""
    import fedopt.data.synthetic as synthetic
    from fedopt.data.checks import seed_streams

    data, _ = synthetic.synthetic_with_model(3, num_clients=7, max_samples=80)
    sizes = synthetic.draw_sizes(seed_streams(3, 4)[1], 7, 50, 80)
    assert data.counts.sum().item() + data.x_test.shape[0] == sizes.sum()


# ----------------------------------------------------------------------------- Ray keys

@pytest.mark.parametrize("executor, field, other", [
    ({"seconds_per_unit": 0.05}, "executor.seconds_per_unit", "executor.realtime"),
    ({"on_timeout": "retry"}, "executor.on_timeout", "executor.round_timeout_s"),
])
def test_a_ray_key_that_acts_only_with_another_is_refused_without_it(executor, field, other):
    cfg = {**copy.deepcopy(BASE), "executor": {"name": "ray", **executor}}
    with pytest.raises(ConfigError) as error:
        load_config(cfg)
    assert str(error.value).startswith(field + ":") and other in str(error.value)
    cfg["algorithm"] = {"name": "async_fedavg", **ASYNC}      # real time runs these
    assert load_config({**cfg, "executor": {"name": "ray", "realtime": True,
                                            "round_timeout_s": 5.0, **executor}})


# ----------------------------------------------------------------------------- evaluation

def test_an_empty_test_set_is_not_measured_rather_than_nan():
    """test_fraction 0: no test rows, so the test loss and accuracy are None (not measured),
    not NaN (which reads as a diverged run); the train metrics are measured."""
    from fedopt.engine.evaluate import evaluate
    from fedopt.simulation import Simulation

    cfg = load_config({**copy.deepcopy(BASE), "data": {**BASE["data"], "test_fraction": 0.0}})
    sim = Simulation(cfg)
    try:
        row = sim.run()[-1]
        x = sim.data.x[:0]
        assert evaluate(sim.fmodel, sim.state.params, x, sim.data.y[:0]) == \
            {"loss": None, "accuracy": None}
    finally:
        sim.close()
    assert row["test_loss"] is None and row["test_accuracy"] is None
    assert isinstance(row["train_loss"], float) and np.isfinite(row["train_loss"])


def test_npz_regression_targets_validate_as_they_build(tmp_path):
    """Plain layouts are checked by the builder's own code: float targets (regression) pass
    with iid, and a class-based partition is refused by both, naming data.partition."""
    from fedopt.data import build_dataset

    path = _npz(tmp_path, x=np.zeros((10, 3), np.float32), y=np.linspace(0, 1, 10))
    data = {"name": "npz", "path": path, "num_clients": 2}
    regression = {**copy.deepcopy(BASE), "data": data}
    regression["client"]["loss"] = "mse"        # float targets: a loss confirms regression
    assert load_config(regression)["data"]["path"] == path
    data["partition"] = {"name": "dirichlet", "alpha": 0.5}
    with pytest.raises(ConfigError) as build_error:
        build_dataset(data, seed=0)
    with pytest.raises(ConfigError) as validate_error:
        load_config({**copy.deepcopy(BASE), "data": data})
    assert str(validate_error.value) == str(build_error.value)
    assert str(build_error.value).startswith("data.partition")


def test_regression_data_too_large_for_memory_is_refused_by_validate_and_the_builder():
    from fedopt.config import load_config
    from fedopt.data.regression import build_regression

    cfg = {"data": {"name": "regression", "num_clients": 10**6, "samples_per_client": 10**6},
           "model": {"name": "logreg"}, "client": {"local_steps": 1, "loss": "mse"},
           "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 1}}
    with pytest.raises(ConfigError, match=r"^data\.num_clients: .* more than the .* free memory"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"^data\.num_clients: "):   # 10^12 rows: ~10^13 bytes
        build_regression(seed=0, num_clients=10**6, samples_per_client=10**6)
