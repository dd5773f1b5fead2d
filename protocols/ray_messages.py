"""What travels between the Ray coordinator and its workers: dicts of numpy arrays.

Ray's object store keeps numpy arrays as raw buffers and hands readers a zero-copy, read-only
view (``torch.Tensor`` objects would be pickled byte by byte instead). So parameters go out as
``{name: ndarray}`` — one ``ray.put`` per round that every worker maps without copying, or,
up to :data:`INLINE_BYTES`, inside each task (:func:`share`) — and a shard's result comes back
the same way. :func:`to_arrays` / :func:`to_tensors` are the only two conversions; nothing else
in the Ray path touches the layout.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

Params = dict[str, Tensor]
Arrays = dict[str, np.ndarray]

#: start parameters of at most this many bytes go inside each task, not through the object
#: store (Ray inlines task arguments below its 100 KiB ``max_direct_call_object_size``)
INLINE_BYTES = 100 * 1024


def share(ray: Any, arrays: Arrays) -> Any:
    """What the workers' calls take as parameters ``arrays``: the arrays themselves when they
    total at most :data:`INLINE_BYTES` bytes (Ray copies them into each task: no object-store
    round trip, measured ~1.9 ms per round of the quickstart's logreg on 2 cores), else one
    ``ray.put`` that every call shares (the workers map it zero-copy). Both arrive on a worker
    as the same ``{name: ndarray}``, so how they travel changes no result."""
    if sum(a.nbytes for a in arrays.values()) <= INLINE_BYTES:
        return arrays
    return ray.put(arrays)


def to_arrays(params: Params | None) -> Arrays | None:
    """CPU numpy views/copies of a dict of tensors (a GPU tensor is copied to host once)."""
    if params is None:
        return None
    return {k: v.detach().cpu().numpy() for k, v in params.items()}


def to_tensors(arrays: Arrays | None, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None) -> Params | None:
    """Tensors over ``arrays``: zero-copy on CPU (read-only object-store buffers stay
    read-only — the engine never writes into its inputs), one copy to another device."""
    if arrays is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {k: torch.from_numpy(np.asarray(v)).to(device=device, dtype=dtype)
                for k, v in arrays.items()}


@dataclass
class ShardResult:
    """One worker's answer for the clients it was given (fields as :class:`RoundOutput`).

    ``delta_sum`` = Σ_i w_i (y_{i,K} − x) over the shard's finite clients; ``local_params`` (when asked for) are
    the stacked y_{i,K} in the order of the ``client_ids`` the worker was sent.
    """

    client_ids: np.ndarray
    delta_sum: Arrays
    weight_sum: float
    loss_sum: float
    samples: int
    updates: int
    local_params: Arrays | None = None
    steps: np.ndarray | None = None  # u_i, in the order of client_ids
    local_loss: np.ndarray | None = None  # per-client mean local loss (with local_params)
    batch_size: np.ndarray | None = None  # largest minibatch per client (online local programs)
    #: positions (in this shard's job order) of the jobs with non-finite results, left out of
    #: the sums above (not renormalised: the coordinator applies the run's ``on_nonfinite``)
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    compute_s: float = 0.0           # time spent in local training on the worker
    finished_at: float = 0.0         # worker's time.time() when it returned (after any delay)
    worker: dict = field(default_factory=dict)   # slot, node, pid, device
