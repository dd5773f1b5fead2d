"""The client keys: validate lists them with defaults and refuses bad combinations naming the
field; runs carry batch_size_mean/max; a resumed run reproduces the uninterrupted one."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import fedopt
from fedopt.config import load_config, validate
from fedopt.schema import ConfigError
from fedopt.simulation import Simulation

BASE = {"seed": 2, "data": {"name": "synthetic", "num_clients": 6, "min_samples": 20, "max_samples": 30},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "rounds": 4, "clients_per_round": 4},
        "client": {"local_epochs": 1, "batch_size": 3,
                   "optimizer": {"name": "adagrad", "lr": 0.05}}}


def cfg(**client):
    return {**BASE, "client": {**BASE["client"], **client}}


def test_validate_fills_the_defaults():
    c = validate(cfg())["client"]
    assert c["batch_size_test"] is None and c["lr_batch_scaling"] == "none"
    assert c["sso"] is None and c["curriculum"] is None
    c = validate(cfg(batch_size_test={"name": "inner_product"}, sso={},
                     curriculum={"order": "anti"}))["client"]
    assert c["batch_size_test"] == {"name": "inner_product", "eta": 0.1, "nu": None,
                                    "max_batch_size": None, "blockwise": False,
                                    "test_rows": 256}
    assert c["sso"] == {"inner_steps": 1, "eta": 1.0}
    assert c["curriculum"]["pacing"] == "linear" and c["curriculum"]["score"] == "global"


@pytest.mark.parametrize("client, field", [
    ({"lr_batch_scaling": "sqrt"}, "client.lr_batch_scaling"),
    ({"lr_batch_scaling": "cubic"}, "client.lr_batch_scaling"),
    ({"lr_batch_scaling": {"rule": "cubic"}}, "client.lr_batch_scaling.rule"),
    ({"lr_batch_scaling": {"max_lr": 1.0}}, "client.lr_batch_scaling"),
    ({"lr_batch_scaling": {"rule": "sqrt", "max_lr": 0}, "batch_size_test": {}},
     "client.lr_batch_scaling.max_lr"),
    ({"lr_batch_scaling": {"rule": "sqrt", "max_lr": 1e-4}, "batch_size_test": {}},
     "client.lr_batch_scaling.max_lr"),
    ({"lr_batch_scaling": {"rule": "none", "max_lr": 1.0}, "batch_size_test": {}},
     "client.lr_batch_scaling.max_lr"),
    ({"batch_size_test": {"name": "norm"}, "batch_size": 1}, "client.batch_size_test"),
    ({"batch_size_test": {"max_batch_size": 2}}, "client.batch_size_test.max_batch_size"),
    ({"batch_size_test": {"eta": 0}}, "client.batch_size_test.eta"),
    ({"batch_size_test": {"test_rows": 1}}, "client.batch_size_test.test_rows"),
    ({"sso": {"inner_steps": 0}}, "client.sso.inner_steps"),
    ({"curriculum": {"order": "sideways"}}, "client.curriculum.order"),
    ({"curriculum": {"b": 2.0}}, "client.curriculum.b"),
])
def test_bad_values_name_the_field(client, field):
    with pytest.raises(ConfigError) as e:
        validate(cfg(**client))
    assert str(e.value).startswith(field)


def test_lr_batch_scaling_takes_the_short_and_the_long_form():
    from fedopt.local.config import from_client

    short = validate(cfg(lr_batch_scaling="sqrt", batch_size_test={}))["client"]
    assert short["lr_batch_scaling"] == "sqrt"
    t = from_client(short)
    assert (t.lr_scaling, t.lr_max) == ("sqrt", None)
    long = validate(cfg(lr_batch_scaling={"rule": "linear", "max_lr": 0.2},
                        batch_size_test={}))["client"]
    t = from_client(long)
    assert (t.lr_scaling, t.lr_max) == ("linear", 0.2)
    assert from_client(validate(cfg(lr_batch_scaling={"max_lr": 0.2}, batch_size_test={}))[
        "client"]).lr_scaling == "sqrt"                 # the long form's default rule


def test_algorithms_with_other_oracles_are_refused_at_validate_and_run():
    bad = {**cfg(sso={"inner_steps": 2}),
           "algorithm": {"name": "fedspeed", "rounds": 2, "clients_per_round": 4}}
    with pytest.raises(ConfigError, match="^client.sso"):
        validate(bad)
    with pytest.raises(ConfigError, match="^client.sso"):
        Simulation(load_config(bad))


def test_cli_validate_prints_the_keys():
    out = subprocess.run([sys.executable, "-m", "fedopt.simulations.cli", "validate",
                          "simulations/configs/quickstart.yaml"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    for key in ("batch_size_test:", "lr_batch_scaling: none", "sso:", "curriculum:"):
        assert key in out.stdout


def test_rows_carry_batch_sizes_and_resume_reproduces_the_run():
    c = cfg(batch_size_test={"name": "norm", "eta": 0.2, "max_batch_size": 12},
            lr_batch_scaling="sqrt", curriculum={"order": "curriculum", "min_prefix": 4})
    full = Simulation(load_config(c))
    rows = full.run()
    assert all(1 <= r["batch_size_mean"] <= r["batch_size_max"] <= 12 for r in rows)
    assert rows[-1]["batch_size_max"] > 3
    half = Simulation(load_config({**c, "algorithm": {**c["algorithm"], "rounds": 2}}))
    half.run()
    ckpt = half.checkpoint()
    resumed = Simulation(load_config(c))
    resumed.restore(ckpt)
    more = resumed.run()
    for k, v in full.state.params.items():
        assert torch.equal(v, resumed.state.params[k])
    assert [r["batch_size_mean"] for r in rows[2:]] == [r["batch_size_mean"] for r in more]


def test_plain_runs_have_no_batch_size_columns():
    rows = fedopt.run(cfg(), progress=False).metrics
    assert "batch_size_mean" not in rows[-1]
    np.testing.assert_array_less(0, rows[-1]["samples"])


def test_sso_rows_count_queries_and_inner_passes():
    c = {**cfg(sso={"inner_steps": 4}), "client": {**cfg()["client"], "local_epochs": None,
                                                   "local_steps": 3, "sso": {"inner_steps": 4}}}
    rows = fedopt.run(c, progress=False).metrics
    assert all(r["local_steps"] == 4 * 3 for r in rows)          # 4 clients x 3 outer steps
    assert all(r["sso_inner_steps"] == 4 * r["local_steps"] for r in rows)


@pytest.mark.parametrize("key, value", [("batch_size_test", {"name": "norm"}),
                                        ("sso", {"inner_steps": 2}),
                                        ("curriculum", {"order": "anti"})])
def test_decentralized_algorithms_refuse_the_keys_they_would_ignore(key, value):
    """dsgd's nodes take their own gradient steps: the keys used to be accepted and ignored
    (rows with local_steps 0)."""
    bad = {**cfg(**{key: value}), "topology": {"name": "ring"},
           "algorithm": {"name": "dsgd", "rounds": 2, "clients_per_round": 6,
                         "time_budget": 5.0}}
    with pytest.raises(ConfigError, match=f"^client.{key}: "):
        validate(bad)
    with pytest.raises(ConfigError, match=f"^client.{key}: "):
        Simulation(load_config(bad))


@pytest.mark.parametrize("key, value", [("sso", {"inner_steps": 2}),
                                        ("curriculum", {"order": "anti"})])
def test_gradient_coding_refuses_the_keys(key, value):
    """Its clients' one lr-1 SGD step is read as a minibatch gradient: SSO or a curriculum's
    easiest-rows prefix used to be accepted and silently change what it estimates."""
    bad = {**cfg(**{key: value}), "algorithm": {"name": "gradient_coding", "code": "cyclic",
                                                "num_workers": 3, "stragglers": 1, "rounds": 2}}
    bad["client"] = {**bad["client"], "local_epochs": None, "local_steps": 1}
    with pytest.raises(ConfigError, match=f"^client.{key}: .*gradient_coding"):
        validate(bad)
    with pytest.raises(ConfigError, match=f"^client.{key}: .*gradient_coding"):
        Simulation(load_config(bad))
