"""The shortest possible job time (``VirtualClock.min_work``) and the limits no job can meet
(``VirtualClock.check_reachable``): a law's lower bound, times speed factors, plus
communication."""
import math

import numpy as np
import pytest

from fedopt.clock import VirtualClock, build_law, validate_clock_config
from fedopt.clock.config import validate_law
from fedopt.config import ConfigError


@pytest.mark.parametrize("spec, least", [
    ({"name": "constant", "value": 3.0}, 3.0),
    ({"name": "exponential", "shift": 0.25, "scale": 2.0}, 0.25),
    ({"name": "exponential", "scale": 2.0}, 0.0),
    ({"name": "lognormal", "mu": 1.0, "sigma": 0.5}, 0.0),
    ({"name": "pareto", "scale": 1.5, "shape": 2.0}, 1.5),
    ({"name": "markov", "good": {"name": "constant", "value": 2.0},
      "bad": {"name": "pareto", "scale": 5.0}}, 2.0),
    # a state of stationary probability 0 is never entered: its smaller minimum does not count
    ({"name": "markov", "good": {"name": "constant", "value": 2.0},
      "bad": {"name": "constant", "value": 0.5}, "p_good_to_bad": 0.0}, 2.0),
    ({"name": "markov", "good": {"name": "constant", "value": 0.5},
      "bad": {"name": "constant", "value": 4.0}, "p_bad_to_good": 0.0}, 4.0),
])
def test_law_minimum_bounds_every_draw(spec, least):
    law = build_law(validate_law(spec), (1,))
    assert law.minimum() == least
    clients = np.repeat(np.arange(50), 40)
    jobs = np.tile(np.arange(40), 50)
    x = law.sample(0, clients, jobs, law.init_state(0, 50))
    assert x.min() >= least
    if spec["name"] in ("constant", "markov"):
        assert x.min() == least


def test_min_work_is_the_fastest_client_with_its_communication():
    config = validate_clock_config({
        "compute": {"name": "exponential", "shift": 2.0},
        "speed": {"name": "list", "values": [1.0, 0.5, math.inf]},
        "communication": {"bandwidth": 100.0, "latency": 0.25,
                          "link": {"name": "list", "values": [1.0, 3.0, 1.0]}}})
    clock = VirtualClock(config, 3, seed=0, payload_bytes=50.0)
    # client 0: 2 + 0.5 + 100/100 = 3.5; client 1: 1 + 0.5 + 3 = 4.5; client 2: never
    assert clock.min_work() == pytest.approx(3.5)
    w = clock.work(np.repeat([0, 1], 100), np.tile(np.arange(100), 2), clock.init_state())
    assert w.min() >= clock.min_work() - 1e-12


def test_check_reachable_names_the_field_and_the_shortest_time():
    def clock(**section):
        return VirtualClock(validate_clock_config(section), 4, seed=0)

    with pytest.raises(ConfigError, match=r"^clock\.timeout: 0\.5 is below .* is 1 "):
        clock(timeout=0.5).check_reachable()
    clock(timeout=1.0).check_reachable()                    # a job at the limit returns
    clock().check_reachable(deadline=0.5)                   # stragglers kept: later steps
    with pytest.raises(ConfigError, match=r"^algorithm\.deadline: 0\.5 .* at least 1$"):
        clock().check_reachable(deadline=0.5, cancel_stragglers=True)
    with pytest.raises(ConfigError, match=r"^algorithm\.interval: 0\.25 "):
        clock().check_reachable(interval=0.25, cancel_stragglers=True)
    with pytest.raises(ConfigError, match=r"^clock\.timeout: no client's job can ever complete"):
        clock(compute={"name": "constant", "value": math.inf}).check_reachable()
    clock(compute="lognormal", timeout=1e-9).check_reachable()   # X can be arbitrarily small
