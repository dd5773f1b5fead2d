"""The ``fedopt`` command line: run, validate, show and plot experiments.

Also runnable as ``python -m fedopt.simulations.cli``. Heavy imports (torch, matplotlib) happen
inside the subcommands so ``fedopt --help`` is instant.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130

#: Columns of the results table printed after ``fedopt run`` and by ``fedopt show``.
RESULT_COLUMNS = [
    ("round", "round"),
    ("test_accuracy", "test acc"),
    ("test_loss", "test loss"),
    ("train_loss", "train loss"),
    ("client_updates", "client updates"),
    ("client_updates_per_s", "updates/s"),
    ("wall_time_s", "wall time (s)"),
]


class CLIError(Exception):
    """A user-facing problem: printed as ``error: <message>``, exit code 2."""


# ----------------------------------------------------------------------------- seams
# Thin wrappers so the CLI imports the engine lazily and tests can substitute fakes.

def load_config(source: str | os.PathLike | dict, overrides: Sequence[str] = ()) -> dict:
    """``fedopt.config.load_config``."""
    from fedopt.config import load_config as _load_config

    return _load_config(source, overrides)


def run_experiment(config: dict, out_dir: str, progress: bool, resume: bool) -> Any:
    """``fedopt.run`` (from ``fedopt.api``)."""
    from fedopt.api import run

    return run(config, out_dir=out_dir, progress=progress, resume=resume)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types shown as one ``error:`` line instead of a traceback."""
    errors: list[type[BaseException]] = [CLIError]
    try:
        from fedopt.config import ConfigError

        errors.append(ConfigError)
    except ImportError:
        pass
    from fedopt.checkpoint import CheckpointError
    from fedopt.records import MetricsError, ResumeMismatchError, RunExistsError
    from fedopt.runfiles import RunDirError

    errors += [CheckpointError, MetricsError, RunDirError]   # RunDirError: OS errors, path named
    from fedopt.engine.nonfinite import NonFiniteError
    from fedopt.server.faults import RayPoolError, WorkerFailedError   # no Ray import
    from fedopt.server.ray_connect import RayConnectError              # no Ray import
    from fedopt.extras import MissingExtraError

    return (*errors, RunExistsError, ResumeMismatchError, NonFiniteError, WorkerFailedError,
            RayPoolError, RayConnectError, MissingExtraError)


