"""Compute-time laws: the distribution of ``X_{i,j}``, the base duration of client i's j-th job.

The clock (:mod:`fedopt.clock.clock`) turns it into the job's online work
``w_{i,j} = s_i · X_{i,j} + c_i`` (speed factor ``s_i``, communication time ``c_i``).

Every draw is keyed, ``u = keyed_uniform(seed, STREAM_CLOCK, *tag, i, j)``, so client i's j-th job
takes as long under every algorithm, executor and host, and a resumed run draws the same times.

=============  ==================================================  ============================
law            X_{i,j}                                              E[X]
=============  ==================================================  ============================
constant       ``value`` (may be +inf: the job never returns)       value
exponential    ``shift + scale · E``,  E ~ Exp(1)  (shifted exp.)   shift + scale
lognormal      ``exp(mu + sigma · Z)``, Z ~ N(0, 1)                 exp(mu + sigma²/2)
pareto         ``scale · U^(-1/shape)``, U ~ U(0, 1]  (heavy tail)  shape·scale/(shape−1), or +inf
markov         bursty two-state chain per client: state g/b of job   π_g E[X|g] + π_b E[X|b]
               j follows job j−1's with P(g→b) = ``p_good_to_bad``,
               P(b→g) = ``p_bad_to_good``; X drawn from the state's
               own law (``good``, ``bad``)
=============  ==================================================  ============================

(π_b = p_gb / (p_gb + p_bg) is the chain's stationary probability of the bad state; the state
before a client's first job is drawn from it.)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedopt.rng import STREAM_CLOCK, keyed_normal, keyed_uniform

Tag = tuple[int, ...]


class ComputeLaw:
    """Base class: ``sample`` keyed draws for (client, job) pairs; ``mean`` = E[X];
    ``minimum`` = the smallest X a draw can take."""

    #: whether the law carries per-client state across jobs (``markov``)
    stateful = False

    def __init__(self, tag: Tag):
        self.tag = tag

    def uniform(self, seed: int, clients: np.ndarray, jobs: np.ndarray, *sub: int) -> np.ndarray:
        return keyed_uniform(seed, STREAM_CLOCK, *self.tag, *sub, clients, jobs)

    def init_state(self, seed: int, num_clients: int) -> np.ndarray | None:
        return None

    def sample(self, seed: int, clients: np.ndarray, jobs: np.ndarray,
               state: np.ndarray | None) -> np.ndarray:
        """X for each (clients[k], jobs[k]); a stateful law updates ``state[clients]`` in place."""
        raise NotImplementedError

    def mean(self) -> float:
        raise NotImplementedError

    def minimum(self) -> float:
        """The smallest time a draw can take (the law's lower bound; 0 where X can be
        arbitrarily small)."""
        return 0.0


class Constant(ComputeLaw):
    def __init__(self, tag: Tag, value: float):
        super().__init__(tag)
        self.value = float(value)

    def sample(self, seed, clients, jobs, state=None):
        return np.full(len(clients), self.value)

    def mean(self) -> float:
        return self.value

    def minimum(self) -> float:
        return self.value


class ShiftedExponential(ComputeLaw):
    def __init__(self, tag: Tag, shift: float, scale: float):
        super().__init__(tag)
        self.shift, self.scale = float(shift), float(scale)

    def sample(self, seed, clients, jobs, state=None):
        return self.shift - self.scale * np.log1p(-self.uniform(seed, clients, jobs))

    def mean(self) -> float:
        return self.shift + self.scale

    def minimum(self) -> float:
        return self.shift


class LogNormal(ComputeLaw):
    def __init__(self, tag: Tag, mu: float, sigma: float):
        super().__init__(tag)
        self.mu, self.sigma = float(mu), float(sigma)

    def sample(self, seed, clients, jobs, state=None):
        z = keyed_normal(seed, STREAM_CLOCK, *self.tag, clients, jobs)
        return np.exp(self.mu + self.sigma * z)

    def mean(self) -> float:
        return math.exp(self.mu + 0.5 * self.sigma ** 2)


class Pareto(ComputeLaw):
    def __init__(self, tag: Tag, scale: float, shape: float):
        super().__init__(tag)
        self.scale, self.shape = float(scale), float(shape)

    def sample(self, seed, clients, jobs, state=None):
        return self.scale * (1.0 - self.uniform(seed, clients, jobs)) ** (-1.0 / self.shape)

    def mean(self) -> float:
        return self.shape * self.scale / (self.shape - 1.0) if self.shape > 1 else math.inf

    def minimum(self) -> float:
        return self.scale


class TwoStateMarkov(ComputeLaw):
    """Bursty hardware: a good/bad chain per client, advanced once per job (see module doc)."""

    stateful = True
    GOOD, BAD = 0, 1

    def __init__(self, tag: Tag, good: ComputeLaw, bad: ComputeLaw, p_good_to_bad: float,
                 p_bad_to_good: float):
        super().__init__(tag)
        self.good, self.bad = good, bad
        self.p_gb, self.p_bg = float(p_good_to_bad), float(p_bad_to_good)

    @property
    def stationary_bad(self) -> float:
        return self.p_gb / (self.p_gb + self.p_bg)

    def init_state(self, seed: int, num_clients: int) -> np.ndarray:
        """State "before job 0", drawn from the stationary distribution."""
        ids = np.arange(num_clients)
        u = self.uniform(seed, ids, np.full(num_clients, -1), 0)
        return (u < self.stationary_bad).astype(np.int64)

    def sample(self, seed, clients, jobs, state):
        u = self.uniform(seed, clients, jobs, 0)
        prev = state[clients]
        bad = np.where(prev == self.GOOD, u < self.p_gb, u >= self.p_bg)
        state[clients] = bad.astype(np.int64)
        return np.where(bad, self.bad.sample(seed, clients, jobs, None),
                        self.good.sample(seed, clients, jobs, None))

    def minimum(self) -> float:
        """The smaller of the states' minima, over the states a client can be in (a state of
        stationary probability 0 is never entered: the chain starts from its stationary law)."""
        pb = self.stationary_bad
        return min(m for m, w in ((self.good.minimum(), 1 - pb), (self.bad.minimum(), pb))
                   if w > 0)

    def mean(self) -> float:
        pb = self.stationary_bad
        means = [m for m, w in ((self.good.mean(), 1 - pb), (self.bad.mean(), pb)) if w > 0]
        return math.inf if any(math.isinf(m) for m in means) else \
            (1 - pb) * self.good.mean() + pb * self.bad.mean()


def build_law(spec: dict[str, Any], tag: Tag) -> ComputeLaw:
    """The law of a validated ``clock.compute`` spec; ``tag`` keys its random stream."""
    name = spec["name"]
    if name == "constant":
        return Constant(tag, spec["value"])
    if name == "exponential":
        return ShiftedExponential(tag, spec["shift"], spec["scale"])
    if name == "lognormal":
        return LogNormal(tag, spec["mu"], spec["sigma"])
    if name == "pareto":
        return Pareto(tag, spec["scale"], spec["shape"])
    if name == "markov":
        return TwoStateMarkov(tag, build_law(spec["good"], tag + (1,)),
                              build_law(spec["bad"], tag + (2,)),
                              spec["p_good_to_bad"], spec["p_bad_to_good"])
    raise ValueError(f"unknown compute-time law {name!r}")
