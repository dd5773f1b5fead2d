"""Run directories: config, versions, metrics (JSONL), summary and checkpoints, written safely.

Layout of one run directory::

    config.json          resolved config
    versions.json        environment_info() + seed (+ one entry per resume)
    metrics.jsonl        one JSON object per logged round
    summary.json         final summary
    metrics.csv          the metrics rows as CSV (``csv: true``, :mod:`fedopt.callbacks`)
    tensorboard/         TensorBoard event files of every metric (``tensorboard: true``)
    checkpoints/         round_000010.safetensors, round_000020.safetensors (the newest ``keep``)
    .fedopt.lock         held (``flock``) by the one process writing the run

Safety rules, all enforced here or by the modules named:

* Every whole-file write is atomic and every file gets mode ``0o666 & ~umask``
  (:mod:`fedopt.runfiles`); metrics rows are appended one ``write`` each.
* Nothing fedopt did not write is deleted or replaced: a folder is taken over only when the
  files it holds under fedopt's names were written by fedopt (a ``versions.json`` record beside
  them), checkpoint pruning only removes ``round_*.safetensors`` files whose header says fedopt
  wrote them.
* A run is *held* once it has a metrics row, a checkpoint or a summary; until then (e.g. the
  run failed while starting) a new run may take the folder over.
* Checkpoints never execute code when loaded (:mod:`fedopt.checkpoint`: safetensors + JSON
  structure + SHA-256). Old pickle checkpoints (``.pt``) are refused, never unpickled.
* One writer per run: an exclusive ``flock`` on ``.fedopt.lock`` (:class:`RunLockedError`).
* Non-finite floats in metrics and summaries are written as the strings ``"nan"``, ``"inf"``,
  ``"-inf"`` (``null`` means "not measured"; :mod:`fedopt.jsonio`) and read back as floats by
  :func:`read_metrics` and :func:`read_summary`.
* Every ``OSError`` met while writing a run becomes a
  :class:`~fedopt.runfiles.RunDirError` naming the path.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from fedopt.checkpoint import (CheckpointError, encode_checkpoint, is_fedopt_checkpoint,
                               load_checkpoint, pickle_checkpoint_error)
from fedopt.environment import environment_info
from fedopt.jsonio import from_jsonable_floats, read_json, to_json_line, to_jsonable
from fedopt.runfiles import (FILE_MODE, RunDirError, atomic_write_bytes, atomic_write_json,
                             is_fedopt_png, run_dir_errors, write_all)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
VERSIONS_FILE = "versions.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
_EVENTS_FILE = re.compile(r"^events\.out\.tfevents\.")
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".fedopt.lock"
CHECKPOINT_SUFFIX = ".safetensors"
_ROUND_FILE = re.compile(r"^round_(\d+)\.safetensors$")
_PICKLE_FILE = re.compile(r"^(round_\d+|latest)\.pt$")   # fedopt's old (pickle) checkpoints
_TMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
#: Config keys a resumed run may change: how long it runs (more rounds, a longer time budget).
RESUMABLE_CHANGES = frozenset({"algorithm.rounds", "algorithm.time_budget"})


class RunExistsError(FileExistsError, ValueError):
    """The output directory already holds a run (or files fedopt did not write) and ``resume``
    was not requested."""


class ResumeMismatchError(ValueError):
    """A resumed run was given a config or seed that differs from the recorded one."""


class MetricsError(ValueError):
    """``metrics.jsonl`` does not match the checkpoint a run resumes from (rows missing)."""


class RunLockedError(RunDirError):
    """Another process is writing the same run directory."""


# ----------------------------------------------------------------------------- reading runs

def _run_path(out_dir: PathLike, name: str) -> Path:
    return Path(out_dir) / name


def _metrics_has_content(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(65536):
                if chunk.strip():
                    return True
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False
    return False


def _checkpoint_files(out_dir: PathLike) -> list[Path]:
    d = Path(out_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    return [p for p in d.iterdir() if _ROUND_FILE.match(p.name) or _PICKLE_FILE.match(p.name)]


def holds_run(out_dir: PathLike) -> bool:
    """Whether ``out_dir`` holds a run that has started: a metrics row, a checkpoint (of any
    format) or a summary. A folder holding only ``config.json``/``versions.json`` (a run that
    failed while starting) does not: a new run may take it over."""
    d = Path(out_dir)
    if not d.is_dir():
        return False
    return (_metrics_has_content(d / METRICS_FILE) or (d / SUMMARY_FILE).exists()
            or bool(_checkpoint_files(d)))


def _split_lines(raw: bytes, source: str) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Complete, parseable lines of a JSONL file and their rows; a bad last line is dropped."""
    lines = raw.split(b"\n")
    last_terminated = lines[-1] == b""
    if last_terminated:
        lines.pop()
    kept: list[bytes] = []
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        is_last = i == len(lines) - 1
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if is_last:
                warnings.warn(f"{source}: ignoring truncated last line {i + 1} ({e})", stacklevel=3)
                break
            raise ValueError(f"{source}: line {i + 1} is not valid JSON: {e}") from None
        kept.append(line)
        rows.append(row)
    return kept, rows


