"""Connecting to Ray and planning resources, without starting Ray: unreachable addresses fail
fast with one error naming executor.address; GPU requests fall back to CPU cleanly."""
import socket
import time

import pytest

import fedopt
from fedopt.server.ray_connect import _host_port, check_reachable, connect_ray
from fedopt.server.ray_pool import gpu_plan
from tests.server.ray_fixtures import make_config


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nobody listens once the socket is closed


def test_address_forms_are_parsed():
    assert _host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert _host_port("ray://head.example:10001") == ("head.example", 10001)
    assert _host_port("auto") is None and _host_port("localhost") is None


@pytest.mark.parametrize("form", ["127.0.0.1:{p}", "ray://127.0.0.1:{p}"])
def test_unreachable_address_is_one_clear_error(form):
    address = form.format(p=_closed_port())
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"executor\.address: cannot reach"):
        check_reachable(address, timeout_s=2.0)
    assert time.perf_counter() - t < 15.0     # bounded by our timeout, not the OS's minutes


def test_run_with_an_unreachable_cluster_names_executor_address():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():     # the suite's shared instance: the next module restarts it
        ray.shutdown()
    cfg = make_config("ray", address=f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ConnectionError, match=r"executor\.address"):
        fedopt.run(cfg, progress=False)
    assert not ray.is_initialized()
    with pytest.raises(ConnectionError, match=r"executor\.address"):
        connect_ray(f"ray://127.0.0.1:{_closed_port()}")


def test_gpu_plan_falls_back_to_cpu():
    assert gpu_plan("cpu", 0.25, cluster_gpus=4) == ("cuda", 0.25, None)
    dev, gpus, note = gpu_plan("cuda", 0.25, cluster_gpus=0)
    assert (dev, gpus) == ("cpu", 0.0) and "no GPU" in note
    dev, gpus, note = gpu_plan("cuda", 0.0, cluster_gpus=2)
    assert (dev, gpus) == ("cpu", 0.0) and "num_gpus_per_worker" in note
    assert gpu_plan("cpu", 0.0, cluster_gpus=0) == ("cpu", 0.0, None)


@pytest.mark.slow
def test_a_run_starts_and_stops_its_own_local_ray():
    """executor.address null and no Ray open: the run starts Ray once and shuts it down."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    from tests.server.ray_fixtures import assert_metrics_close

    local = fedopt.run(make_config("local"), progress=False)
    res = fedopt.run(make_config("ray"), progress=False)
    assert not ray.is_initialized()
    assert_metrics_close(local.metrics, res.metrics)
