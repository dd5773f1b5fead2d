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
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from fedopt.schema import (Check, Float, InfFloat, Int, NullInf, Schema, Seed, fail, named_union,
                           parse, variant)

#: a time: >= 0, +inf for never (null: +inf)
TimeOrInf = Annotated[NullInf, Check(lambda v: v >= 0, ">= 0 (+inf for never)")]
FiniteNonNegative = Annotated[Float, Check(lambda v: v >= 0, "a finite number >= 0")]
FinitePositive = Annotated[Float, Check(lambda v: v > 0, "a finite number > 0")]
PositiveOrInf = Annotated[NullInf, Check(lambda v: v > 0, "> 0 (+inf allowed)")]
Probability = Annotated[Float, Check(lambda v: 0 <= v <= 1, "a probability in [0, 1]")]
#: a job's failure probability: 1 would mean no update ever arrives, which no run can use
FailureProbability = Annotated[Float, Check(lambda v: 0 <= v < 1,
                                            "a probability in [0, 1) (at 1 no client job "
                                            "ever returns)")]
Percent = Annotated[Float, Check(lambda v: 0 <= v < 100, "a percentage in [0, 100)")]
ClientId = Annotated[Int, Check(lambda v: v >= 0, "a client id (integer >= 0)")]


class Law(Schema):
    """A compute-time law X_{i,j} (:mod:`fedopt.clock.laws`)."""
    what = "compute law"


class Factors(Schema):
    """Per-client factors s_i (:mod:`fedopt.clock.factors`)."""
    what = "client factors"


class Availability(Schema):
    """When a client is online (:mod:`fedopt.clock.availability`)."""
    what = "availability model"


CONSTANT_LAW = variant(Law, "constant", value=(TimeOrInf, Field(1.0, description="X = value (null: +inf)")))
STATE_LAWS = [
    CONSTANT_LAW,
    variant(Law, "exponential",
            shift=(FiniteNonNegative, Field(0.0, description="minimum time")),
            scale=(FinitePositive, Field(1.0, description="mean of the exponential part"))),
    variant(Law, "lognormal",
            mu=(Float, Field(0.0, description="mean of log X")),
            sigma=(FiniteNonNegative, Field(0.5, description="std of log X"))),
    variant(Law, "pareto",
            scale=(FinitePositive, Field(1.0, description="minimum time x_m")),
            shape=(FinitePositive, Field(1.5, description="tail index α (mean finite iff α > 1)"))),
]


def _not_markov(v: Any) -> Any:
    name = v if isinstance(v, str) else v.get("name") if isinstance(v, Mapping) else None
    if name == "markov":
        raise fail("name", "a markov state's law cannot itself be 'markov'")
    return v


StateLaw = Annotated[named_union(STATE_LAWS), BeforeValidator(_not_markov)]


class MarkovLaw(Law):
    """Two-state Markov-modulated times: a state's own law, switching probabilities per job."""
    what = "compute law 'markov'"
    name: Literal["markov"] = "markov"
    good: StateLaw = Field(default_factory=lambda: CONSTANT_LAW(value=1.0))
    bad: StateLaw = Field(default_factory=lambda: CONSTANT_LAW(value=10.0))
    p_good_to_bad: Probability = 0.1
    p_bad_to_good: Probability = 0.5

    @model_validator(mode="after")
    def _stationary(self) -> "MarkovLaw":
        if self.p_good_to_bad + self.p_bad_to_good == 0:
            raise fail("p_good_to_bad", "p_good_to_bad + p_bad_to_good must be > 0 (the chain "
                                        "needs a stationary law)")
        return self


LAWS = [*STATE_LAWS, MarkovLaw]
ComputeLaw = named_union(LAWS)

FACTORS = [
    variant(Factors, "constant"),
    variant(Factors, "linear", spread=(Percent, Field(80.0, description="fastest client is spread % faster"))),
    variant(Factors, "list", values=(Annotated[list[Annotated[NullInf, Check(
        lambda v: v > 0, "a number > 0 (+inf: never returns)")]], Field(min_length=1)],
        Field(..., description="one factor per client"))),
    variant(Factors, "lognormal", sigma=(FiniteNonNegative, 0.5)),
    variant(Factors, "cohort",
            factor=(PositiveOrInf, Field(10.0, description="slowdown of the cohort")),
            clients=(Optional[list[ClientId]], Field(None, description="cohort client ids")),
            fraction=(Probability, Field(0.2, description="random cohort size when no clients"))),
]
ClientFactors = named_union(FACTORS)

AVAILABILITY = [
    variant(Availability, "always"),
    variant(Availability, "onoff",
            mean_online=(FinitePositive, 10.0),
            mean_offline=(PositiveOrInf, Field(1.0, description="null: +inf")),
            leave_prob=(Probability, Field(0.0, description="an offline period is permanent "
                                                            "with this probability"))),
]
AvailabilityModel = named_union(AVAILABILITY)


def _none_is_empty(v: Any) -> Any:
    return {} if v is None else v


class Communication(Schema):
    """Transfer times: ``latency + bytes / bandwidth`` per message, times per-client factors."""
    what = "clock.communication"
    bandwidth: PositiveOrInf = Field(math.inf, description="bytes per virtual time unit (null: unlimited)")
    latency: FiniteNonNegative = Field(0.0, description="per message (two per job)")
    down_bytes: Optional[FiniteNonNegative] = Field(None, description="null: the model's size")
    up_bytes: Optional[FiniteNonNegative] = Field(None, description="null: the model's size")
    link: ClientFactors = Field(default_factory=lambda: FACTORS[0](),
                                description="per-client transfer-time factors")


def _timeout(v: Any) -> Any:
    return None if v == "inf" or (isinstance(v, float) and v == math.inf) else v


class ClockConfig(Schema):
    """The ``clock:`` section (see the module docstring)."""
    what = "clock"
    compute: ComputeLaw = Field(default_factory=lambda: CONSTANT_LAW(value=1.0))
    speed: ClientFactors = Field(default_factory=lambda: FACTORS[0]())
    availability: AvailabilityModel = Field(default_factory=lambda: AVAILABILITY[0]())
    communication: Annotated[Communication, BeforeValidator(_none_is_empty)] = Field(
        default_factory=Communication)
    failure_prob: FailureProbability = 0.0
    timeout: Annotated[Optional[Annotated[InfFloat, Check(lambda v: v > 0, "> 0 (+inf allowed)")]],
                       AfterValidator(_timeout)] = None
    seed: Optional[Seed] = Field(None, description="null: the run's seed")


def validate_clock_config(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``clock:`` section with every default filled, or a :class:`ConfigError` whose
    message starts with the offending field (``clock.compute.scale: ...``)."""
    return parse(ClockConfig, {} if section is None else section, "clock").model_dump()


def validate_law(spec: Any, path: str = "clock.compute") -> dict[str, Any]:
    """A compute-time law spec (a name or ``{name, ...}``) with its defaults, checked by its
    schema; ConfigError naming ``<path>.<key>``."""
    return parse(ComputeLaw, spec, path).model_dump()