def read_metrics(out_dir: PathLike) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (``out_dir`` may also be the file itself), with the recorded
    ``"nan"``/``"inf"``/``"-inf"`` strings turned back into floats (``null`` stays ``None``).

    A truncated last line (a crash mid-write) is ignored with a warning; a bad line
    elsewhere raises ``ValueError`` with its line number; a missing file ``FileNotFoundError``.
    """
    path = Path(out_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{os.fspath(path)}: no such metrics file")
    return [from_jsonable_floats(r) for r in _split_lines(path.read_bytes(), os.fspath(path))[1]]


def read_summary(path: PathLike) -> Any:
    """``summary.json`` of a run directory (or that file), with ``"nan"``/``"inf"``/``"-inf"``
    turned back into floats. Raises ``FileNotFoundError`` when it is missing."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_FILE
    return from_jsonable_floats(read_json(p))


def _round_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _ROUND_FILE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: PathLike) -> str | None:
    """Path of the newest checkpoint file of a run (the highest round number), or ``None``.
    It is not verified: :func:`load_resume_checkpoint` falls back to older ones."""
    files = _round_files(Path(out_dir) / CHECKPOINT_DIR)
    return os.fspath(files[-1][1]) if files else None


def load_resume_checkpoint(out_dir: PathLike) -> dict[str, Any] | None:
    """The newest checkpoint of a run that loads and verifies, or ``None`` when there is none.

    A damaged newer file is skipped with a warning naming it. Raises :class:`CheckpointError`
    when checkpoint files exist but none loads (naming each), or when only old pickle
    checkpoints (``.pt``) exist.
    """
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    files = _round_files(ckpt_dir)
    if not files:
        old = sorted(p.name for p in _checkpoint_files(out_dir) if _PICKLE_FILE.match(p.name))
        if old:
            raise pickle_checkpoint_error(os.fspath(ckpt_dir / old[-1]))
        return None
    problems = []
    for r, path in reversed(files):
        try:
            state = load_checkpoint(path)
            if state.get("round") != r:
                raise CheckpointError(f"{os.fspath(path)}: holds round {state.get('round')!r}, "
                                      f"not {r}")
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"{e}; skipped, trying an older checkpoint", stacklevel=2)
            continue
        except OSError as e:
            problems.append(f"{os.fspath(path)}: {e.strerror or e}")
            warnings.warn(f"{problems[-1]}; skipped, trying an older checkpoint", stacklevel=2)
            continue
        return state
    raise CheckpointError(f"{os.fspath(ckpt_dir)}: no checkpoint could be loaded ("
                          + "; ".join(problems) + "); rerun into a new out directory")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out.extend(_diff_keys(a[k], b[k], key))
        return out
    return [] if a == b else [prefix or "config"]


_MISSING = object()


