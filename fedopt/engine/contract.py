"""The executor contract: what every algorithm may ask of the place where clients run.

An *executor* runs local jobs — client ``i`` trains from a start model with minibatches keyed by
``(seed, key, i, epoch)`` — and returns their weighted sum. Algorithms are written against
:class:`Executor` only: they never probe an executor (``hasattr``) or touch its members beyond
this contract, so one code path runs in-process (:class:`~fedopt.engine.executor.
VectorizedExecutor`), on Ray (:class:`fedopt.server.ray_executor.RayExecutor`) and on any executor a
plug-in registers. Live executors (clients answering in real time) add :class:`LiveExecutor`'s
``submit`` / ``wait`` / ``cancel``.

Conventions of every method (m jobs, ``Params`` = ``{name: Tensor}`` in the run's dtype and on
the coordinator's device; "stacked" = one leading job dimension ``[m, *shape]``):

* ``client_ids``: int64 ``[m]``, global client ids 0 … N−1; a client may appear more than once
  (two jobs from different starts or keys).
* ``keys``: int64 ``[m]``: job j's minibatch plan (and any keyed randomness of its local
  program) is drawn from ``(seed, keys[j], client_ids[j])`` — the round for synchronous
  algorithms, the start version ρ for asynchronous ones. Equal (start, client, key) give equal
  bits whatever else runs in the call, however jobs are chunked or sharded.
* ``weights``: float64 ``[m]``, the aggregation weights w_j (any real numbers; not normalised).
* ``starts``: one model per job, stacked ``[m, *shape]``, or :class:`SharedStart` (every job
  from one model, shipped once: a synchronous round).
* the result Δ_j = y_{j,u_j} − start_j after job j's u_j local steps (the executor's local step
  rule: ``client.local_steps`` / ``client.local_epochs``, batch size B).

Non-finite results (NaN/±inf final parameters or mean local loss) follow the executor's declared
``on_nonfinite`` policy — the run's: ``"error"`` raises
:class:`~fedopt.engine.nonfinite.NonFiniteError` naming the clients and keys, ``"drop"`` leaves
them out of the sums and renormalises over the others
(:func:`~fedopt.engine.executor.drop_scale`), listing them in :attr:`RoundOutput.nonfinite`;
``"report"`` (a remote worker's executor) leaves them out without renormalising and never raises.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from torch import Tensor

Params = dict[str, Tensor]

#: ``delay_s(client_id, key) -> seconds``: an injected compute time (straggler studies)
DelayFn = Callable[[int, int], float]


@dataclass(frozen=True)
class SharedStart:
    """Every job of a :meth:`Executor.run_jobs` call starts from this one model (unstacked
    ``{name: [*shape]}``): a synchronous round. Executors ship it once per call."""

    params: Params


#: what :meth:`Executor.run_jobs` starts from: stacked ``[m, *shape]`` or one shared model
Starts = Params | SharedStart


@dataclass
class RoundOutput:
    """The typed result of :meth:`Executor.run_jobs` (m jobs; sums over the kept jobs)."""

    delta_sum: Params          # Σ_j w_j Δ_j, unstacked [*shape], params' dtype
    weight_sum: float          # Σ_j w_j over all m jobs (float64)
    loss_sum: float            # Σ_j w_j · L_j, L_j job j's mean local minibatch loss
    samples: int               # real samples processed (padding excluded), all jobs
    updates: int               # jobs in the sums (m minus non-finite / dropped ones)
    local_params: Params | None = None  # stacked y_{j,u_j} [m, *shape] (with keep_local)
    steps: np.ndarray | None = None     # int64 [m]: u_j, each job's number of local steps
    local_loss: np.ndarray | None = None  # float64 [m]: L_j (with keep_local)
    #: int64 positions (0..m−1, in job order) of the jobs left out for non-finite values — by
    #: position, since a client may run two jobs in one call; their rows of ``local_params`` /
    #: ``local_loss`` are kept as computed; the sums above are over the other jobs
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: int64 [m]: each job's largest minibatch, from local programs that choose their batch
    #: sizes online (fedopt.local); None: every job used the fixed client.batch_size
    batch_size: np.ndarray | None = None

    def kept(self, num_jobs: int) -> np.ndarray:
        """Bool mask over the call's ``num_jobs`` jobs: False for those left out as non-finite
        (stragglers a live executor dropped are not listed here: they are not in ``updates``)."""
        mask = np.ones(int(num_jobs), dtype=bool)
        mask[np.asarray(self.nonfinite, dtype=np.int64)] = False
        return mask


@dataclass
class ClientUpdate:
    """One job's result from a live executor (:meth:`LiveExecutor.wait`)."""

    client_id: int
    key: int             # the key the job was submitted with (its start version)
    delta: Params        # Δ = y_{u} − x, x the params it was submitted with (unstacked)
    mean_loss: float     # the job's mean local loss (the group's mean when grouped)
    samples: int         # samples processed (the group's total when grouped)
    slot: int            # the worker that answered
    elapsed_s: float     # submit -> result arrival, wall seconds on the coordinator
    compute_s: float     # local training seconds on the worker
    finished_at: float   # the worker's time.time() when it answered
    #: NaN/±inf result (checked where it ran): ``delta``/``mean_loss`` are not to be used; the
    #: caller applies ``on_nonfinite``
    nonfinite: bool = False


