"""The ``topology:`` config section: which communication graph the nodes (the data set's
``data.num_clients`` clients) sit on.

    topology: {name: ring}                       # or complete, star
    topology: {name: grid, rows: 4, cols: 5}     # rows·cols = data.num_clients; torus likewise
    topology: {name: erdos_renyi, p: 0.3}
    topology: {name: geometric, radius: 0.4}     # points uniform in [0, 1]²
    topology: {name: edges, edges: [[0, 1], [1, 2]]}   # or file: path (one "i j" pair a line)

The random graphs are drawn with ``topology.seed`` (null: the run's seed). A graph that is not
connected is refused with a :class:`~fedopt.schema.ConfigError` naming ``topology``.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import Field

from fedopt.decentralized import graphs
from fedopt.schema import (Check, ConfigError, Float, Int, PositiveInt, Schema, Seed, Str,
                           named_union, variant)


class TopologyConfig(Schema):
    """A ``topology:`` section: a communication graph on the data set's clients."""

    what = "topology"
    seed: Optional[Seed] = Field(None, description="seed of a random graph (null: the run's)")


Side = Optional[PositiveInt]
Node = Annotated[Int, Check(lambda v: v >= 0, "a node id >= 0")]
TOPOLOGIES = [
    variant(TopologyConfig, "ring", doc="the cycle C_n"),
    variant(TopologyConfig, "complete", doc="every pair of nodes"),
    variant(TopologyConfig, "star", doc="node 0 joined to every other node"),
    variant(TopologyConfig, "grid", doc="2-D grid, rows x cols = n",
            rows=(Side, Field(None, description="null: the largest divisor of n <= sqrt(n)")),
            cols=(Side, Field(None, description="null: n / rows"))),
    variant(TopologyConfig, "torus", doc="2-D grid with wrap-around, rows x cols = n",
            rows=(Side, Field(None, description="null: the largest divisor of n <= sqrt(n)")),
            cols=(Side, Field(None, description="null: n / rows"))),
    variant(TopologyConfig, "erdos_renyi", doc="G(n, p)",
            p=(Annotated[Float, Check(lambda v: 0 < v <= 1, "in (0, 1]")],
               Field(0.3, description="edge probability"))),
    variant(TopologyConfig, "geometric", doc="random geometric graph on [0, 1]^2",
            radius=(Annotated[Float, Check(lambda v: v > 0, "> 0")],
                    Field(0.4, description="connect points at most this far apart"))),
    variant(TopologyConfig, "edges", doc="a user's edge list",
            edges=(Optional[list[Annotated[list[Node], Field(min_length=2, max_length=2)]]],
                   Field(None, description="[[i, j], ...]")),
            file=(Optional[Str], Field(None, description="a text file, one 'i j' pair a line"))),
]
#: a ``topology:`` section (no default name: decentralized algorithms need one)
TopologySpec = named_union(TOPOLOGIES)


def _sides(cfg: dict[str, Any], n: int) -> tuple[int, int]:
    rows, cols = cfg.get("rows"), cfg.get("cols")
    if rows is None and cols is None:
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if rows is None:
        rows = n // cols if n % cols == 0 else 0
    if cols is None:
        cols = n // rows if n % rows == 0 else 0
    if rows * cols != n:
        raise ConfigError(f"topology.rows: rows x cols must equal the number of nodes "
                          f"(data.num_clients = {n}), got rows {cfg.get('rows')}, "
                          f"cols {cfg.get('cols')}")
    return rows, cols


def _read_edges(path: str) -> np.ndarray:
    try:
        with open(path) as f:
            rows = [line.split("#")[0].split() for line in f]
    except OSError as e:
        raise ConfigError(f"topology.file: {path!r}: {e.strerror}") from None
    pairs = [r for r in rows if r]
    try:
        arr = np.asarray([[int(a) for a in r] for r in pairs], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"topology.file: {path!r}: each line must be two node ids "
                          f"'i j'") from None
    if arr.size and arr.shape[1] != 2:
        raise ConfigError(f"topology.file: {path!r}: each line must be two node ids 'i j'")
    return arr.reshape(-1, 2)


def build_topology(cfg: dict[str, Any] | None, n: int, seed: int) -> graphs.Graph:
    """The connected graph of a validated ``topology:`` section on ``n`` nodes; ConfigError
    naming ``topology`` (missing, disconnected) or the offending key."""
    if cfg is None:
        raise ConfigError("topology: required by the decentralized algorithms, e.g. "
                          "topology: {name: ring}")
    name = cfg["name"]
    seed = seed if cfg.get("seed") is None else cfg["seed"]
    if name == "ring":
        g = graphs.ring(n)
    elif name == "complete":
        g = graphs.complete(n)
    elif name == "star":
        g = graphs.star(n)
    elif name in ("grid", "torus"):
        g = getattr(graphs, name)(*_sides(cfg, n))
    elif name == "erdos_renyi":
        g = graphs.erdos_renyi(n, cfg["p"], seed)
    elif name == "geometric":
        g = graphs.geometric(n, cfg["radius"], seed)[0]
    elif name == "edges":
        if (cfg.get("edges") is None) == (cfg.get("file") is None):
            raise ConfigError("topology.edges: give exactly one of topology.edges and "
                              "topology.file")
        if cfg.get("file") is not None:
            g = graphs.from_edges(n, _read_edges(cfg["file"]), "topology.file")
        else:
            g = graphs.from_edges(n, cfg["edges"])
    else:   # the schema admits only the names above
        raise ConfigError(f"topology.name: unknown topology {name!r}")
    graphs.check_connected(g)
    return g
