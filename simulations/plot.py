"""Curves and tables drawn from run directories (``metrics.jsonl``), headless (Agg).

* :func:`plot_run` — one run: loss and accuracy against round, wall time and, when recorded,
  virtual time.
* :func:`plot_runs` — several runs overlaid; runs sharing a label (seeds) are drawn as their
  mean with a min/max band.
* :func:`results_table` — an aligned fixed-width text table of metric rows.

Non-finite values (a diverged run: NaN/±inf floats, or the strings ``"nan"``/``"inf"``/
``"-inf"`` of ``metrics.jsonl``) are never dropped silently: a curve is drawn up to where its
metric became non-finite, the point is marked with a dotted vertical line and noted in the
legend, and a :class:`NonFiniteMetricWarning` names the run and the metric. ``None`` (not
measured in that row) is simply skipped.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedopt.jsonio import read_json
from fedopt.records import CONFIG_FILE, read_metrics

PathLike = str | os.PathLike

#: x axes a run can be drawn against, with their axis labels.
X_AXES = {"round": "round", "client_updates": "client updates", "wall_time_s": "wall time (s)",
          "virtual_time": "virtual time", "gradient_steps": "gradient steps",
          "communications": "communications"}
LOSS_COLUMNS = ("test_loss", "train_loss")
#: per-client columns (``per_client_eval``) are drawn as their mean with a band from the worst
#: to the best 10 % of clients; a sampled estimate (``eval_clients``) with its 95 % CI band
ACCURACY_COLUMNS = ("test_accuracy", "client_test_accuracy_mean", "personal_test_accuracy_mean")
#: decentralized runs' optimization columns, drawn on a log scale
LOG_COLUMNS = ("suboptimality", "consensus_error")
_LABELS = {"test_loss": "test loss", "train_loss": "train loss", "test_accuracy": "test accuracy",
           "train_accuracy": "train accuracy",
           "client_test_accuracy_mean": "per-client accuracy (mean; worst–best 10 %)",
           "personal_test_accuracy_mean": "personalised accuracy (mean; worst–best 10 %)",
           "suboptimality": "f(x̄) − f*", "consensus_error": "consensus error"}


def _pyplot():
    from fedopt.extras import require

    matplotlib = require("matplotlib", "fedopt plot")

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


class NonFiniteMetricWarning(UserWarning):
    """A plotted metric became NaN/inf: its curve stops there."""


_NONFINITE_STRINGS = {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}


def _nonfinite(v: Any) -> bool:
    """Whether ``v`` is a recorded non-finite number (float NaN/±inf or its JSON string)."""
    if isinstance(v, str):
        return v.strip().lower() in _NONFINITE_STRINGS
    return isinstance(v, float) and not math.isfinite(v)


def first_nonfinite(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> float | None:
    """The smallest finite ``x`` of a row whose ``y`` is non-finite, or None."""
    xs = [_number(r.get(x)) for r in rows if _nonfinite(r.get(y))]
    xs = [v for v in xs if v is not None]
    return min(xs) if xs else None


def _finite_prefix(rows: Sequence[Mapping[str, Any]], x: str, y: str
                   ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """:func:`series` up to (excluding) the first x where ``y`` is non-finite, and that x."""
    xs, ys = series(rows, x, y)
    bad = first_nonfinite(rows, x, y)
    if bad is not None:
        keep = xs < bad
        xs, ys = xs[keep], ys[keep]
    return xs, ys, bad


def _warn_nonfinite(run: str, metric: str, x: str, at: float) -> None:
    warnings.warn(f"{run}: {metric} is non-finite (NaN/inf) from {X_AXES.get(x, x)} {at:g} on; "
                  f"its curve stops there", NonFiniteMetricWarning, stacklevel=3)


def has_column(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    """Whether any row holds a finite number under ``column``."""
    return any(_number(r.get(column)) is not None for r in rows)


def series(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) points of rows where both columns are finite numbers, sorted by x."""
    pts = [(_number(r.get(x)), _number(r.get(y))) for r in rows]
    pts = sorted((a, b) for a, b in pts if a is not None and b is not None)
    if not pts:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pts, dtype=float)
    return arr[:, 0], arr[:, 1]


def _load_rows(run_dir: PathLike) -> list[dict[str, Any]]:
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{os.fspath(run_dir)}: metrics.jsonl has no rows to plot")
    return rows


def _save(fig, path: Path) -> str:
    """Write ``fig`` as a PNG marked as fedopt's (``Source: fedopt``), atomically; a file of
    that name that fedopt did not write is left alone (ValueError naming it)."""
    import io

    from fedopt.runfiles import PNG_SOURCE, atomic_write_bytes, is_fedopt_png

    if path.exists() and not is_fedopt_png(path):
        _pyplot().close(fig)
        raise ValueError(f"{os.fspath(path)}: exists and was not written by fedopt; left alone "
                         f"(choose another --out)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Source": PNG_SOURCE})
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return os.fspath(path)


