"""Validation of the ``clock:`` config section (defaults filled; errors name ``clock.<field>``).

    clock:
      compute: {name: exponential, shift: 0.1, scale: 1.0}  # law of X_{i,j} (fedopt.clock.laws)
      speed: {name: linear, spread: 80}                     # s_i (fedopt.clock.factors)
      availability: {name: onoff, mean_online: 20, mean_offline: 5}
      communication: {bandwidth: 1.0e6, latency: 0.01}      # bytes per time unit; link: factors
      failure_prob: 0.0      # a job never returns with this probability
      timeout: null          # the server drops a job not back this long after its dispatch
      seed: null             # null: the run's seed

A law, factor or availability spec may be written as its name alone (``compute: pareto``).
Times are in virtual time units; negative or NaN values are errors; +inf (``.inf`` in YAML) is
accepted where it means "never" or "unlimited" (a constant compute time, a client's speed
factor, a cohort's slowdown, an offline period, a bandwidth, the timeout), and there ``null``
means the same, as does the string ``"inf"`` (a run's recorded config.json writes +inf as
``"inf"``, older ones as null, so either loads back unchanged).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from fedopt.config import FLOAT, INT, REQUIRED, ConfigError, Field, seed_range, validate_section

Check = Callable[[Any], "str | None"]
NONE = (type(None),)


def _check(ok: Callable[[float], bool], what: str) -> Check:
    def check(v):
        return None if ok(v) else f"must be {what}, got {v!r}"
    return check


time_or_inf = _check(lambda v: v >= 0, ">= 0 (+inf for never)")
finite_non_negative = _check(lambda v: 0 <= v < math.inf, "a finite number >= 0")
finite_positive = _check(lambda v: 0 < v < math.inf, "a finite number > 0")
positive_or_inf = _check(lambda v: v > 0, "> 0 (+inf allowed)")
finite = _check(math.isfinite, "finite")
probability = _check(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
#: a job's failure probability: 1 would mean no update ever arrives, which no run can use
failure_probability = _check(lambda v: 0 <= v < 1,
                             "a probability in [0, 1) (at 1 no client job ever returns)")
percent = _check(lambda v: 0 <= v < 100, "a percentage in [0, 100)")


def _positive_list(v) -> str | None:
    for k, x in enumerate(v):
        if x is None or x == "inf":
            continue   # null or "inf" (a recorded config.json): +inf
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or x <= 0:
            return f"entry {k} must be a number > 0 (+inf: never returns), got {x!r}"
    return None if len(v) else "must not be empty"


def _id_list(v) -> str | None:
    for k, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            return f"entry {k} must be a client id (integer >= 0), got {x!r}"
    return None


LAWS: dict[str, dict[str, Field]] = {
    "constant": {"value": Field(FLOAT + NONE, 1.0, time_or_inf, "X = value (null: +inf)", allow_inf=True)},
    "exponential": {"shift": Field(FLOAT, 0.0, finite_non_negative, "minimum time"),
                    "scale": Field(FLOAT, 1.0, finite_positive, "mean of the exponential part")},
    "lognormal": {"mu": Field(FLOAT, 0.0, finite, "mean of log X"),
                  "sigma": Field(FLOAT, 0.5, finite_non_negative, "std of log X")},
    "pareto": {"scale": Field(FLOAT, 1.0, finite_positive, "minimum time x_m"),
               "shape": Field(FLOAT, 1.5, finite_positive, "tail index α (mean finite iff α > 1)")},
    "markov": {"good": Field((dict, str), {"name": "constant", "value": 1.0}),
               "bad": Field((dict, str), {"name": "constant", "value": 10.0}),
               "p_good_to_bad": Field(FLOAT, 0.1, probability),
               "p_bad_to_good": Field(FLOAT, 0.5, probability)},
}

FACTORS: dict[str, dict[str, Field]] = {
    "constant": {},
    "linear": {"spread": Field(FLOAT, 80.0, percent, "fastest client is spread % faster")},
    "list": {"values": Field((list, tuple), REQUIRED, _positive_list, "one factor per client")},
    "lognormal": {"sigma": Field(FLOAT, 0.5, finite_non_negative)},
    "cohort": {"factor": Field(FLOAT + NONE, 10.0, positive_or_inf, "slowdown of the cohort", allow_inf=True),
               "clients": Field((list, tuple, type(None)), None, _id_list, "cohort client ids"),
               "fraction": Field(FLOAT, 0.2, probability, "random cohort size when no clients")},
}

AVAILABILITY: dict[str, dict[str, Field]] = {
    "always": {},
    "onoff": {"mean_online": Field(FLOAT, 10.0, finite_positive),
              "mean_offline": Field(FLOAT + NONE, 1.0, positive_or_inf, "null: +inf", allow_inf=True),
              "leave_prob": Field(FLOAT, 0.0, probability,
                                  "an offline period is permanent with this probability")},
}

COMMUNICATION: dict[str, Field] = {
    "bandwidth": Field(FLOAT + NONE, math.inf, positive_or_inf,
                       "bytes per virtual time unit (null: unlimited)", allow_inf=True),
    "latency": Field(FLOAT, 0.0, finite_non_negative, "per message (two per job)"),
    "down_bytes": Field(FLOAT + NONE, None, finite_non_negative, "null: the model's size"),
    "up_bytes": Field(FLOAT + NONE, None, finite_non_negative, "null: the model's size"),
    "link": Field((dict, str), {"name": "constant"}, doc="per-client transfer-time factors"),
}

CLOCK_FIELDS: dict[str, Field] = {
    "compute": Field((dict, str), {"name": "constant", "value": 1.0}),
    "speed": Field((dict, str), {"name": "constant"}),
    "availability": Field((dict, str), {"name": "always"}),
    "communication": Field((dict, type(None)), None),
    "failure_prob": Field(FLOAT, 0.0, failure_probability),
    "timeout": Field(FLOAT + NONE, None, positive_or_inf, allow_inf=True),
    "seed": Field(INT + NONE, None, seed_range, "null: the run's seed"),
}


def _named(spec: Any, registry: Mapping[str, Mapping[str, Field]], path: str) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'name', got {spec!r}")
    name = spec.get("name")
    if name not in registry:
        raise ConfigError(f"{path}.name: must be one of {', '.join(map(repr, registry))}, "
                          f"got {name!r}")
    fields = {"name": Field((str,), name), **registry[name]}
    return _null_is_inf(validate_section(spec, fields, path))


#: fields where null stands for +inf (see the module docstring)
_INF_FIELDS = ("value", "factor", "mean_offline", "bandwidth")


def _null_is_inf(section: dict[str, Any]) -> dict[str, Any]:
    for key in _INF_FIELDS:
        if key in section and section[key] is None:
            section[key] = math.inf
    if isinstance(section.get("values"), (list, tuple)):
        section["values"] = [math.inf if x is None or x == "inf" else x
                             for x in section["values"]]
    return section


def validate_law(spec: Any, path: str, nested: bool = False) -> dict[str, Any]:
    out = _named(spec, LAWS, path)
    if out["name"] == "markov":
        if nested:
            raise ConfigError(f"{path}.name: a markov state's law cannot itself be 'markov'")
        out["good"] = validate_law(out["good"], f"{path}.good", nested=True)
        out["bad"] = validate_law(out["bad"], f"{path}.bad", nested=True)
        if out["p_good_to_bad"] + out["p_bad_to_good"] == 0:
            raise ConfigError(f"{path}.p_good_to_bad: p_good_to_bad + p_bad_to_good must be "
                              f"> 0 (the chain needs a stationary law)")
    return out


def validate_factors(spec: Any, path: str) -> dict[str, Any]:
    return _named(spec, FACTORS, path)


def validate_clock_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``clock:`` section with every default filled, or a :class:`ConfigError` whose
    message starts with the offending field (``clock.compute.scale: ...``)."""
    cfg = validate_section(section, CLOCK_FIELDS, "clock")
    cfg["compute"] = validate_law(cfg["compute"], "clock.compute")
    cfg["speed"] = validate_factors(cfg["speed"], "clock.speed")
    cfg["availability"] = _named(cfg["availability"], AVAILABILITY, "clock.availability")
    comm = _null_is_inf(validate_section(cfg["communication"], COMMUNICATION,
                                         "clock.communication"))
    comm["link"] = validate_factors(comm["link"], "clock.communication.link")
    cfg["communication"] = comm
    if cfg["timeout"] is not None and math.isinf(cfg["timeout"]):
        cfg["timeout"] = None
    return cfg
