"""Counter-based randomness: every random draw is a pure function of (seed, coordinates).

A simulated client's minibatches in round r are a function of ``(seed, r, client_id)`` only —
not of which other clients share its chunk, which Ray worker holds it, or how many draws came
before. That is what makes the same config and seed give the same trajectory on every executor
and lets a resumed run continue exactly where it stopped.

The mixer is SplitMix64 (Steele, Lea & Flood 2014) over unsigned 64-bit integers, where
overflow wraps by definition (numpy ``uint64``).
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# The registry of stream ids: every keyed draw and every round generator of the code base names
# its stream here, so different uses of the same coordinates never share draws (the ids are all
# distinct; tests/test_rng_streams.py checks that, and that no module writes a stream number
# itself). Changing an id changes that feature's trajectories: add new ids, never renumber.
# core
STREAM_SAMPLING = 1          # clients sampled per round (fedopt.algorithms.fedavg, async)
STREAM_BATCHES = 2           # minibatch permutations (fedopt.engine.batches)
STREAM_PROBES = 3            # Hutchinson probes of the client optimizers (fedopt.engine.local)
STREAM_CLOCK = 4             # the virtual clock's laws, failures, availability (fedopt.clock)
# decentralized
STREAM_GRAPH = 11            # random graph builders (fedopt.decentralized.graphs)
STREAM_EVENTS = 12           # the Poisson node/edge events (fedopt.decentralized.events)
STREAM_WALK = 13             # SA-SRRW's token moves (fedopt.decentralized.srrw)
# local training that adapts (fedopt.local)
STREAM_CURRICULUM = 0x1C01   # curriculum tie-breaks and random orders (fedopt.local.curriculum)
STREAM_CLIENT_ORDER = 0x1C02  # the client-level curriculum's pool draws (fedopt.local.client_order)
STREAM_BATCH_TEST_ROWS = 0x1C03  # rows of the capped batch-size test (fedopt.local.engine)
# zeroth order and consensus-based optimization
STREAM_ZO = 0x5A01           # zeroth-order directions (fedopt.zo.estimators)
STREAM_CBO = 0x5A02          # CBO noise (fedopt.zo.cbo)
STREAM_FZOOS = 0x5A03        # FZooS features and directions (fedopt.algorithms.fzoos)
STREAM_PEERS = 0x5A04        # clustered FedCBO's peer draws (fedopt.algorithms.fedcbo_clustered)
STREAM_AIRCOMP = 0x5A05      # over-the-air noise (fedopt.algorithms.fedzo)
# gradient coding
STREAM_BURSTY = 0x6742       # bursty straggler patterns (fedopt.coding.bursty)
STREAM_CODING = 0x6743       # the cyclic code's generator (fedopt.coding.codes)
STREAM_DELAYS = 0x6744       # straggler delays (fedopt.coding.delays)
# differential privacy
STREAM_DP_CLIENT = 0xD901    # client-update noise (fedopt.privacy.postprocess)
STREAM_DP_CENTRAL = 0xD902   # server-aggregate noise (fedopt.privacy.postprocess)
STREAM_DP_DIFF2 = 0xD903     # DIFF2's noise (fedopt.privacy.diff2)
# evaluation
STREAM_EVAL = 0xE7A1         # evaluation subsets (fedopt.client_eval)

#: every registered stream: name -> id
STREAMS: dict[str, int] = {k: v for k, v in dict(globals()).items()
                           if k.startswith("STREAM_") and isinstance(v, int)}


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def keyed_bits(seed: int, *coords: int | np.ndarray) -> np.ndarray:
    """64 pseudo-random bits per element of the broadcast of ``coords``."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + _GOLDEN)
        for c in coords:
            c = np.asarray(c).astype(np.int64).astype(np.uint64)
            h = _mix(h ^ (c + _GOLDEN) + (h << np.uint64(6)) + (h >> np.uint64(2)))
    return h