def plot_run(run_dir: PathLike, out: PathLike | None = None) -> list[str]:
    """Write ``loss_vs_<x>.png`` and ``accuracy_vs_<x>.png`` for x in round, wall_time_s and
    (when present) virtual_time, gradient_steps and communications into ``out`` (default
    ``run_dir/plots``), and for decentralized runs ``suboptimality_vs_<x>.png`` (f(x̄) − f* and
    the consensus error, log scale); returns the paths.

    A metric that became non-finite is drawn up to that point and marked there (dotted line,
    legend note); a :class:`NonFiniteMetricWarning` names the run and the metric."""
    rows = _load_rows(run_dir)
    out_dir = Path(run_dir) / "plots" if out is None else Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = _run_title(run_dir)
    plt = _pyplot()
    written = []
    for x, xlabel in X_AXES.items():
        if not has_column(rows, x):
            continue
        for name, columns, ylabel in (("loss", LOSS_COLUMNS, "loss"),
                                      ("accuracy", ACCURACY_COLUMNS, "accuracy"),
                                      ("suboptimality", LOG_COLUMNS, "log scale")):
            present = [c for c in columns
                       if has_column(rows, c) or first_nonfinite(rows, x, c) is not None]
            if not present:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for c in present:
                xs, ys, bad = _finite_prefix(rows, x, c)
                label = _LABELS.get(c, c)
                if bad is not None:
                    label += f" (non-finite from {bad:g})"
                    if x == "round":
                        _warn_nonfinite(os.fspath(run_dir), c, x, bad)
                (line,) = ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
                _band(ax, rows, x, c, line.get_color(), bad)
                if bad is not None:
                    ax.axvline(bad, color=line.get_color(), linestyle=":", linewidth=1.5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if columns == LOG_COLUMNS:
                ax.set_yscale("log")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
            written.append(_save(fig, out_dir / f"{name}_vs_{x}.png"))
    if not written:
        raise ValueError(f"{os.fspath(run_dir)}: no plottable columns (need round or "
                         f"wall_time_s with test_loss, train_loss or test_accuracy)")
    return written


def _band(ax, rows: Sequence[Mapping[str, Any]], x: str, column: str, color: Any,
          until: float | None) -> None:
    """Shade ``column``'s spread where recorded: a per-client ``*_mean`` between its
    ``*_worst10`` and ``*_best10``, or an estimate ± its ``*_ci`` half-width (up to ``until``,
    where the metric became non-finite)."""
    if column.endswith("_mean"):
        lo, hi = column[:-len("mean")] + "worst10", column[:-len("mean")] + "best10"
        pts = [(_number(r.get(x)), _number(r.get(lo)), _number(r.get(hi))) for r in rows]
    else:
        pts = []
        for r in rows:
            v, h = _number(r.get(column)), _number(r.get(column + "_ci"))
            pts.append((_number(r.get(x)), None if v is None or h is None else v - h,
                        None if v is None or h is None else v + h))
    pts = sorted(p for p in pts if None not in p and (until is None or p[0] < until))
    if pts:
        a = np.asarray(pts, dtype=float)
        ax.fill_between(a[:, 0], np.minimum(a[:, 1], a[:, 2]), np.maximum(a[:, 1], a[:, 2]),
                        color=color, alpha=0.2, linewidth=0)


def _run_title(run_dir: PathLike) -> str:
    """The config's ``name`` if recorded, else the directory name."""
    cfg_path = Path(run_dir) / CONFIG_FILE
    try:
        name = read_json(cfg_path).get("name") if cfg_path.is_file() else None
    except (ValueError, OSError, AttributeError):
        name = None
    return str(name) if name else Path(run_dir).resolve().name


def aggregate(runs: Sequence[tuple[np.ndarray, np.ndarray]],
              grid_points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over several (x, y) curves: on their shared x values if all runs
    have the same x, else interpolated on a grid over the x range they all cover."""
    runs = [(x, y) for x, y in runs if len(x)]
    if not runs:
        e = np.empty(0)
        return e, e, e, e
    first = runs[0][0]
    if all(len(x) == len(first) and np.array_equal(x, first) for x, _ in runs):
        grid = first
        ys = np.stack([y for _, y in runs])
    else:
        lo = max(float(x[0]) for x, _ in runs)
        hi = min(float(x[-1]) for x, _ in runs)
        if hi < lo:
            raise ValueError("runs sharing a label do not overlap on the x axis")
        grid = np.linspace(lo, hi, grid_points) if hi > lo else np.asarray([lo])
        ys = np.stack([np.interp(grid, x, y) for x, y in runs])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_runs(dirs: Sequence[PathLike], labels: Sequence[str] | None = None,
              out: PathLike | None = None, x: str = "round",
              metrics: Sequence[str] = ("test_loss", "test_accuracy", "train_loss", *LOG_COLUMNS)
              ) -> list[str]:
    """Overlay several runs, one PNG per metric (``<metric>_vs_<x>.png`` in ``out``, default
    ``<common parent of dirs>/comparison``). Runs with the same label are one curve: the
    mean over them, with a shaded min/max band; a run's curve stops where its metric became
    non-finite (:class:`NonFiniteMetricWarning` names it). Returns the written paths."""
    dirs = list(dirs)
    if not dirs:
        raise ValueError("dirs: need at least one run directory")
    if labels is None:
        labels = [_run_title(d) for d in dirs]
    labels = list(labels)
    if len(labels) != len(dirs):
        raise ValueError(f"labels: got {len(labels)} labels for {len(dirs)} run directories")
    if x not in X_AXES:
        raise ValueError(f"x: must be one of {', '.join(X_AXES)}, got {x!r}")
    groups: OrderedDict[str, list[list[dict[str, Any]]]] = OrderedDict()
    group_dirs: dict[str, list[str]] = {}
    for d, label in zip(dirs, labels):
        rows = _load_rows(d)
        if not has_column(rows, x):
            raise ValueError(f"{os.fspath(d)}: metrics have no {x!r} column")
        groups.setdefault(label, []).append(rows)
        group_dirs.setdefault(label, []).append(os.fspath(d))
    if out is None:
        parent = os.path.commonpath([os.path.abspath(os.path.dirname(os.path.abspath(d)))
                                     for d in dirs])
        if os.path.dirname(parent) == parent:   # only the filesystem root is shared
            raise ValueError(f"out: the run directories share no parent folder but {parent}; "
                             f"say where to write the plots (--out)")
        out = os.path.join(parent, "comparison")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    written = []
    for metric in metrics:
        if not any(has_column(rows, metric) for runs in groups.values() for rows in runs):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, runs in groups.items():
            curves = []
            for d, rows in zip(group_dirs[label], runs):
                xs, ys, bad = _finite_prefix(rows, x, metric)
                if bad is not None:
                    _warn_nonfinite(d, metric, x, bad)
                curves.append((xs, ys))
            grid, mean, lo, hi = aggregate(curves)
            if not len(grid):
                continue
            suffix = f" (n={len(runs)})" if len(runs) > 1 else ""
            (line,) = ax.plot(grid, mean, label=f"{label}{suffix}")
            if len(runs) > 1:
                ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(_LABELS.get(metric, metric))
        if metric in LOG_COLUMNS:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"{metric}_vs_{x}.png"))
    if not written:
        raise ValueError(f"metrics: none of {', '.join(metrics)} found in the given runs")
    return written


# ----------------------------------------------------------------------------- tables

def format_cell(value: Any) -> str:
    """A compact text form for a table cell: ``-`` for missing (None), ``nan``/``inf`` for
    non-finite values (measured, not missing), floats to 4 decimals
    (scientific when very large or small), ints as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else str(value)
        a = abs(value)
        if value == 0:
            return "0"
        if a >= 9_999_999.95 or a < 1e-3:
            return f"{value:.3e}"
        if a >= 999.99995:  # so 999.99999 shows as 1000.0, like 1000.0 itself
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def _is_numeric(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)) \
        or type(value).__module__.startswith(("numpy", "torch"))


def results_table(rows: Sequence[Mapping[str, Any]],
                  columns: Sequence[str | tuple[str, str]] | None = None) -> str:
    """An aligned text table: one line per row, a header and a rule. ``columns`` lists keys
    (or ``(key, header)`` pairs); default: every key in order of first appearance. Numeric
    columns are right-aligned, text left-aligned; a missing value shows as ``-``."""
    if columns is None:
        keys = list(OrderedDict.fromkeys(k for r in rows for k in r))
        columns = keys
    cols: list[tuple[str, str]] = []
    for c in columns:
        if isinstance(c, str):
            cols.append((c, c))
        elif isinstance(c, (tuple, list)) and len(c) == 2 and all(isinstance(s, str) for s in c):
            cols.append((c[0], c[1]))
        else:
            raise ValueError(f"columns: expected a key or a (key, header) pair, got {c!r}")
    if not cols:
        return ""
    cells = [[format_cell(r.get(k)) for k, _ in cols] for r in rows]
    numeric = [all(_is_numeric(r.get(k)) for r in rows) for k, _ in cols]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (_, h) in enumerate(cols)]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [fmt([h for _, h in cols]), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)
