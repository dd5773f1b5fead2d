"""The executor contract (fedopt.engine.contract): the in-process executor implements it, the
checks name what is missing, and a shared start is one synchronous round."""
import numpy as np
import pytest
import torch

from fedopt.engine.contract import (Executor, LiveExecutor, SharedStart, check_executor)
from tests.engine.test_run_jobs import simulation


def test_in_process_executor_implements_the_contract():
    sim = simulation()
    ex = sim.executor
    assert isinstance(ex, Executor) and not isinstance(ex, LiveExecutor)
    check_executor(ex)
    with pytest.raises(TypeError, match=r"executor 'local' does not implement LiveExecutor "
                                        r"\(missing: submit, wait, cancel\)"):
        check_executor(ex, live=True)
    assert ex.name == "local" and ex.on_nonfinite == "error" and ex.faults() == {}
    assert ex.optimizer is sim.trainer.optimizer


def test_an_object_missing_a_method_is_named():
    class Half:
        name = "half"

        def run_jobs(self, *a, **k):
            ...

    with pytest.raises(TypeError, match=r"executor 'half' does not implement Executor "
                                        r"\(missing: on_nonfinite, optimizer, full_gradients"):
        check_executor(Half())


def test_shared_start_with_one_key_is_run_round_and_with_several_keys_the_stacked_jobs():
    sim = simulation(chunk=3)
    ex, params = sim.executor, sim.state.params
    ids, w = np.array([4, 0, 6, 2, 5]), np.array([0.1, 0.3, 0.2, 0.15, 0.25])
    ref = ex.run_round(params, ids, w, 9, keep_local=True)
    got = ex.run_jobs(SharedStart(params), ids, np.full(5, 9), w, keep_local=True)
    for k in params:
        assert torch.equal(got.delta_sum[k], ref.delta_sum[k])
    keys = np.array([1, 9, 9, 3, 0])
    stacked = {k: v.unsqueeze(0).expand((5,) + v.shape) for k, v in params.items()}
    a = ex.run_jobs(SharedStart(params), ids, keys, w, keep_local=True)
    b = ex.run_jobs(stacked, ids, keys, w, keep_local=True)
    for k in params:
        assert torch.equal(a.delta_sum[k], b.delta_sum[k])
        assert torch.equal(a.local_params[k], b.local_params[k])


def test_evaluate_and_job_samples():
    sim = simulation()
    row = sim.executor.evaluate(sim.state.params, train=True)
    assert set(row) >= {"test_loss", "test_accuracy", "train_loss", "train_accuracy"}
    ids = np.arange(sim.data.num_clients)
    out = sim.executor.run_round(sim.state.params, ids, np.ones(len(ids)), 0)
    assert int(sim.executor.job_samples(ids).sum()) == out.samples
