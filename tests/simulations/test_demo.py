"""The demo teaches: every row is labelled by what ran (the resolved config), and its runs learn
(test accuracy well above chance)."""
import pytest

from fedopt.config import load_config
from fedopt.simulations import demo
from fedopt.simulations.shipped import resolve_config


def _configs():
    return [(name, load_config(resolve_config(config), overrides))
            for name, config, overrides in demo._runs(1.0)]


def test_rows_are_labelled_by_what_ran():
    runs = _configs()
    labels = {name: demo.describe_algorithm(cfg) for name, cfg in runs}
    for name, cfg in runs:
        if name.startswith("digits-"):
            assert name.split("-")[1] == cfg["algorithm"]["name"]
    assert labels["digits-fedadam-s0"] == "fedadam (server adam, lr 0.01)"
    assert labels["digits-fedavg-s0"] == "fedavg"
    assert labels["digits-fedprox-s0"] == "fedprox (mu 0.01)"
    assert labels["quickstart"] == "fedavg"
    cfgs = dict(runs)
    for n in (1000, 10000):     # the scale runs use the variant one global model can fit
        cfg = cfgs[f"synthetic-iid-{n}-clients"]
        assert cfg["data"]["iid"] is True and cfg["data"]["num_clients"] == n


@pytest.mark.slow
def test_the_1000_client_scale_run_learns():
    """Chance is 0.10 (10 classes); the demo's 1,000-client setting must clearly beat it."""
    import fedopt

    cfg = dict(_configs())["synthetic-iid-1000-clients"]
    cfg["eval_every"] = cfg["algorithm"]["rounds"]
    acc = fedopt.run(cfg, progress=False).summary["final_test_accuracy"]
    assert acc > 0.5, acc
