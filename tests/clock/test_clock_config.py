"""The clock: config section — defaults, shorthand and errors that name the field."""
import math
import re

import pytest

from fedopt.clock import validate_clock_config
from fedopt.config import ConfigError, load_config

BASE = {"data": {"name": "synthetic", "num_clients": 4}, "client": {"local_steps": 1},
        "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2}}


def test_defaults_and_shorthand():
    cfg = validate_clock_config({"compute": "pareto", "availability": "onoff"})
    assert cfg["compute"] == {"name": "pareto", "scale": 1.0, "shape": 1.5}
    assert cfg["availability"]["name"] == "onoff"
    assert cfg["speed"] == {"name": "constant"}
    assert cfg["communication"]["bandwidth"] == math.inf
    assert cfg["timeout"] is None
    assert validate_clock_config({"timeout": math.inf})["timeout"] is None
    m = validate_clock_config({"compute": {"name": "markov", "bad": "exponential"}})["compute"]
    assert m["bad"] == {"name": "exponential", "shift": 0.0, "scale": 1.0}


@pytest.mark.parametrize("section,field", [
    ({"compute": {"name": "constant", "value": -1}}, "clock.compute.value"),
    ({"compute": {"name": "exponential", "scale": float("nan")}}, "clock.compute.scale"),
    ({"compute": {"name": "exponential", "shift": -0.5}}, "clock.compute.shift"),
    ({"compute": {"name": "pareto", "shape": 0}}, "clock.compute.shape"),
    ({"compute": {"name": "lognormal", "sigma": math.inf}}, "clock.compute.sigma"),
    ({"compute": {"name": "gamma"}}, "clock.compute.name"),
    ({"compute": {"name": "markov", "p_good_to_bad": 0, "p_bad_to_good": 0}},
     "clock.compute.p_good_to_bad"),
    ({"compute": {"name": "markov", "good": {"name": "markov"}}}, "clock.compute.good.name"),
    ({"speed": {"name": "list", "values": [1, float("nan")]}}, "clock.speed.values"),
    ({"speed": {"name": "list", "values": [1, -2]}}, "clock.speed.values"),
    ({"speed": {"name": "linear", "spread": 100}}, "clock.speed.spread"),
    ({"speed": {"name": "cohort", "clients": [-1]}}, "clock.speed.clients"),
    ({"availability": {"name": "onoff", "mean_online": 0}}, "clock.availability.mean_online"),
    ({"communication": {"bandwidth": 0}}, "clock.communication.bandwidth"),
    ({"communication": {"latency": -1}}, "clock.communication.latency"),
    ({"failure_prob": 1.5}, "clock.failure_prob"),
    ({"timeout": 0}, "clock.timeout"),
    ({"timeout": -3.0}, "clock.timeout"),
    ({"bogus": 1}, "clock.bogus"),
])
def test_bad_values_name_the_field(section, field):
    with pytest.raises(ConfigError) as e:
        validate_clock_config(section)
    assert re.match(rf"{re.escape(field)}(\[\d+\])?: ", str(e.value)), str(e.value)


def test_run_config_validates_its_clock_section():
    cfg = load_config({**BASE, "clock": {"compute": "exponential"}})
    assert cfg["clock"]["compute"]["scale"] == 1.0
    with pytest.raises(ConfigError, match=r"^clock\.compute\.scale:"):
        load_config({**BASE, "clock": {"compute": {"name": "exponential", "scale": -1}}})


def test_a_recorded_config_loads_back_unchanged():
    """config.json writes +inf as null; the clock section must read it back as +inf."""
    import json

    from fedopt.jsonio import to_jsonable

    section = {"compute": {"name": "constant", "value": math.inf},
               "speed": {"name": "list", "values": [1.0, math.inf]},
               "availability": {"name": "onoff", "mean_offline": math.inf},
               "communication": {"link": {"name": "cohort", "clients": [0], "factor": math.inf}}}
    cfg = validate_clock_config(section)
    again = validate_clock_config(json.loads(json.dumps(to_jsonable(cfg))))
    assert again == cfg
    assert again["communication"]["bandwidth"] == math.inf
    assert again["speed"]["values"] == [1.0, math.inf]