@runtime_checkable
class Executor(Protocol):
    """Runs clients' local jobs and evaluates the global model (see the module docstring).

    Declared attributes: ``name`` (the registry name, e.g. ``"local"``, ``"ray"``: messages
    name it); ``on_nonfinite`` (the run's policy, ``"error"`` | ``"drop"``; ``"report"`` on a
    worker); ``optimizer`` (the client optimizer a job runs with when ``run_jobs`` gets none).
    """

    name: str
    on_nonfinite: str
    optimizer: Any

    def run_jobs(self, starts: Starts, client_ids: np.ndarray, keys: np.ndarray,
                 weights: np.ndarray, optimizer: Any = None, correction: Params | None = None,
                 keep_local: bool = False) -> RoundOutput:
        """Job j trains client ``client_ids[j]`` from ``starts[j]`` (or the shared start) with
        minibatches keyed by ``keys[j]``; returns Σ_j w_j Δ_j and the statistics above.

        ``optimizer``: a :class:`~fedopt.optim.core.FunctionalOptimizer` (fresh state per job);
        ``correction``: stacked ``[m, *shape]``, added to every local gradient of job j;
        ``keep_local``: also return the stacked y_j and L_j. Equal to running each job alone,
        bit for bit in-process (summation order may differ across shards)."""
        ...

    def full_gradients(self, params: Params, client_ids: np.ndarray) -> Params:
        """∇F_i(x) = (1/n_i) Σ_{r∈D_i} ∇ℓ(x; r) over each client's full training rows at the
        one model ``params``: stacked ``[m, *shape]`` in ``client_ids`` order, params' dtype."""
        ...

    def evaluate(self, params: Params, train: bool = False) -> dict[str, float | None]:
        """The global model's mean loss and the run program's metrics over every client's test
        rows (``test_loss``, ``test_<metric>`` such as ``test_accuracy``; with ``train`` also
        ``train_*`` over the training rows). Floats; a metric is None when the model's outputs
        were not finite, and every value is None when there are no rows (not measured)."""
        ...

    def job_samples(self, client_ids: np.ndarray) -> np.ndarray:
        """int64 ``[m]``: the real samples one local job of each client processes."""
        ...

    def faults(self) -> dict[str, int]:
        """Cumulative fault counters (worker deaths, timeouts, retries, drops); ``{}`` where
        nothing can fail (in-process)."""
        ...

    def close(self) -> None:
        """Release workers and devices; safe to call twice."""
        ...


