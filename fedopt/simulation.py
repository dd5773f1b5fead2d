"""The single-machine federated simulation: config -> data, model, algorithm, executor -> rounds.

One round t: the algorithm samples S_t and the aggregation weights, the executor runs local
training of S_t (vectorized) and returns Σ w_i Δ_i, the algorithm applies the server optimizer.
Every ``eval_every`` rounds the global model is evaluated on the union of all clients' test rows
(and train rows), and a metrics row is recorded. Checkpoints hold the whole server state; since
all randomness is keyed by (seed, round, client), a resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fedopt import tree
from fedopt.algorithms import ServerOptimizer, ServerState, algorithm_specs
from fedopt.client_eval import PerClientEvaluator
from fedopt.executors import executor_entries, realtime_driver
from fedopt.schema import ConfigError, check_clients_per_round
from fedopt.data import FederatedDataset, build_dataset
from fedopt.data.dataset import check_values
from fedopt.data.store import check_mapped_copy
from fedopt.dtypes import DTYPES
from fedopt.engine.batches import capped_batch_size
from fedopt.engine.contract import Executor, check_executor
from fedopt.engine.local import FunctionalModel, LocalTrainer, model_params
from fedopt.engine.program import LocalProgram, PerSample, check_task_fit
from fedopt.local.client_order import with_client_curriculum
from fedopt.local.config import with_local_training
from fedopt.local.records import with_batch_size_columns
from fedopt.models import build_model
from fedopt.optim import from_config as optimizer_from_config
from fedopt.sampled_eval import SampledEvaluator



@dataclass
class RunResult:
    """What :func:`fedopt.run` returns: metrics rows, the summary and the final model."""

    metrics: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: str | None
    final_params: dict[str, torch.Tensor]
    model: nn.Module | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def final(self, key: str) -> Any:
        return self.metrics[-1][key] if self.metrics else None


class Simulation:
    """Builds the pieces of a run from a validated config and steps through rounds."""

    def __init__(self, config: dict[str, Any], *, dataset: FederatedDataset | None = None,
                 model: nn.Module | None = None, loss: str | PerSample | None = None,
                 metrics: Any = None):
        """``loss``/``metrics``: the clients' per-sample loss and the evaluation metrics (see
        :class:`~fedopt.engine.program.LocalProgram`), overriding ``client.loss`` /
        ``client.metrics``; by default the task's (cross-entropy and accuracy for class labels,
        mse and no metric for float targets)."""
        # builders raise ConfigError for a user's configuration mistake; any other error is a
        # bug and keeps its traceback
        try:
            self._build(config, dataset, model, loss, metrics)
        except BaseException:   # a failure after the executor was built: release it
            executor = getattr(self, "executor", None)
            if executor is not None:
                executor.close()
            raise

    def _build(self, config: dict[str, Any], dataset: FederatedDataset | None,
               model: nn.Module | None, loss: str | PerSample | None = None,
               metrics: Any = None) -> None:
        self.config = config
        seed = config["seed"]
        ex = config["executor"]
        self.device = torch.device(ex["device"])
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"executor.device: {ex['device']!r} requested but CUDA is not available")
        self.dtype = DTYPES[ex["dtype"]]
        if ex["num_threads"]:
            torch.set_num_threads(ex["num_threads"])

        # Every user model and data set enters here, whichever executor runs it: the checks
        # below run once, before any executor (in-process or Ray) is built.
        if dataset is not None and not isinstance(dataset, FederatedDataset):
            raise ConfigError(f"dataset must be a fedopt.data.FederatedDataset (see "
                              f"fedopt.data.build_from_arrays), got {type(dataset).__name__}")
        if dataset is not None:
            check_values(dataset)       # what fedopt's own loaders check (finite features)
        data = dataset if dataset is not None else build_dataset(config["data"], seed=seed)
        alg = config["algorithm"]
        check_clients_per_round(alg["clients_per_round"], data.num_clients,
                                "the data set's number of clients")
        check_mapped_copy(data, self.device, self.dtype)
        self.data = data.to(self.device, dtype=self.dtype)
        # a user's module (checked by check_model: no running statistics, vmap-able, float
        # parameters, [B, num_classes] logits) or the config's built-in model (sized first)
        self.model = build_model(config["model"] if model is None else model,
                                 tuple(self.data.feature_shape), self.data.num_classes,
                                 seed=seed, device=self.device, dtype=self.dtype)
        self.fmodel = FunctionalModel(self.model)
        # client.batch_size above the largest client's rows only pads every minibatch: cap it
        # there (the plan is then that of B = n_max, bit for bit); self.config keeps the user's
        # value, the algorithm and executors get the capped one
        self.batch_size = capped_batch_size(config["client"]["batch_size"],
                                            self.data.counts.cpu().numpy())
        if self.batch_size != config["client"]["batch_size"]:
            config = {**config, "client": {**config["client"], "batch_size": self.batch_size}}

        client = config["client"]
        self.client_optimizer = optimizer_from_config(client["optimizer"])
        self.base_client_lr = getattr(self.client_optimizer, "lr", None)
        self.algorithm = build_algorithm(alg, self.data.counts.cpu().numpy(), seed, config)
        self.program = client_program(self.algorithm.local_program(), client,
                                      self.data.is_regression, loss, metrics,
                                      regression_by_name=(dataset is None and
                                                          config["data"]["name"] == "regression"))
        self.program = with_local_training(self.program, client, self.client_optimizer)
        self.algorithm = with_client_curriculum(self.algorithm, config, self.data, self.fmodel,
                                                self.program.loss_fn)
        self.trainer = LocalTrainer(self.fmodel, self.client_optimizer, self.program, seed=seed)
        bind = getattr(self.algorithm, "bind", None)
        if bind is not None:   # decentralized algorithms: the nodes' losses (fedopt.decentralized)
            bind(self.data, self.trainer, None if model is not None else config["model"]["name"])
        self.executor = build_executor(config, self.data, self.trainer)
        if ex.get("realtime"):   # an executor whose schema has it (Ray)
            try:
                self.algorithm = realtime_driver(ex["name"])(self.algorithm, config)
            except TypeError as e:   # not an asynchronous algorithm
                self.executor.close()
                raise ConfigError(f"algorithm.name: {e}") from None
        # evaluation beyond the full global row: a sampled estimate with its CI
        # (eval_clients, fedopt.sampled_eval) and per-client fairness columns (per_client_eval)
        self.sampled_eval = (SampledEvaluator(config, self.data) if config.get("eval_clients")
                             else None)
        self.per_client = (PerClientEvaluator(config, self.data)
                           if config.get("per_client_eval") else None)
        self.state: ServerState = self.algorithm.init(
            model_params(self.model, device=self.device, dtype=self.dtype))
        self.client_updates = 0
        self.samples = 0
        self.train_time_s = 0.0
        self.wall_time_s = 0.0

    # -- one round ---------------------------------------------------------------------------
    def client_optimizer_at(self, round_idx: int):
        decay = self.config["client"]["lr_decay"]
        if decay == 1.0 or self.base_client_lr is None:
            return self.client_optimizer
        return self.client_optimizer.replace(lr=self.base_client_lr * decay ** round_idx)

    def step(self) -> dict[str, Any]:
        """Run one server step (a round); returns its statistics (local loss, ...)."""
        start = time.perf_counter()
        self.state, stats = self.algorithm.run_round(
            self.state, self.executor, self.client_optimizer_at(self.state.round))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_time_s += time.perf_counter() - start
        self.client_updates += stats.pop("updates")
        self.samples += stats.pop("samples")
        faults = self.executor.faults()   # remote executors count worker faults; {} in-process
        if faults:
            stats.update({f"faults_{k}": v for k, v in faults.items()})
        return stats

    def evaluate(self) -> dict[str, float]:
        """The global model's test (and, with ``eval_train``, train) loss and metrics, by the
        executor (:meth:`~fedopt.engine.contract.Executor.evaluate`), or with ``eval_clients``
        estimated on a keyed sample of clients (:mod:`fedopt.sampled_eval`)."""
        if self.sampled_eval is not None:
            return self.sampled_eval.row(self.fmodel, self.program, self.data, self.state.params,
                                         self.state.round)
        return self.executor.evaluate(self.state.params, train=self.config["eval_train"])

    def close(self) -> None:
        """Cancel an algorithm's jobs still in flight (real time), then release the executor."""
        try:
            close = getattr(self.algorithm, "close", None)
            if close is not None:
                close(self.executor)
        finally:
            self.executor.close()

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """The whole run state as tensors and plain values (what ``fedopt.records`` stores
        without pickle): server state, counters, train and wall time, seed and config."""
        return {"server": self.state.state_dict(), "client_updates": self.client_updates,
                "samples": self.samples, "train_time_s": self.train_time_s,
                "wall_time_s": self.wall_time_s, "seed": self.config["seed"],
                "config": self.config}

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint` dict. Raises ``ValueError`` when it was written
        with another seed or lacks one of its entries (naming it)."""
        if ckpt.get("seed") != self.config["seed"]:
            raise ValueError(f"seed: checkpoint was written with seed {ckpt.get('seed')}, "
                             f"this run has {self.config['seed']}")
        for key in ("server", "client_updates", "samples"):
            if key not in ckpt:
                raise ValueError(f"checkpoint: no {key!r} entry (not a fedopt run checkpoint)")
        server = ckpt["server"]
        self.state = ServerState.from_state_dict(tree.to(server, self.device))
        self.client_updates = int(ckpt["client_updates"])
        self.samples = int(ckpt["samples"])
        self.train_time_s = float(ckpt.get("train_time_s", 0.0))
        # wall time continues from the checkpoint (older checkpoints: at least the train time)
        self.wall_time_s = float(ckpt.get("wall_time_s", self.train_time_s))

    # -- the loop ----------------------------------------------------------------------------
    def run(self, on_eval: Callable[[dict[str, Any]], None] | None = None,
            on_round: Callable[[int, dict[str, Any]], None] | None = None,
            on_checkpoint: Callable[[int], None] | None = None,
            on_step: Callable[[int, dict[str, Any]], None] | None = None,
            stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Rounds until :meth:`finished` or ``stop()`` (asked after ``on_step`` and after
        ``on_eval``; the round it stops at is then evaluated and checkpointed as the last).
        Per round: ``on_step(round, stats)``, the metrics row and ``on_eval(row)`` (evaluated
        rounds), ``on_round(round, row or {})``, ``on_checkpoint(round)``."""
        cfg = self.config
        metrics = []
        wall_start = time.perf_counter() - self.wall_time_s   # continues after a resume
        last = self.finished()
        while not last:
            stats = self.step()
            r = self.state.round
            if on_step is not None:
                on_step(r, stats)
            last = self.finished() or (stop is not None and stop())
            self.wall_time_s = time.perf_counter() - wall_start
            row = None
            if r % cfg["eval_every"] == 0 or last:
                row = {"round": r, **self.evaluate(), **stats,
                       "client_updates": self.client_updates, "samples": self.samples,
                       "train_time_s": self.train_time_s,
                       "wall_time_s": self.wall_time_s,
                       "client_updates_per_s": self.client_updates / max(self.train_time_s, 1e-9)}
                if self.per_client is not None and self.per_client.due(r, last):
                    row.update(self.per_client.columns(self, r))
                metrics.append(row)
                if on_eval is not None:
                    on_eval(row)
                last = last or (stop is not None and stop())
            if on_round is not None:
                on_round(r, row or {})
            every = cfg["checkpoint_every"]
            if on_checkpoint is not None and ((every and r % every == 0) or last):
                on_checkpoint(r)
        return metrics

    def finished(self) -> bool:
        """``algorithm.rounds`` server steps done, or the algorithm says so (e.g. the virtual
        time budget of an asynchronous algorithm is used up)."""
        done = getattr(self.algorithm, "finished", None)
        return (self.state.round >= self.config["algorithm"]["rounds"]
                or (done is not None and done(self.state)))


def build_executor(config: dict[str, Any], data: FederatedDataset, trainer: LocalTrainer
                   ) -> Executor:
    """The registered executor's ``factory(config, dataset, trainer)``: an
    :class:`~fedopt.engine.contract.Executor` (TypeError naming it when it is not one)."""
    executor = executor_entries()[config["executor"]["name"]].load_factory()(config, data, trainer)
    try:
        check_executor(executor, live=bool(config["executor"].get("realtime")))
    except TypeError:
        executor.close()
        raise
    return executor


def build_algorithm(alg_cfg: dict[str, Any], counts: np.ndarray, seed: int,
                    config: dict[str, Any] | None = None):
    """The algorithm named by a validated ``algorithm:`` config section (``config``: the whole
    run config, for algorithms that read other sections such as ``clock:``)."""
    so = dict(alg_cfg["server_optimizer"])
    if so.get("betas") is not None:
        so["betas"] = tuple(so["betas"])
    from fedopt.algorithms.fedzo import with_estimator

    built = algorithm_specs()[alg_cfg["name"]].build(alg_cfg, counts, seed, ServerOptimizer(**so),
                                                     config or {})
    from fedopt.privacy.config import with_privacy

    built = with_estimator(alg_cfg["name"], built, config or {})   # client.estimator: ZO clients
    built = with_privacy(built, config or {})   # privacy: DP-FedAvg
    return with_batch_size_columns(built, config or {})   # batch_size_mean/max columns


def client_program(program: LocalProgram, client: dict[str, Any], regression: bool,
                   loss: str | PerSample | None = None, metrics: Any = None, *,
                   regression_by_name: bool = False) -> LocalProgram:
    """The algorithm's ``program`` with the run's loss and metrics: the arguments, else the
    config's ``client.loss`` / ``client.metrics``, else the task's defaults. ConfigError naming
    ``client.loss`` / ``client.metrics`` (config) or ``loss`` / ``metrics`` (arguments) for a
    bad value, for a built-in one that does not fit the targets (cross_entropy/accuracy need
    class labels, mse float targets), and when float targets were found in a user's data
    (``regression`` without ``regression_by_name``, i.e. not ``data.name: regression``) but no
    loss says so: a regression run is confirmed by a loss, never inferred silently."""
    pieces = {}
    for key, given in (("loss", loss), ("metrics", metrics)):
        value, field = (given, key) if given is not None else (client.get(key), f"client.{key}")
        check_task_fit(key, value, field, regression, regression_by_name)
        try:
            dataclasses.replace(program, **{key: value})
        except ValueError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(field) or field == key
                              else f"client.{msg}") from None
        pieces[key] = value
    return dataclasses.replace(program, **pieces).for_task(regression)


def summarize(metrics: list[dict[str, Any]], sim: Simulation) -> dict[str, Any]:
    """The run's ``summary.json``: final metrics, the best finite test accuracy (``None`` when
    no row measured one), counters, throughput and the setting."""
    last = metrics[-1] if metrics else {}
    accs = [m.get("test_accuracy") for m in metrics]
    best = max((a for a in accs if isinstance(a, (int, float)) and not isinstance(a, bool)
                and math.isfinite(a)), default=None)
    # a live executor's worker-fault totals (Ray: deaths, timeouts, restarts, ...; this session's
    # when resumed); the in-process executor has none
    faults = sim.executor.faults() if hasattr(sim.executor, "faults") else {}
    return {
        "rounds": sim.state.round,
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "final_train_loss": last.get("train_loss"),
        "best_test_accuracy": best,
        "client_updates": sim.client_updates,
        "samples": sim.samples,
        "train_time_s": sim.train_time_s,
        "client_updates_per_s": sim.client_updates / max(sim.train_time_s, 1e-9),
        "samples_per_s": sim.samples / max(sim.train_time_s, 1e-9),
        "num_clients": sim.data.num_clients,
        "num_params": int(sum(p.numel() for p in sim.state.params.values())),
        "chunk_size": getattr(sim.executor, "chunk_size", None),
        "seed": sim.config["seed"],
        "device": str(sim.device),
        "dataset": sim.data.describe(),
        **({"faults": dict(faults)} if faults else {}),
    }