def keyed_uniform(seed: int, *coords: int | np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) (53 random bits), one per element of the coordinates."""
    return (keyed_bits(seed, *coords) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def keyed_normal(seed: int, *coords: int | np.ndarray) -> np.ndarray:
    """Standard normal draws (Box–Muller on two keyed uniforms)."""
    u1 = keyed_uniform(seed, *coords, 0)
    u2 = keyed_uniform(seed, *coords, 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


# -- the same draws computed by torch on any device (the plan and probes of a GPU run are made
# where they are used): int64 arithmetic wraps like uint64, and >> on int64 is made logical by
# masking, so every bit equals keyed_bits's (tests/test_rng_torch.py)
def _signed(u: np.uint64) -> int:
    return int(u) - (1 << 64) if int(u) >= 1 << 63 else int(u)


_T_GOLDEN, _T_M1, _T_M2 = _signed(_GOLDEN), _signed(_M1), _signed(_M2)


def shr_logical(z: "torch.Tensor", s: int) -> "torch.Tensor":
    """Logical right shift of int64 bit patterns (as on uint64)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix_t(z: "torch.Tensor") -> "torch.Tensor":
    z = (z ^ shr_logical(z, 30)) * _T_M1
    z = (z ^ shr_logical(z, 27)) * _T_M2
    return z ^ shr_logical(z, 31)


def keyed_bits_torch(seed: int, *coords: "int | torch.Tensor", device=None) -> "torch.Tensor":
    """:func:`keyed_bits` as an int64 tensor of the same 64 bits (two's complement), computed
    on ``device`` (default: the first tensor coordinate's, else CPU); coordinates are ints or
    integer tensors, broadcast together. Raises ValueError for a floating coordinate."""
    import torch

    if device is None:
        device = next((c.device for c in coords if isinstance(c, torch.Tensor)), "cpu")
    h = _mix_t(torch.tensor(_signed(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)), dtype=torch.int64,
                            device=device) + _T_GOLDEN)
    for c in coords:
        if isinstance(c, torch.Tensor):
            if c.is_floating_point() or c.is_complex():
                raise ValueError(f"keyed_bits_torch: integer coordinates expected, got {c.dtype}")
            c = c.to(device=device, dtype=torch.int64)
        else:
            c = torch.tensor(_signed(np.uint64(int(c) & 0xFFFFFFFFFFFFFFFF)), dtype=torch.int64,
                             device=device)                  # wraps to 64 bits, as numpy does
        h = _mix_t(h ^ ((c + _T_GOLDEN) + (h << 6) + shr_logical(h, 2)))
    return h


def keyed_rademacher_torch(seed: int, *coords: "int | torch.Tensor", device=None,
                           dtype=None) -> "torch.Tensor":
    """The Rademacher probes ``where(keyed_uniform(...) < 0.5, -1, 1)`` bit for bit, on
    ``device``: the uniform is below one half exactly when the top random bit is 0."""
    import torch

    bits = keyed_bits_torch(seed, *coords, device=device)     # top bit = the int64 sign bit
    return torch.where(bits >= 0, -1.0, 1.0).to(dtype or torch.float64)


def keyed_normal_torch(seed: int, *coords: "int | torch.Tensor", device=None) -> "torch.Tensor":
    """:func:`keyed_normal` in float64 on ``device``: the uniforms are bit for bit those of
    :func:`keyed_uniform`; log1p, sqrt and cos are the device's (equal to numpy's within an ulp
    or two, not bit for bit)."""
    import math

    import torch

    def uniform(*c):
        return shr_logical(keyed_bits_torch(seed, *c, device=device), 11).double() * (1.0 / (1 << 53))

    u1, u2 = uniform(*coords, 0), uniform(*coords, 1)
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)


def round_generator(seed: int, stream: int, round_idx: int) -> np.random.Generator:
    """A numpy Generator for one (stream, round): e.g. which clients are sampled in a round."""
    return np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, stream, round_idx])
