"""The Python API, as short as the CLI: ``fedopt.run(config) -> RunResult``."""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from fedopt.callbacks import (CsvLogger, RunContext, TensorBoardLogger, check_callbacks,
                              dispatch)
from fedopt.config import load_config
from fedopt.data import FederatedDataset
from fedopt.simulation import RunResult, Simulation, summarize


def run(config: Mapping[str, Any] | str | os.PathLike, out_dir: str | os.PathLike | None = None,
        progress: bool | None = None, resume: bool = False, overrides: tuple[str, ...] = (),
        dataset: FederatedDataset | None = None, model: nn.Module | None = None,
        loss: str | Callable[..., Any] | None = None, metrics: Any = None,
        callbacks: Sequence[Any] | None = None) -> RunResult:
    """Validate ``config`` (a dict or a YAML path), run the simulation, record it.

    With ``out_dir`` the run directory gets config.json, versions.json, metrics.jsonl,
    summary.json and checkpoints/; ``resume=True`` continues from its newest checkpoint that
    loads (a damaged newer one is skipped with a warning) and keeps a longer recorded
    ``algorithm.rounds``/``time_budget``. ``dataset``/``model`` let notebook users pass their
    own FederatedDataset / nn.Module; ``loss`` (a name or a per-sample callable
    ``f(outputs [N, k], targets) -> [N]``) and ``metrics`` (``{name: name or callable}``) replace
    ``client.loss`` / ``client.metrics``; each metric is recorded as ``test_<name>`` (see
    :class:`~fedopt.engine.program.LocalProgram`; on Ray they must pickle).

    ``callbacks``: :class:`~fedopt.callbacks.Callback` objects whose hooks run at the start,
    each round's end, each evaluation, each checkpoint and the end of the run, in the order
    given (see :mod:`fedopt.callbacks`; ``EarlyStopping`` is one). With an out directory the
    config's ``tensorboard`` / ``csv`` add a :class:`~fedopt.callbacks.TensorBoardLogger` /
    :class:`~fedopt.callbacks.CsvLogger` after them.

    The folder is checked (and locked) before anything expensive is built, and whatever was
    built (executor, Ray workers) is closed on every exit, errors included. Raises
    ``ConfigError`` for a bad config, from :mod:`fedopt.records`: ``RunExistsError`` (a
    started run without ``resume``), ``ResumeMismatchError``, ``MetricsError`` (rows missing
    from metrics.jsonl) and ``RunLockedError`` (another process writes the folder), from
    :mod:`fedopt.checkpoint`: ``CheckpointError`` (no checkpoint loads), and from
    :mod:`fedopt.runfiles`: ``RunDirError`` (an OS error, naming the path).
    """
    from fedopt.progress import Progress
    from fedopt.records import RunRecorder

    cfg = load_config(config, overrides)
    callbacks = check_callbacks(callbacks)
    shipped = _shipped_callbacks(cfg, out_dir)
    callbacks = callbacks + shipped
    recorder = None
    metrics_before: list[dict[str, Any]] = []
    ckpt = None
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        recorder = RunRecorder(out_dir, cfg, cfg["seed"], resume=resume)
    try:
        if recorder is not None:
            cfg = recorder.apply_kept_values(cfg)
            if resume:   # read and verify before building anything (a Ray cluster, data)
                ckpt = recorder.load_resume_checkpoint()
        sim = Simulation(cfg, dataset=dataset, model=model, loss=loss, metrics=metrics)
        try:
            if recorder is not None and resume:
                if ckpt is not None:
                    sim.restore(ckpt)
                metrics_before = recorder.resume_metrics(
                    sim.state.round, None if ckpt is None else ckpt.get("metrics_rows"))
            ctx = RunContext(sim, out_dir)
            dispatch(callbacks, "on_run_start", ctx, metrics_before)
            metrics = _loop(sim, recorder, cfg, progress, Progress, callbacks, ctx)
            metrics = metrics_before + metrics
            summary = summarize(metrics, sim)
            if ctx.stop_reason is not None:
                summary["stopped_by"] = ctx.stop_reason
            if recorder is not None:
                recorder.write_summary(summary)
            dispatch(callbacks, "on_run_end", ctx, metrics)
        finally:
            sim.close()
    finally:
        for cb in shipped:   # event files closed on every exit, errors included
            if isinstance(cb, TensorBoardLogger):
                cb.close()
        if recorder is not None:
            recorder.close()
    return RunResult(metrics=metrics, summary=summary, out_dir=out_dir,
                     final_params=sim.state.params, model=sim.model, config=cfg)


def _shipped_callbacks(cfg: dict[str, Any], out_dir: Any) -> list[Any]:
    """The loggers the config asks for (``tensorboard``, ``csv``): they write into the run
    directory, so without one they are left out with a warning."""
    asked = [k for k in ("tensorboard", "csv") if cfg.get(k)]
    if asked and out_dir is None:
        warnings.warn(f"{', '.join(asked)}: written into the run directory; this run has no "
                      f"out_dir, so nothing is written", stacklevel=3)
        return []
    return ([TensorBoardLogger()] if cfg.get("tensorboard") else []) + \
        ([CsvLogger()] if cfg.get("csv") else [])


def _loop(sim: Simulation, recorder: Any, cfg: dict[str, Any], progress: bool | None,
          progress_cls: Any, callbacks: list[Any] = (), ctx: Any = None
          ) -> list[dict[str, Any]]:
    rounds = cfg["algorithm"]["rounds"]
    with progress_cls(rounds, desc="round", enabled=progress, initial=sim.state.round) as bar:

        def on_eval(row: dict[str, Any]) -> None:
            if recorder is not None:
                recorder.log(row)
            dispatch(callbacks, "on_evaluation", ctx, row["round"], row)

        def on_round(r: int, row: dict[str, Any]) -> None:
            post = {}
            if row:
                post = {"loss": row.get("test_loss"), "acc": row.get("test_accuracy"),
                        "upd/s": row.get("client_updates_per_s")}
            bar.update(1, **{k: v for k, v in post.items() if v is not None})

        def on_checkpoint(r: int) -> None:
            if recorder is not None:
                path = recorder.save_checkpoint(sim.checkpoint(), r)
                dispatch(callbacks, "on_checkpoint", ctx, r, path)

        def on_step(r: int, stats: dict[str, Any]) -> None:
            dispatch(callbacks, "on_round_end", ctx, r, stats)

        return sim.run(on_eval=on_eval, on_round=on_round, on_checkpoint=on_checkpoint,
                       on_step=on_step if callbacks else None,
                       stop=(lambda: ctx.stop_reason is not None) if callbacks else None)