def _get(cfg: Mapping[str, Any], dotted: str, missing: Any = None) -> Any:
    """The value at ``dotted`` in a nested config, or ``missing`` when a key is absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def _keeps_recorded(recorded: Any, given: Any) -> bool:
    """Whether a resumed run keeps the ``recorded`` run length instead of ``given``: when
    ``given`` is shorter, or when it is None (not set — the README's resume command omits the
    override) while a limit was recorded; to extend a run, give a larger value."""
    if recorded is None:
        return False
    return given is None or given < recorded


def _is_versions_record(path: Path) -> bool:
    try:
        v = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(v, dict) and "seed" in v and "python" in v and "fedopt" in v


# ----------------------------------------------------------------------------- recorder

class RunRecorder:
    """Writes one run directory: config, versions, metrics rows, summary, checkpoints.

    ``RunRecorder(out_dir, config, seed)`` creates ``out_dir`` if needed and takes its lock.
    It raises

    * :class:`RunExistsError` when ``out_dir`` holds a started run and ``resume`` is false, or
      holds files under fedopt's names that fedopt did not write;
    * :class:`ResumeMismatchError` when a resumed run's config (except ``algorithm.rounds`` /
      ``algorithm.time_budget``) or seed differs from the recorded one;
    * :class:`RunLockedError` when another process is writing the run;
    * :class:`RunDirError` (an ``OSError`` naming the path) for any operating-system error.

    On resume a shorter ``algorithm.rounds`` or ``algorithm.time_budget`` than recorded does not
    shrink the run: the recorded value is kept (``kept_values``, with a warning) and
    ``config.json`` is only ever rewritten to a longer run. Use as a context manager, or call
    :meth:`close`, to release the metrics file and the lock.
    """

    def __init__(self, out_dir: PathLike, config: Mapping[str, Any], seed: int,
                 resume: bool = False, keep: int = 2) -> None:
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a mapping, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an integer, got {seed!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: must be an integer >= 1, got {keep!r}")
        self.out_dir = os.fspath(out_dir)
        self.keep = keep
        self.seed = seed
        self.resume = resume
        self.config = to_jsonable(config, "config")
        #: dotted config keys whose recorded (longer) value a resumed run keeps
        self.kept_values: dict[str, Any] = {}
        self._metrics_fd: int | None = None
        self._lock_fd: int | None = None
        self._rows: int | None = None
        out = Path(self.out_dir)
        if out.exists() and not out.is_dir():
            raise RunDirError(f"out_dir: {self.out_dir} exists and is not a directory")
        with run_dir_errors(out, "create the run directory"):
            out.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._start(out)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = Path(self.out_dir) / LOCK_FILE
        with run_dir_errors(path, "create the lock file"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if fcntl is None:  # pragma: no cover
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunLockedError(
                f"out_dir: {self.out_dir} is in use by another fedopt process (it holds "
                f"{path}); wait for it to end, or use another out directory") from None
        self._lock_fd = fd

    def _start(self, out: Path) -> None:
        held = holds_run(out)
        if held and not self.resume:
            raise RunExistsError(f"out_dir: {self.out_dir} already holds a run; pass another "
                                 f"out directory (--out), or resume it (--resume)")
        if held:
            self._check_resume(out)
            return
        if not (out / VERSIONS_FILE).is_file() or not _is_versions_record(out / VERSIONS_FILE):
            for name in (CONFIG_FILE, VERSIONS_FILE, METRICS_FILE, SUMMARY_FILE):
                if (out / name).exists():
                    raise RunExistsError(
                        f"out_dir: {out / name} was not written by fedopt (no fedopt "
                        f"{VERSIONS_FILE} beside it); it is left alone: use another out directory")
        if self.resume and (out / CONFIG_FILE).exists():
            warnings.warn(f"{self.out_dir}: no checkpoint or metrics row yet; starting the run "
                          f"from round 0", stacklevel=3)
        with run_dir_errors(out / VERSIONS_FILE, "write"):
            atomic_write_json(out / VERSIONS_FILE, {**environment_info(), "seed": self.seed})
        with run_dir_errors(out / CONFIG_FILE, "write"):
            atomic_write_json(out / CONFIG_FILE, self.config)
        self._rows = 0 if not (out / METRICS_FILE).exists() else None

    def _check_resume(self, out: Path) -> None:
        config_path = out / CONFIG_FILE
        if not config_path.is_file():
            raise ResumeMismatchError(f"{config_path}: missing, so the recorded config cannot be "
                                      f"checked; rerun into a new out directory")
        with run_dir_errors(config_path, "read"):
            old = read_json(config_path)
        changed = [k for k in _diff_keys(old, self.config) if k not in RESUMABLE_CHANGES]
        added = [k for k in changed if _get(old, k, _MISSING) is _MISSING]
        removed = [k for k in changed if _get(self.config, k, _MISSING) is _MISSING]
        if added or removed:   # the schema itself differs: another fedopt version wrote it
            raise ResumeMismatchError(
                f"{(added + removed)[0]}: the recorded config of {self.out_dir} was written by "
                f"another fedopt version (keys this version adds: {', '.join(added) or 'none'}; "
                f"keys it no longer has: {', '.join(removed) or 'none'}); resume it with the "
                f"version that wrote it, or start a new run in another --out")
        if changed:
            raise ResumeMismatchError(
                f"{changed[0]}: differs from the recorded config of {self.out_dir} "
                f"(changed: {', '.join(changed)}); resume with the same config or use another --out")
        versions_path = out / VERSIONS_FILE
        with run_dir_errors(versions_path, "read"):
            versions = read_json(versions_path) if versions_path.is_file() else {"seed": self.seed}
        if versions.get("seed", self.seed) != self.seed:
            raise ResumeMismatchError(f"seed: {self.seed} differs from the recorded seed "
                                      f"{versions['seed']} of {self.out_dir}")
        for key in sorted(RESUMABLE_CHANGES):
            recorded, given = _get(old, key), _get(self.config, key)
            if recorded != given and _keeps_recorded(recorded, given):
                self.kept_values[key] = recorded
                _set(self.config, key, recorded)
                said = ("not given" if given is None
                        else f"{given} is shorter than the recorded {recorded}")
                warnings.warn(f"{key}: {said}; the resumed run of {self.out_dir} keeps "
                              f"{recorded} (give a larger value to extend it)", stacklevel=3)
        env = environment_info()
        versions.setdefault("resumed", []).append(
            {k: env[k] for k in ("time", "hostname", "git_commit", "fedopt", "torch")})
        with run_dir_errors(versions_path, "write"):
            atomic_write_json(versions_path, versions)
        if old != self.config:  # a longer run: record the config the run now follows
            with run_dir_errors(config_path, "write"):
                atomic_write_json(config_path, self.config)

    def apply_kept_values(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the recorded run length kept on resume (see ``kept_values``)."""
        import copy

        if not self.kept_values:
            return config
        out = copy.deepcopy(config)
        for key, value in self.kept_values.items():
            _set(out, key, value)
        return out

    # --------------------------------------------------------------- paths
    @property
    def metrics_path(self) -> str:
        return os.fspath(_run_path(self.out_dir, METRICS_FILE))

    @property
    def checkpoint_dir(self) -> str:
        """``out_dir/checkpoints``."""
        return os.fspath(_run_path(self.out_dir, CHECKPOINT_DIR))

    # --------------------------------------------------------------- metrics
    def log(self, metrics: Mapping[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (one ``write``, unbuffered).
        Raises :class:`RunDirError` naming the file when the write fails."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics: expected a mapping, got {type(metrics).__name__}")
        line = (to_json_line(metrics, "metrics") + "\n").encode()
        with run_dir_errors(self.metrics_path, "write"):
            if self._metrics_fd is None:
                self._metrics_fd = self._open_metrics()
            if self._rows is None:
                self._rows = len(self.read_metrics())
            write_all(self._metrics_fd, line)
        self._rows += 1

    def _open_metrics(self) -> int:
        path = Path(self.metrics_path)
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
            if needs_newline:  # a crash left a partial line: drop it first
                self._rewrite_metrics(lambda row: True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)

    def _rewrite_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        path = Path(self.metrics_path)
        if not path.is_file():
            self._rows = 0
            return 0
        with run_dir_errors(path, "rewrite"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lines, rows = _split_lines(path.read_bytes(), os.fspath(path))
            kept = [line for line, row in zip(lines, rows) if keep(row)]
            atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
        self._rows = len(kept)
        return len(rows) - len(kept)

    def truncate_after(self, round: int) -> int:
        """Drop metrics rows with ``round`` > ``round`` (and a truncated last line); returns
        how many rows were dropped. Call when resuming from the checkpoint of ``round``."""
        if isinstance(round, bool) or not isinstance(round, int):
            raise TypeError(f"round: expected an integer, got {round!r}")
        self._close_metrics()
        return self._rewrite_metrics(
            lambda row: not isinstance(row.get("round"), (int, float)) or row["round"] <= round)

    def resume_metrics(self, round: int, expected_rows: int | None) -> list[dict[str, Any]]:
        """Rows of the run up to the checkpoint of ``round``, after dropping later ones.

        ``expected_rows`` is the number of rows the checkpoint recorded as written when it was
        saved (``None``: unknown, not checked). Raises :class:`MetricsError` naming
        ``metrics.jsonl`` when it holds another number of rows up to ``round`` (rows lost to a
        truncated or edited file, or another writer's rows), or rounds out of order.
        """
        dropped = self.truncate_after(round)
        if expected_rows is None and dropped:
            warnings.warn(f"{self.out_dir}: no checkpoint to resume from; the run restarts from "
                          f"round {round} and recomputes the {dropped} recorded rows after it",
                          stacklevel=2)
        rows = self.read_metrics()
        rounds = [r.get("round") for r in rows]
        if any(not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a >= b
               for a, b in zip(rounds, rounds[1:])):
            raise MetricsError(f"{self.metrics_path}: rounds are out of order ({rounds[:20]}); "
                               f"the file was edited or written by two processes; rerun into a "
                               f"new out directory")
        if expected_rows is not None and len(rows) != expected_rows:
            raise MetricsError(
                f"{self.metrics_path}: holds {len(rows)} rows up to round {round}, but "
                f"{expected_rows} had been written when the checkpoint of round {round} was "
                f"saved ({'rows are missing: the file was truncated or edited' if len(rows) < expected_rows else 'extra rows'}); "
                f"rerun into a new out directory")
        return rows

    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows logged so far (none when ``metrics.jsonl`` does not exist yet)."""
        path = Path(self.metrics_path)
        return read_metrics(path) if path.is_file() else []

    # --------------------------------------------------------------- summary
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` atomically (non-finite floats as ``"nan"``/``"inf"``)."""
        path = _run_path(self.out_dir, SUMMARY_FILE)
        with run_dir_errors(path, "write"):
            atomic_write_json(path, summary)

    # --------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: Mapping[str, Any], round: int) -> str:
        """Save ``state`` (plus ``round`` and ``metrics_rows``, the rows written so far) to
        ``checkpoints/round_{round:06d}.safetensors``; keep the newest ``keep`` round files
        (and drop those of later rounds, from an abandoned trajectory), deleting only files
        fedopt wrote. Returns the path. Raises ``ValueError``/``TypeError`` for bad arguments
        or values a checkpoint cannot hold, :class:`RunDirError` for a failed write."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ValueError(f"round: must be an integer >= 0, got {round!r}")
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected a mapping, got {type(state).__name__}")
        if "round" in state and state["round"] != round:
            raise ValueError(f"state['round']: {state['round']!r} differs from round={round}")
        if self._rows is None:
            self._rows = len(self.read_metrics())
        data = encode_checkpoint({**state, "round": round, "metrics_rows": self._rows})
        ckpt_dir = Path(self.checkpoint_dir)
        target = ckpt_dir / f"round_{round:06d}{CHECKPOINT_SUFFIX}"
        with run_dir_errors(target, "write"):
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        files = _round_files(ckpt_dir)
        stale = [p for r, p in files if r > round]  # from an abandoned, later trajectory
        older = [p for r, p in files if r < round]
        for p in stale + older[:max(0, len(older) - (self.keep - 1))]:
            if is_fedopt_checkpoint(p):
                with run_dir_errors(p, "remove"):
                    p.unlink(missing_ok=True)
        return os.fspath(target)

    latest_checkpoint = staticmethod(latest_checkpoint)
    load_checkpoint = staticmethod(load_checkpoint)

    def load_resume_checkpoint(self) -> dict[str, Any] | None:
        """:func:`load_resume_checkpoint` of this run."""
        return load_resume_checkpoint(self.out_dir)

    # --------------------------------------------------------------- lifetime
    def _close_metrics(self) -> None:
        if self._metrics_fd is not None:
            fd, self._metrics_fd = self._metrics_fd, None
            os.close(fd)

    def close(self) -> None:
        """Close the metrics file (rows are already written) and release the lock."""
        self._close_metrics()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)   # closing the descriptor releases the flock

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- removing runs

_RUN_FILES = frozenset({CONFIG_FILE, VERSIONS_FILE, METRICS_FILE, SUMMARY_FILE, LOCK_FILE,
                        CSV_FILE})


def remove_run_dir(run_dir: PathLike, dry_run: bool = False) -> None:
    """Delete a run directory that fedopt wrote, file by file: its records, its checkpoints,
    its ``plots/`` PNGs, its ``tensorboard/`` event files, fedopt's temporary files
    (``dry_run``: only check that it may).

    Raises :class:`RunDirError` naming the first entry fedopt does not write (and deletes
    nothing), or when ``run_dir`` is not a fedopt run (no fedopt ``versions.json``).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{os.fspath(d)}: not a directory")
    if not _is_versions_record(d / VERSIONS_FILE):
        raise RunDirError(f"{os.fspath(d)}: not a fedopt run directory (no fedopt "
                          f"{VERSIONS_FILE}); left alone")
    files: list[Path] = []
    dirs: list[Path] = []
    with run_dir_errors(d, "list"):
        for p in d.iterdir():
            if p.name in _RUN_FILES and p.is_file() and not p.is_symlink():
                files.append(p)
            elif _TMP_FILE.match(p.name) and p.is_file():
                files.append(p)
            elif p.name == CHECKPOINT_DIR and p.is_dir() and not p.is_symlink():
                for q in p.iterdir():
                    if q.is_file() and ((_ROUND_FILE.match(q.name) and is_fedopt_checkpoint(q))
                                        or _PICKLE_FILE.match(q.name) or _TMP_FILE.match(q.name)):
                        files.append(q)
                    else:
                        raise RunDirError(f"{os.fspath(q)}: not written by fedopt; "
                                          f"{os.fspath(d)} is left alone")
                dirs.append(p)
            elif p.name == TENSORBOARD_DIR and p.is_dir() and not p.is_symlink():
                for q in p.iterdir():
                    if not (q.is_file() and _EVENTS_FILE.match(q.name)):
                        raise RunDirError(f"{os.fspath(q)}: not written by fedopt; "
                                          f"{os.fspath(d)} is left alone")
                    files.append(q)
                dirs.append(p)
            elif p.name == "plots" and p.is_dir() and not p.is_symlink():
                for q in p.iterdir():
                    if q.is_file() and is_fedopt_png(q):
                        files.append(q)
                    else:
                        raise RunDirError(f"{os.fspath(q)}: not written by fedopt; "
                                          f"{os.fspath(d)} is left alone")
                dirs.append(p)
            else:
                raise RunDirError(f"{os.fspath(p)}: not written by fedopt; {os.fspath(d)} is "
                                  f"left alone")
    if dry_run:
        return
    for p in files:
        with run_dir_errors(p, "remove"):
            p.unlink()
    for p in [*dirs, d]:
        with run_dir_errors(p, "remove"):
            p.rmdir()