def invoked_as() -> str:
    """How to call this program again, as the user just did: ``fedopt`` when that name on PATH
    is this program, else the path typed (``.venv/bin/fedopt``) or ``python -m fedopt.simulations.cli``
    — so printed hints (``plot it with: ...``) work when copied."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "fedopt":
        import shutil

        found = shutil.which("fedopt")
        if found and os.path.realpath(found) == os.path.realpath(argv0):
            return "fedopt"
        return argv0
    python = sys.executable or "python"
    try:
        rel = os.path.relpath(python)
        python = rel if not rel.startswith("..") else python
    except ValueError:   # another drive (Windows)
        pass
    return f"{python} -m simulations.cli"


def package_version() -> str:
    """The installed fedopt version."""
    from importlib import metadata

    try:
        return metadata.version("fedopt")
    except metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- helpers

def default_out_dir(config_path: str, now: _dt.datetime | None = None) -> str:
    """``runs/<config-stem>-<YYYYmmdd-HHMMSS>``."""
    now = _dt.datetime.now() if now is None else now
    return os.path.join("runs", f"{Path(config_path).stem}-{now:%Y%m%d-%H%M%S}")


def final_row(metrics: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> dict:
    """The last metrics row, with client-updates/s derived when not recorded."""
    row: dict[str, Any] = dict(metrics[-1]) if metrics else {}
    if not row and summary:
        row = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    if row.get("client_updates_per_s") is None:
        upd, wall = row.get("client_updates"), row.get("wall_time_s")
        if isinstance(upd, (int, float)) and isinstance(wall, (int, float)) and wall > 0:
            row["client_updates_per_s"] = upd / wall
    return row


def sample_rows(rows: Sequence[Mapping[str, Any]], every: int | None = None,
                target: int = 10) -> list[Mapping[str, Any]]:
    """Every ``every``-th row (default: a step giving about ``target`` rows), always
    including the first and the last."""
    step = every if every is not None else max(1, math.ceil(len(rows) / target))
    if step < 1:
        raise CLIError(f"--every: must be >= 1, got {step}")
    if not rows:
        return []
    picked = list(range(0, len(rows), step))
    if picked[-1] != len(rows) - 1:
        picked.append(len(rows) - 1)
    return [rows[i] for i in picked]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def config_summary(config: Mapping[str, Any]) -> str:
    """One line per top-level section: ``algorithm: name=fedavg rounds=50 ...``."""
    lines, scalars = [], []
    for key, value in config.items():
        if isinstance(value, Mapping):
            items = " ".join(f"{k}={_short(v)}" for k, v in _flatten(value) if v is not None)
            lines.append(f"  {key}: {items}")
        elif value is not None:
            scalars.append(f"{key}={_short(value)}")
    if scalars:
        lines.insert(0, "  " + " ".join(scalars))
    return "\n".join(lines)


def _short(v: Any) -> str:
    return "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v)


def _print_table(rows: Sequence[Mapping[str, Any]], out=None) -> None:
    from fedopt.simulations.plot import results_table

    present = [c for c in RESULT_COLUMNS if any(c[0] in r for r in rows)]
    print(results_table(rows, present or None), file=out or sys.stdout)


# ----------------------------------------------------------------------------- commands

def _load(args: argparse.Namespace) -> dict:
    """Load and validate the config of ``args`` (a file, or a shipped config's name: see
    :mod:`fedopt.simulations.shipped`); any problem becomes a :class:`CLIError`."""
    from fedopt.simulations.shipped import missing_hint, resolve_config

    try:
        return load_config(resolve_config(args.config), args.set)
    except (ValueError, OSError) as e:
        missing = not os.path.exists(args.config) and "No such file" in str(e)   # the loader's
        hint = missing_hint(args.config) if missing else ""                      # OSError text
        raise CLIError(f"CONFIG: {hint}" if hint else str(e)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from fedopt.records import RunExistsError, holds_run
    from fedopt.runfiles import RunDirError

    config = _load(args)
    out_dir = args.out or default_out_dir(args.config)
    try:
        held = holds_run(out_dir)
    except OSError as e:   # e.g. an unreadable --out
        raise CLIError(f"--out: {_os_message(e)}") from None
    if held and not args.resume:
        raise CLIError(f"--out: {out_dir} already holds a run; pass another --out directory, "
                       f"or --resume to continue it")
    try:
        result = run_experiment(config, out_dir=out_dir, progress=not args.no_progress,
                                resume=args.resume)
    except (RunExistsError, RunDirError) as e:   # the run directory: name the option
        message = str(e)
        raise CLIError("--out: " + message[len("out_dir: "):] if message.startswith("out_dir: ")
                       else message) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {invoked_as()} run {args.config} --out {out_dir} --resume"
              + "".join(f" --set {s}" for s in args.set), file=sys.stderr)
        return EXIT_INTERRUPTED
    out_dir = getattr(result, "out_dir", None) or out_dir
    row = final_row(getattr(result, "metrics", []) or [], getattr(result, "summary", None))
    print()
    _print_table([row])
    print(f"\nrun directory: {out_dir}")
    print(f"plot it with:  {invoked_as()} plot {out_dir}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from fedopt.executors import check_host

    config = _load(args)
    try:
        check_host(config)      # what the executor's start checks too (files it reads)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(yaml.safe_dump(config, sort_keys=False, default_flow_style=False).rstrip())
    print(f"# {args.config}: valid", file=sys.stderr)
    return EXIT_OK


def cmd_configs(args: argparse.Namespace) -> int:
    from fedopt.simulations import shipped

    if args.action == "list":
        if args.name or args.dest:
            raise CLIError("configs list: takes no NAME/DEST (use 'fedopt configs show NAME')")
        for name in shipped.shipped_names():
            print(f"{name:<22} {shipped.describe(name)}".rstrip())
        print(f"\nrun one with:  {invoked_as()} run NAME; copy one out to edit with:  "
              f"{invoked_as()} configs copy NAME [DEST]", file=sys.stderr)
        return EXIT_OK
    if not args.name:
        raise CLIError(f"configs {args.action}: give the NAME of a shipped config "
                       f"({', '.join(shipped.shipped_names())})")
    if args.action == "show":
        if args.dest:
            raise CLIError("configs show: takes one NAME")
        print(shipped.shipped_text(args.name), end="")
        return EXIT_OK
    path = shipped.copy_config(args.name, args.dest, force=args.force)
    print(path)
    return EXIT_OK


def _require_run_dir(run_dir: str) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise CLIError(f"RUN_DIR: {run_dir} is not a directory")
    if not (path / "metrics.jsonl").is_file():
        raise CLIError(f"RUN_DIR: {run_dir} has no metrics.jsonl (not a fedopt run directory?)")
    return path


def cmd_show(args: argparse.Namespace) -> int:
    from fedopt.jsonio import read_json
    from fedopt.records import (CONFIG_FILE, SUMMARY_FILE, latest_checkpoint, read_metrics,
                                read_summary)

    path = _require_run_dir(args.run_dir)
    print(f"run: {path}")
    if (path / CONFIG_FILE).is_file():
        print("config:")
        print(config_summary(read_json(path / CONFIG_FILE)))
    rows = read_metrics(path)
    shown = [dict(r) for r in sample_rows(rows, args.every)]
    print(f"\nmetrics: {len(rows)} rows" + (f", {len(shown)} shown" if len(shown) < len(rows) else ""))
    if rows:
        for r in shown:
            r.update({k: v for k, v in final_row([r]).items() if k not in r})
        _print_table(shown)
    if (path / SUMMARY_FILE).is_file():
        summary = read_summary(path / SUMMARY_FILE)
        if isinstance(summary, Mapping) and summary:
            print("\nsummary:")
            for k, v in _flatten(summary):
                print(f"  {k}: {_short(v)}")
    ckpt = latest_checkpoint(path)
    if ckpt:
        print(f"\nlatest checkpoint: {ckpt}")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from fedopt.simulations.plot import X_AXES, has_column, plot_run, plot_runs
    from fedopt.records import read_metrics

    for d in args.run_dirs:
        _require_run_dir(d)
    if args.label and len(args.label) != len(args.run_dirs):
        raise CLIError(f"--label: got {len(args.label)} labels for {len(args.run_dirs)} run "
                       f"directories (give one per RUN_DIR, or none)")
    if len(args.run_dirs) == 1 and not args.label:
        paths = plot_run(args.run_dirs[0], out=args.out)
    else:
        tables = [read_metrics(d) for d in args.run_dirs]
        axes = [x for x in X_AXES if all(has_column(rows, x) for rows in tables)]
        paths = []
        for x in axes:
            paths += plot_runs(args.run_dirs, labels=args.label, out=args.out, x=x)
    for p in paths:
        print(p)
    return EXIT_OK


# ----------------------------------------------------------------------------- parser

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks; appends "(default: X)" only where a help text does not
    already say its default and the default is a value (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_set_option(p: argparse.ArgumentParser) -> None:
    """The ``--set KEY=VALUE`` option of every command that loads a config (run, validate,
    serve)."""
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config value, as dotted.key=value (value parsed as "
                        "YAML); repeatable, e.g. --set algorithm.rounds=5 --set "
                        "client.optimizer.lr=0.1")


def build_parser() -> argparse.ArgumentParser:
    """The ``fedopt`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedopt", formatter_class=_Formatter,
        description="fedopt: fast, reproducible distributed and federated optimization.",
        epilog="examples:\n"
               "  fedopt run simulations/configs/quickstart.yaml\n"
               "  fedopt validate simulations/configs/quickstart.yaml --set algorithm.rounds=5\n"
               "  fedopt show runs/quickstart-20250101-120000\n"
               "  fedopt plot runs/quickstart-20250101-120000\n\n"
               "run 'fedopt COMMAND --help' for the options of one command.")
    parser.add_argument("--version", action="version", version=f"fedopt {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser(
        "run", formatter_class=_Formatter, help="run an experiment from a YAML config",
        description="Run an experiment: validate the config, train, record everything "
                    "(config.json, versions.json, metrics.jsonl, summary.json, checkpoints/) "
                    "in one run directory, then print the final results.",
        epilog="examples:\n"
               "  fedopt run quickstart                      (a shipped config, by name)\n"
               "  fedopt run simulations/configs/quickstart.yaml\n"
               "  fedopt run simulations/configs/quickstart.yaml --out runs/qs "
               "--set algorithm.rounds=5\n"
               "  fedopt run simulations/configs/quickstart.yaml --out runs/qs --resume")
    p.add_argument("config", metavar="CONFIG.yaml",
                   help="experiment config (YAML), or a shipped config's name (fedopt configs)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default: runs/<config-stem>-<YYYYmmdd-HHMMSS>)")
    add_set_option(p)
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "validate", formatter_class=_Formatter, help="check a config and print it resolved",
        description="Validate a config (with overrides) and print the resolved config as YAML, "
                    "defaults filled in; nothing is run.",
        epilog="example:\n"
               "  fedopt validate simulations/configs/quickstart.yaml "
               "--set algorithm.clients_per_round=20")
    p.add_argument("config", metavar="CONFIG.yaml",
                   help="experiment config (YAML), or a shipped config's name (fedopt configs)")
    add_set_option(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "show", formatter_class=_Formatter, help="summarize a run directory",
        description="Print a run's config summary, its metrics table (about 10 "
                    "evenly spaced rows, or every N-th with --every), "
                    "its summary and latest checkpoint.",
        epilog="examples:\n  fedopt show runs/quickstart-20250101-120000\n"
               "  fedopt show runs/quickstart-20250101-120000 --every 1")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'fedopt run'")
    p.add_argument("--every", metavar="N", type=int, default=None,
                   help="show every N-th metrics row (default: about 10 rows in all)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "plot", formatter_class=_Formatter, help="draw loss/accuracy curves of runs as PNGs",
        description="One RUN_DIR: loss and accuracy against round, wall time and (if recorded) "
                    "virtual time, written to RUN_DIR/plots. Several RUN_DIRs: the runs overlaid "
                    "(runs with the same --label are drawn as mean with a min/max band), "
                    "written to <common parent>/comparison. Prints the PNG paths.",
        epilog="examples:\n"
               "  fedopt plot runs/qs\n"
               "  fedopt plot runs/a-s0 runs/a-s1 runs/b-s0 runs/b-s1 "
               "--label A --label A --label B --label B --out plots/ab")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write the PNGs")
    p.add_argument("--label", metavar="NAME", action="append", default=None,
                   help="legend label per RUN_DIR, in order (repeat once per RUN_DIR)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "configs", formatter_class=_Formatter, help="list, show or copy the shipped configs",
        description="The example configs shipped with fedopt. 'fedopt run NAME' runs one by "
                    "name (a file of that name wins); 'copy' writes one out to edit.",
        epilog="examples:\n"
               "  fedopt configs\n"
               "  fedopt configs show quickstart\n"
               "  fedopt configs copy quickstart my.yaml && fedopt run my.yaml")
    p.add_argument("action", nargs="?", choices=("list", "show", "copy"), default="list",
                   help="list the shipped configs (default), show one, or copy one out")
    p.add_argument("name", nargs="?", metavar="NAME", help="a shipped config's name")
    p.add_argument("dest", nargs="?", metavar="DEST",
                   help="copy: file or folder to write (default: ./NAME.yaml)")
    p.add_argument("--force", action="store_true", help="copy: overwrite an existing DEST")
    p.set_defaults(func=cmd_configs)

    from fedopt.simulations.grpc_cli import register as register_grpc   # serve, client

    register_grpc(sub, _Formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedopt`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning   # one "warning:" line, no source location
            return args.func(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        if args.command == "run":  # raised inside the run itself: keep the traceback
            raise
        print(f"error: {_os_message(e)}", file=sys.stderr)
        return EXIT_USAGE


def _os_message(e: BaseException) -> str:
    """``path: reason`` for an ``OSError`` that names a file, else its text."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{os.fspath(e.filename)}: {e.strerror}"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
