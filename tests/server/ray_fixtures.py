"""Shared pieces of the Ray tests: one Ray instance for the test session, small configs,
comparisons.

Import the fixture into a test module with ``from tests.server.ray_fixtures import ray_session``.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

#: logical CPUs of a test worker: the workers of several executors fit the 2-CPU session
TEST_CPUS_PER_WORKER = 0.25

BASE = {
    "seed": 7,
    "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 24},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg", "rounds": 4, "clients_per_round": 8},
    "client": {"local_steps": 5, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
    "executor": {"name": "local", "dtype": "float64", "chunk_size": 3},
    "checkpoint_every": 1,
}

#: metrics that measure time, not math
TIME_KEYS = {"wall_time_s", "train_time_s", "client_updates_per_s"}


def make_config(executor: str = "local", num_workers: int = 2, algorithm: dict | None = None,
                **executor_opts) -> dict:
    cfg = copy.deepcopy(BASE)
    if algorithm:
        cfg["algorithm"].update(algorithm)
    cfg["executor"]["name"] = executor
    if executor == "ray":
        cfg["executor"].update({"num_workers": num_workers, "num_threads": 1,
                                "num_cpus_per_worker": TEST_CPUS_PER_WORKER, **executor_opts})
    return cfg


#: the address of the shared test instance while it runs (None: not started, or replaced by a
#: module that runs its own cluster)
_SHARED: dict[str, str | None] = {"address": None}


def _is_shared(ray) -> bool:
    return (ray.is_initialized() and _SHARED["address"] is not None
            and ray.get_runtime_context().gcs_address == _SHARED["address"])


def _all_cpus_free(ray, wait_s: float = 10.0) -> bool:
    """Whether every CPU of the instance is free again (actors release theirs asynchronously)."""
    end = time.monotonic() + wait_s
    while True:
        if ray.available_resources().get("CPU", 0.0) >= ray.cluster_resources().get("CPU", 0.0):
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_session():
    """The test session's one local Ray instance: started by the first module that needs it
    (~5-10 s), kept for the next ones, shut down at the end of the session (tests/conftest.py).
    A module that leaves actors holding CPUs behind gets a fresh instance after it, so every
    module starts with all CPUs free; a module that runs its own cluster shuts this one down
    and the next user starts it again."""
    ray = pytest.importorskip("ray")
    if not _is_shared(ray):
        if ray.is_initialized():
            ray.shutdown()
        # address="local": never join another cluster running on this (shared) machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        _SHARED["address"] = ray.get_runtime_context().gcs_address
    yield ray
    if _is_shared(ray) and not _all_cpus_free(ray):
        ray.shutdown()
        _SHARED["address"] = None


@pytest.fixture(scope="module")
def no_ray_in_process():
    """For modules that start Ray clusters of their own in other processes: stop this process's
    instance first, so that nothing can attach to it by accident."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    yield


def assert_metrics_close(a: list[dict], b: list[dict], rtol: float = 1e-9) -> None:
    """Same rounds and metrics up to float summation order (time columns ignored)."""
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b):
        # a Ray run's rows also count worker faults (faults_*); the in-process run has none
        keys_a = {k for k in ra if not k.startswith("faults_")}
        assert keys_a == {k for k in rb if not k.startswith("faults_")}
        for k in keys_a:
            if k in TIME_KEYS:
                continue
            if isinstance(ra[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=rtol, abs=1e-12), (ra["round"], k)
            else:
                assert ra[k] == rb[k], (ra["round"], k)


def assert_params_close(a: dict, b: dict, atol: float = 1e-10) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


def assert_output_close(ref, got, atol: float = 1e-10, keep_local: bool = False,
                        same_clients: bool = True) -> None:
    """Two RoundOutputs agree (delta_sum, sums, counts; per-client step counts when both ran
    the same clients; stacked locals and local losses when asked)."""
    assert_params_close(ref.delta_sum, got.delta_sum, atol)
    assert got.weight_sum == pytest.approx(ref.weight_sum, rel=1e-12)
    assert got.loss_sum == pytest.approx(ref.loss_sum, rel=1e-9)
    assert (got.samples, got.updates) == (ref.samples, ref.updates)
    if same_clients:
        assert got.steps.tolist() == ref.steps.tolist()
    if keep_local:
        assert_params_close(ref.local_params, got.local_params, atol)
        np.testing.assert_allclose(got.local_loss, ref.local_loss, rtol=1e-9)
