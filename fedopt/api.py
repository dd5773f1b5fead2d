"""The Python API, as short as the CLI: ``fedopt.run(config) -> RunResult``."""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from torch import nn

from fedopt.config import load_config
from fedopt.data import FederatedDataset
from fedopt.simulation import RunResult, Simulation, summarize


def run(config: Mapping[str, Any] | str | os.PathLike, out_dir: str | os.PathLike | None = None,
        progress: bool | None = None, resume: bool = False, overrides: tuple[str, ...] = (),
        dataset: FederatedDataset | None = None, model: nn.Module | None = None,
        loss: str | Callable[..., Any] | None = None, metrics: Any = None) -> RunResult:
    """Validate ``config`` (a dict or a YAML path), run the simulation, record it.

    With ``out_dir`` the run directory gets config.json, versions.json, metrics.jsonl,
    summary.json and checkpoints/; ``resume=True`` continues from its newest checkpoint that
    loads (a damaged newer one is skipped with a warning) and keeps a longer recorded
    ``algorithm.rounds``/``time_budget``. ``dataset``/``model`` let notebook users pass their
    own FederatedDataset / nn.Module; ``loss`` (a name or a per-sample callable
    ``f(outputs [N, k], targets) -> [N]``) and ``metrics`` (``{name: name or callable}``) replace
    ``client.loss`` / ``client.metrics``; each metric is recorded as ``test_<name>`` (see
    :class:`~fedopt.engine.program.LocalProgram`; on Ray they must pickle).

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
            metrics = _loop(sim, recorder, cfg, progress, Progress)
            metrics = metrics_before + metrics
            summary = summarize(metrics, sim)
            if recorder is not None:
                recorder.write_summary(summary)
        finally:
            sim.close()
    finally:
        if recorder is not None:
            recorder.close()
    return RunResult(metrics=metrics, summary=summary, out_dir=out_dir,
                     final_params=sim.state.params, model=sim.model, config=cfg)


def _loop(sim: Simulation, recorder: Any, cfg: dict[str, Any], progress: bool | None,
          progress_cls: Any) -> list[dict[str, Any]]:
    rounds = cfg["algorithm"]["rounds"]
    with progress_cls(rounds, desc="round", enabled=progress, initial=sim.state.round) as bar:

        def on_eval(row: dict[str, Any]) -> None:
            if recorder is not None:
                recorder.log(row)

        def on_round(r: int, row: dict[str, Any]) -> None:
            post = {}
            if row:
                post = {"loss": row.get("test_loss"), "acc": row.get("test_accuracy"),
                        "upd/s": row.get("client_updates_per_s")}
            bar.update(1, **{k: v for k, v in post.items() if v is not None})

        def on_checkpoint(r: int) -> None:
            if recorder is not None:
                recorder.save_checkpoint(sim.checkpoint(), r)

        return sim.run(on_eval=on_eval, on_round=on_round, on_checkpoint=on_checkpoint)
