"""Callbacks of a run: ``fedopt.run(config, callbacks=[...])``, and the shipped ones.

A :class:`Callback` may define any of these hooks; :func:`fedopt.run` calls them, for every
callback in the order given, at these points of each round t (in this order)::

    on_run_start(ctx, rows)        once, before the first round; rows: the metrics rows already
                                   recorded (those before the checkpoint a run resumes from)
    on_round_end(ctx, t, stats)    after the server step of round t; stats: its training
                                   statistics (local_loss, ...)
    on_evaluation(ctx, t, row)     after round t's metrics row was recorded: the row exactly as
                                   written to metrics.jsonl (rounds that are evaluated)
    on_checkpoint(ctx, t, path)    after the checkpoint of round t was written (runs with an
                                   out directory)
    on_run_end(ctx, rows)          once, after the last round, with every row of the run

``ctx`` is a :class:`RunContext`: the :class:`~fedopt.simulation.Simulation` (read-only use:
its state, data, config), the run directory and :meth:`RunContext.request_stop`, which ends the
run after the current round (it is then evaluated and checkpointed as a last round; the summary
records ``stopped_by``). A resumed run calls the hooks for the rounds it runs, never again for
recorded rows (``on_run_start`` gets those, e.g. to rebuild a callback's state).

Shipped: :class:`EarlyStopping`, :class:`TensorBoardLogger` (``tensorboard: true``) and
:class:`CsvLogger` (``csv: true``).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from fedopt.records import CSV_FILE, TENSORBOARD_DIR

HOOKS = ("on_run_start", "on_round_end", "on_evaluation", "on_checkpoint", "on_run_end")


@dataclass
class RunContext:
    """What a hook sees: the simulation, the run directory (None without one) and the stop
    request (:meth:`request_stop`; ``stop_reason`` once requested)."""

    simulation: Any
    out_dir: str | None = None
    stop_reason: str | None = field(default=None)

    def request_stop(self, reason: str) -> None:
        """End the run after the current round (the first reason given is kept)."""
        if self.stop_reason is None:
            self.stop_reason = str(reason)


class Callback:
    """Base class: every hook does nothing (see the module docstring for when each runs)."""

    def on_run_start(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None: ...

    def on_round_end(self, ctx: RunContext, round: int, stats: dict[str, Any]) -> None: ...

    def on_evaluation(self, ctx: RunContext, round: int, row: dict[str, Any]) -> None: ...

    def on_checkpoint(self, ctx: RunContext, round: int, path: str) -> None: ...

    def on_run_end(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None: ...


def check_callbacks(callbacks: Sequence[Any] | None) -> list[Any]:
    """The callbacks as a list; TypeError naming ``callbacks[i]`` for an object with none of
    the hooks (a class passed instead of an instance, say)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks: expected a list of callbacks, got {type(callbacks).__name__}")
    out = list(callbacks)
    for i, cb in enumerate(out):
        if isinstance(cb, type) or not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise TypeError(f"callbacks[{i}]: {cb!r} has none of the hooks {', '.join(HOOKS)} "
                            f"(pass an instance, e.g. EarlyStopping(...))")
    return out


def dispatch(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every callback that has it, in order."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    evaluations in a row (``mode``: ``"max"`` — higher is better — or ``"min"``). A missing,
    None or non-finite value counts as no improvement. On resume the state is rebuilt from the
    recorded rows, so a resumed run stops where the uninterrupted one would."""

    def __init__(self, metric: str = "test_accuracy", patience: int = 5, mode: str = "max",
                 min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode: 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: an integer >= 1, got {patience!r}")
        if not _number(min_delta) or not min_delta >= 0:
            raise ValueError(f"min_delta: a number >= 0, got {min_delta!r}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, min_delta
        self.best: float | None = None
        self.best_round: int | None = None
        self.bad = 0

    def _update(self, round: int, row: dict[str, Any]) -> bool:
        v = row.get(self.metric)
        ok = _number(v) and math.isfinite(v)
        better = ok and (self.best is None or
                         (v > self.best + self.min_delta if self.mode == "max"
                          else v < self.best - self.min_delta))
        if better:
            self.best, self.best_round, self.bad = float(v), round, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def on_run_start(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None:
        self.best, self.best_round, self.bad = None, None, 0
        for row in rows:
            self._update(int(row["round"]), row)

    def on_evaluation(self, ctx: RunContext, round: int, row: dict[str, Any]) -> None:
        if self._update(round, row):
            ctx.request_stop(f"early stopping: {self.metric} did not improve for "
                             f"{self.patience} evaluations (best {self.best} at round "
                             f"{self.best_round})")


class TensorBoardLogger(Callback):
    """Every numeric column of every metrics row as a TensorBoard scalar (tag: the column
    name, step: the round), written with ``torch.utils.tensorboard.SummaryWriter`` to
    ``log_dir`` (default ``<out>/tensorboard``). A resumed run writes a purge marker at its
    first round, so TensorBoard drops the events of rounds it recomputes (no duplicates)."""

    def __init__(self, log_dir: str | os.PathLike | None = None):
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.writer: Any = None

    def on_run_start(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None:
        from fedopt.extras import require

        require("tensorboard", "tensorboard: true")   # torch's writer needs it: name the extra
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir
        if log_dir is None:
            if ctx.out_dir is None:
                raise ValueError("TensorBoardLogger: give log_dir, or run with an out directory")
            log_dir = os.path.join(ctx.out_dir, TENSORBOARD_DIR)
        start = ctx.simulation.state.round
        self.writer = SummaryWriter(log_dir, purge_step=start + 1 if start else None)

    def on_evaluation(self, ctx: RunContext, round: int, row: dict[str, Any]) -> None:
        for k, v in row.items():
            if k != "round" and _number(v):
                self.writer.add_scalar(k, v, global_step=round)

    def on_checkpoint(self, ctx: RunContext, round: int, path: str) -> None:
        self.writer.flush()

    def on_run_end(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def metrics_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text: one column per key (first-seen order, ``round`` first), an empty
    field where a row lacks the key or it is None (not measured); floats in ``repr`` (exact,
    ``nan``/``inf`` as Python writes them)."""
    keys: dict[str, None] = {"round": None}
    for row in rows:
        keys.update(dict.fromkeys(row))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for row in rows:
        w.writerow(["" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float)
                    else row[k] for k in keys])
    return buf.getvalue()


class CsvLogger(Callback):
    """``metrics.csv`` (or ``path``): every metrics row of the run (:func:`metrics_csv`),
    rewritten atomically at each checkpoint and at the end of the run — the same rows as
    ``metrics.jsonl``, the recorded ones of a resumed run included."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.rows: list[dict[str, Any]] = []

    def _target(self, ctx: RunContext) -> str:
        if self.path is not None:
            return self.path
        if ctx.out_dir is None:
            raise ValueError("CsvLogger: give path, or run with an out directory")
        return os.path.join(ctx.out_dir, CSV_FILE)

    def on_run_start(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        self._target(ctx)

    def on_evaluation(self, ctx: RunContext, round: int, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def write(self, ctx: RunContext) -> None:
        from fedopt.runfiles import atomic_write_bytes, run_dir_errors

        target = self._target(ctx)
        with run_dir_errors(target, "write"):
            atomic_write_bytes(target, metrics_csv(self.rows).encode())

    def on_checkpoint(self, ctx: RunContext, round: int, path: str) -> None:
        self.write(ctx)

    def on_run_end(self, ctx: RunContext, rows: list[dict[str, Any]]) -> None:
        self.write(ctx)