@runtime_checkable
class LiveExecutor(Executor, Protocol):
    """An executor whose jobs run in real time: start them, collect them as they finish."""

    def submit(self, params: Params, client_ids: np.ndarray, key: int, *, optimizer: Any = None,
               correction: Params | None = None, delay_s: DelayFn | None = None,
               group: bool = False) -> list[Any]:
        """Start one job per client (``group``: one per worker) from ``params`` (unstacked) with
        minibatches keyed by ``key``; returns opaque job handles for :meth:`wait`/:meth:`cancel`.
        ``delay_s(client, key)`` holds each answer that many seconds after its start."""
        ...

    def wait(self, jobs: Sequence[Any], num_returns: int = 1, timeout: float | None = None
             ) -> tuple[list[ClientUpdate], list[Any]]:
        """Block until ``num_returns`` of ``jobs`` finished or ``timeout`` seconds passed;
        returns their updates (in finishing order) and the jobs still pending."""
        ...

    def cancel(self, jobs: Sequence[Any]) -> None:
        """Forget ``jobs``: queued ones never run, running ones finish unread."""
        ...


@dataclass
class CodedAnswer:
    """One coded worker's answer in a coded round (:class:`CodedExecutor`)."""

    worker: int                  # the coded worker
    results: Params              # {name: float64 [slots, d]}: its task results, flat
    finite: bool                 # every result finite (checked where it ran)
    compute_s: float             # seconds its call computed (shared by its actor's workers)
    finished_at: float           # the worker's time.time() when it answered


@runtime_checkable
class CodedExecutor(LiveExecutor, Protocol):
    """A live executor that runs coded gradient tasks (gradient coding, sequential gradient
    coding): n coded workers per round, worker i's task results r = Σ_c a_c g_c(θ_j)."""

    def submit_coded(self, params_list: Sequence[Params], tasks: Sequence[tuple],
                     key: int, *, job_keys: Sequence[int] | None = None,
                     delays: np.ndarray | None = None) -> Any:
        """Start a round: ``tasks`` = ``[(worker, [(job, client_ids, coefs), ...]), ...]``,
        g_c = ∇F_c at ``params_list[job]`` (or, with ``job_keys``, −Δ_c of one SGD step with
        lr 1 on the minibatch keyed by ``job_keys[job]``); ``delays[worker]``: seconds each
        answer is held after the round started (None: real compute times)."""
        ...

    def wait_coded(self, call: Any, timeout: float | None = None
                   ) -> tuple[list[CodedAnswer], list[int]]:
        """The answers ready within ``timeout`` seconds (in finishing order) and the coded
        workers lost since the last wait (their worker died: they never answer)."""
        ...

    def cancel_coded(self, call: Any) -> None:
        """The round's remaining answers are not needed."""
        ...


def check_executor(executor: Any, live: bool = False) -> None:
    """TypeError naming the executor when it does not implement the contract (build time)."""
    proto = LiveExecutor if live else Executor
    if not isinstance(executor, proto):
        missing = [m for m in _members(proto) if not hasattr(executor, m)]
        name = getattr(executor, "name", type(executor).__name__)
        raise TypeError(f"executor {name!r} does not implement {proto.__name__} "
                        f"(missing: {', '.join(missing)})")


def check_coded(executor: Any, who: str) -> None:
    """TypeError naming the executor when it cannot run coded tasks (:class:`CodedExecutor`)."""
    if not isinstance(executor, CodedExecutor):
        raise TypeError(f"{who}: executor {getattr(executor, 'name', type(executor).__name__)!r}"
                        f" does not run coded tasks (CodedExecutor: submit_coded, wait_coded, "
                        f"cancel_coded)")


def _members(proto: type) -> list[str]:
    names: list[str] = []
    for klass in proto.__mro__:
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names += [n for n in list(getattr(klass, "__annotations__", {})) + list(vars(klass))
                  if not n.startswith("_") and n not in names]
    return names
