"""Ray's conventions without starting Ray: which address a run joins (RAY_ADDRESS), which token
Ray would send (its documented precedence), the runtime_env that ships fedopt's code, the
executor keys, and fault totals in summary.json. The cluster itself: test_ray_cli_cluster.py."""
from pathlib import Path

import pytest

from fedopt.config import load_config
from fedopt.server import ray_connect
from fedopt.server.ray_connect import RayConnectError, check_auth, target_address, token_source
from fedopt.server.ray_runtime import MAPPED, package_dir, runtime_env
from tests.server.ray_fixtures import make_config


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.ray/auth_token
    return monkeypatch


def test_ray_address_is_honoured_when_executor_address_is_unset(clean_env):
    assert target_address(None) == (None, "")
    assert target_address("auto") == ("auto", "")
    clean_env.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert target_address(None) == ("10.1.2.3:6379", "RAY_ADDRESS")
    assert target_address("auto") == ("10.1.2.3:6379", "RAY_ADDRESS")
    assert target_address("local") == (None, "")                 # explicitly private
    assert target_address("127.0.0.1:7000") == ("127.0.0.1:7000", "")   # the config wins


def test_token_precedence_follows_rays_documentation(clean_env, tmp_path):
    assert token_source()[0] is None
    default = tmp_path / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-default\n")
    assert token_source() == ("from-default", str(default))
    path = tmp_path / "tok"
    path.write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert token_source() == ("from-path", f"RAY_AUTH_TOKEN_PATH={path}")
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert token_source() == ("from-env", "RAY_AUTH_TOKEN")
    clean_env.delenv("RAY_AUTH_TOKEN")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    token, why = token_source()
    assert token is None and "cannot be read" in why


def test_auth_errors_are_one_line_naming_executor_address(clean_env, monkeypatch):
    seen = []

    def refuse(address, token, timeout_s=5.0):
        seen.append(token)
        return False

    monkeypatch.setattr(ray_connect, "probe_auth", refuse)
    with pytest.raises(RayConnectError) as e:
        check_auth("127.0.0.1:6379")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("executor.address: ")
    assert "requires token authentication" in msg and "RAY_AUTH_MODE=token" in msg
    clean_env.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(RayConnectError, match="no token to join"):
        check_auth("127.0.0.1:6379")                  # token mode, but no token anywhere
    clean_env.setenv("RAY_AUTH_TOKEN", "abc")
    with pytest.raises(RayConnectError, match="refused this process's token .from RAY_AUTH_TOKEN"):
        check_auth("127.0.0.1:6379")
    assert seen == [None, "abc"]                     # what Ray itself would have sent
    monkeypatch.setattr(ray_connect, "probe_auth", lambda *a, **k: None)   # inconclusive
    check_auth("127.0.0.1:6379")                     # leaves the decision to ray.init


def test_probe_without_a_server_is_inconclusive():
    pytest.importorskip("grpc")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ray_connect.probe_auth(f"127.0.0.1:{port}", None, timeout_s=1.0) is None


def test_ship_code_stages_the_installed_layout():
    root = package_dir()
    assert root.name == "fedopt" and (root / "__init__.py").is_file()
    for name in MAPPED:         # fedopt.server etc. are folders of the shipped package
        assert (root / name / "__init__.py").is_file()
    assert not list(root.rglob("__pycache__"))
    assert (root / "simulations" / "configs" / "quickstart.yaml").is_file()
    env = runtime_env({"ship_code": True, "runtime_env": {"env_vars": {"A": "1"},
                                                          "py_modules": ["/x/mine"]}})
    assert env == {"env_vars": {"A": "1"}, "py_modules": ["/x/mine", str(root)]}
    assert runtime_env({"ship_code": False, "runtime_env": None}) is None


def test_executor_keys_validate():
    cfg = load_config(make_config("ray", ship_code=True,
                                  runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}))
    assert cfg["executor"]["ship_code"] is True
    assert cfg["executor"]["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "1"}}
    with pytest.raises(ValueError, match="executor.ship_code"):
        load_config(make_config("ray", ship_code="yes"))
    with pytest.raises(ValueError, match="executor.ship_code"):
        load_config(make_config("local") | {"executor": {"name": "local", "ship_code": True}})


def test_fault_totals_reach_the_summary():
    """summary.json gets the executor's fault totals (a live executor's; none in-process)."""
    from fedopt.simulation import Simulation, summarize

    sim = Simulation(load_config(make_config("local") | {"algorithm": {
        "name": "fedavg", "rounds": 1, "clients_per_round": 4}}))
    metrics = sim.run()
    assert "faults" not in summarize(metrics, sim)
    totals = {"worker_deaths": 1, "timeouts": 2, "restarts": 1, "retried_shards": 3,
              "dropped_clients": 4}
    sim.executor.faults = lambda: dict(totals)     # what a Ray executor reports
    assert summarize(metrics, sim)["faults"] == totals
    sim.close()
