"""Checkpoint/resume of the asynchronous family reproduces the uninterrupted run, and the
virtual clock lands in the run's metrics."""
import math

import pytest
import torch

import fedopt
from fedopt.checkpoint import load_checkpoint
from fedopt.records import latest_checkpoint, read_metrics

CLOCK = {"compute": {"name": "markov", "good": {"name": "exponential", "scale": 0.5},
                     "bad": {"name": "constant", "value": 4.0}},
         "speed": {"name": "lognormal", "sigma": 0.5},
         "availability": {"name": "onoff", "mean_online": 4.0, "mean_offline": 1.0},
         "failure_prob": 0.1, "timeout": 3.0}


def config(rounds, algorithm):
    return {"seed": 5, "data": {"name": "synthetic", "num_clients": 8, "min_samples": 8,
                                "max_samples": 30, "num_features": 6, "num_classes": 3},
            "model": {"name": "logreg"}, "algorithm": {"rounds": rounds, **algorithm},
            "client": {"local_steps": 2, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.1}},
            "clock": CLOCK, "eval_every": 1, "checkpoint_every": 0, "eval_train": False}


@pytest.mark.parametrize("algorithm,rounds,split", [
    ({"name": "fedbuff", "buffer_size": 2, "clients_per_round": 5,
      "server_optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.9}}, 14, 6),
    ({"name": "fedasync", "clients_per_round": 8}, 40, 17),
])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, algorithm, rounds, split):
    whole = fedopt.run(config(rounds, algorithm), tmp_path / "whole", progress=False)
    fedopt.run(config(split, algorithm), tmp_path / "split", progress=False)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "split"))
    held = ckpt["server"]["extra"]["async"]
    assert held["cache"] or held["pending"]       # jobs in flight survive the checkpoint
    resumed = fedopt.run(config(rounds, algorithm), tmp_path / "split", progress=False,
                         resume=True)
    for k in whole.final_params:
        assert torch.equal(whole.final_params[k], resumed.final_params[k])
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    keys = ("round", "virtual_time", "dropped", "client_updates", "test_loss", "staleness_mean")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert a[-1]["dropped"] > 0                   # failures and timeouts happened and were counted
    times = [r["virtual_time"] for r in a]
    assert times == sorted(times) and all(math.isfinite(t) for t in times)
