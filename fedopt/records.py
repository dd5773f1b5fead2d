"""Run directories: config, versions, metrics (JSONL), summary and checkpoints, written safely.

Layout of one run directory::

    config.json          resolved config
    versions.json        environment_info() + seed (+ one entry per resume)
    metrics.jsonl        one JSON object per logged round
    summary.json         final summary
    checkpoints/         round_000010.safetensors, round_000020.safetensors (the newest ``keep``)
    .fedopt.lock         held (``flock``) by the one process writing the run

Safety rules, all enforced here:

* Every whole-file write goes through a temporary file in the same directory, ``fsync`` and
  ``os.replace``, so a crash never leaves a half-written file in place of a good one. Every file
  of a run is created with mode ``0o666 & ~umask`` (as ``open()`` does), temporaries included.
* Nothing fedopt did not write is deleted or replaced: a folder is taken over only when the
  files it holds under fedopt's names were written by fedopt (a ``versions.json`` record beside
  them), checkpoint pruning only removes ``round_*.safetensors`` files whose header says fedopt
  wrote them.
* A run is *held* once it has a metrics row, a checkpoint or a summary; until then (e.g. the
  run failed while starting) a new run may take the folder over.
* Checkpoints never execute code when loaded: tensors in a ``safetensors`` file, the nested
  structure and scalars as JSON in its metadata, with a SHA-256 of both (see
  :func:`encode_checkpoint`). Old pickle checkpoints (``.pt``) are refused, never unpickled.
* One writer per run: an exclusive ``flock`` on ``.fedopt.lock`` (:class:`RunLockedError`).
* Non-finite floats in metrics and summaries are written as the strings ``"nan"``, ``"inf"``,
  ``"-inf"`` (``null`` means "not measured") and read back as floats by :func:`read_metrics`
  and :func:`read_summary`.
* Every ``OSError`` met while writing a run becomes a :class:`RunDirError` naming the path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import math
import os
import platform
import re
import secrets
import socket
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
VERSIONS_FILE = "versions.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".fedopt.lock"
CHECKPOINT_SUFFIX = ".safetensors"
CHECKPOINT_FORMAT = "fedopt-checkpoint/1"
_ROUND_FILE = re.compile(r"^round_(\d+)\.safetensors$")
_PICKLE_FILE = re.compile(r"^(round_\d+|latest)\.pt$")   # fedopt's old (pickle) checkpoints
_TMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
#: Config keys a resumed run may change: how long it runs (more rounds, a longer time budget).
RESUMABLE_CHANGES = frozenset({"algorithm.rounds", "algorithm.time_budget"})
_FILE_MODE = 0o666   # minus the umask, by the kernel: the mode open() gives new files


class RunExistsError(FileExistsError, ValueError):
    """The output directory already holds a run (or files fedopt did not write) and ``resume``
    was not requested."""


class ResumeMismatchError(ValueError):
    """A resumed run was given a config or seed that differs from the recorded one."""


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a fedopt checkpoint, or an old pickle checkpoint."""


class MetricsError(ValueError):
    """``metrics.jsonl`` does not match the checkpoint a run resumes from (rows missing)."""


class RunDirError(OSError):
    """An operating-system error on a run directory (permissions, full disk, not a folder);
    the message names the path."""


class RunLockedError(RunDirError):
    """Another process is writing the same run directory."""


@contextlib.contextmanager
def _io(path: PathLike, action: str) -> Iterator[None]:
    """Turn an ``OSError`` into one :class:`RunDirError` naming ``path``."""
    try:
        yield
    except RunDirError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise RunDirError(f"{os.fspath(path)}: cannot {action}: {reason}") from e


# ----------------------------------------------------------------------------- atomic writes

def _fsync_dir(directory: PathLike) -> None:
    """Best effort: make the rename itself durable (not supported on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + ``os.replace``).

    The file gets mode ``0o666 & ~umask``. Raises ``TypeError`` for non-bytes ``data`` and
    the ``OSError`` of a failed write, after removing the temporary file.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)   # our own temporary file
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (see :func:`to_jsonable` for the conversions)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


# ----------------------------------------------------------------------------- JSON conversion

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _float_text(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON data from ``obj``: tensors and numpy values become numbers or lists,
    non-finite floats the strings ``"nan"``, ``"inf"``, ``"-inf"`` (``None`` stays ``null``:
    "not measured"), tuples lists, paths strings, dataclasses dicts.

    Raises ``TypeError`` naming the offending entry for anything else.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float_text(float(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    mod = type(obj).__module__
    if mod.startswith("torch") and hasattr(obj, "tolist"):  # tensors, incl. 0-d
        return to_jsonable(obj.detach().cpu().tolist(), where)
    if mod.startswith("numpy") and hasattr(obj, "tolist"):  # ndarrays and numpy scalars
        return to_jsonable(obj.tolist(), where)
    if mod == "torch" and type(obj).__name__ in ("dtype", "device"):
        return str(obj)
    raise TypeError(f"{where}: cannot convert {type(obj).__name__} to JSON")


def from_jsonable_floats(obj: Any) -> Any:
    """Inverse of the non-finite rule of :func:`to_jsonable` on recorded values: the strings
    ``"nan"``, ``"inf"``, ``"-inf"`` (anywhere in dicts and lists) become floats."""
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_jsonable_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable_floats(v) for v in obj]
    return obj


def _dumps_line(row: Mapping[str, Any]) -> str:
    return json.dumps(to_jsonable(row, "metrics"), allow_nan=False)


# ----------------------------------------------------------------------------- environment

def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(start: PathLike) -> str | None:
    """HEAD commit of the git checkout holding ``start``, read from ``.git`` (no subprocess)."""
    try:
        here = Path(start).resolve()
        for d in (here, *here.parents):
            git = d / ".git"
            if git.is_file():  # worktree / submodule: "gitdir: <path>"
                text = git.read_text().strip()
                if not text.startswith("gitdir:"):
                    return None
                git = (d / text.split(":", 1)[1].strip()).resolve()
            if git.is_dir():
                break
        else:
            return None
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None  # branch without commits yet


def environment_info() -> dict[str, Any]:
    """Versions and host facts worth recording next to a result (fast, never raises)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "fedopt": _package_version("fedopt"),
        "torch": None,
        "numpy": None,
        "ray": _package_version("ray"),  # metadata only: importing ray takes seconds
        "grpcio": _package_version("grpcio"),
        "cuda": None,
        "cuda_device": None,
        "git_commit": _git_commit(Path(__file__).parent),
        "hostname": socket.gethostname(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA setup must not stop a run from being recorded
        pass
    return info


# ----------------------------------------------------------------------------- checkpoint format

def _tensor_name(path: str, taken: set[str]) -> str:
    name = path or "tensor"
    if name in taken or name == "__metadata__":
        i = 1
        while f"{name}#{i}" in taken:
            i += 1
        name = f"{name}#{i}"
    taken.add(name)
    return name


class _Encoder:
    """Nested Python/torch values -> (JSON structure, flat tensor dict). Every container and
    every non-JSON leaf is a one-key object (``{"dict": [[k, v], ...]}``, ``{"tensor": name}``,
    ...), so the structure is unambiguous; a tensor object met twice is stored once."""

    _SAFE_INT = 2 ** 53

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.tensors: dict[str, Any] = {}
        self.memo: dict[int, str] = {}
        self.names: set[str] = set()

    def _store(self, t: Any, path: str) -> str:
        torch = self.torch
        if t.layout != torch.strided:
            raise TypeError(f"{path}: cannot store a {t.layout} tensor in a checkpoint")
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{path}: cannot store a {t.dtype} tensor in a checkpoint")
        key = id(t)
        if key not in self.memo:
            name = _tensor_name(path, self.names)
            self.tensors[name] = t.detach().to("cpu", copy=True,
                                               memory_format=torch.contiguous_format)
            self.memo[key] = name
        return self.memo[key]

    def encode(self, obj: Any, path: str) -> Any:
        torch = self.torch
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj) if abs(obj) <= self._SAFE_INT else {"int": str(int(obj))}
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {"float": _float_text(float(obj))}
        if isinstance(obj, torch.Tensor):
            out: dict[str, Any] = {"tensor": self._store(obj, path)}
            if obj.requires_grad:
                out["requires_grad"] = True
            return out
        if isinstance(obj, Mapping):
            return {"dict": [[self.encode(k, f"{path}/<key>"),
                              self.encode(v, f"{path}/{k}" if path else str(k))]
                             for k, v in obj.items()]}
        if type(obj) is list or type(obj) is tuple:
            kind = type(obj).__name__
            return {kind: [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        mod = type(obj).__module__
        if mod == "numpy":
            import numpy as np

            if isinstance(obj, np.ndarray):
                if obj.dtype == object:
                    raise TypeError(f"{path}: cannot store an object array in a checkpoint")
                return {"ndarray": self._store(torch.from_numpy(np.ascontiguousarray(obj)), path)}
            if isinstance(obj, np.generic):
                return {"numpy": [obj.dtype.str, self.encode(obj.item(), path)]}
        raise TypeError(f"{path or 'checkpoint'}: cannot store {type(obj).__name__} in a "
                        f"checkpoint (tensors, numpy arrays, dicts, lists, tuples, str, int, "
                        f"float, bool and None only)")


def _decode(obj: Any, tensors: Mapping[str, Any], source: str) -> Any:
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj
    if isinstance(obj, dict) and len(obj) >= 1:
        tag = next(iter(obj))
        value = obj[tag]
        if tag == "dict":
            return {_decode(k, tensors, source): _decode(v, tensors, source) for k, v in value}
        if tag == "list":
            return [_decode(v, tensors, source) for v in value]
        if tag == "tuple":
            return tuple(_decode(v, tensors, source) for v in value)
        if tag == "int":
            return int(value)
        if tag == "float":
            return _NON_FINITE[value]
        if tag == "tensor":
            t = tensors[value]
            return t.requires_grad_(True) if obj.get("requires_grad") else t
        if tag == "ndarray":
            return tensors[value].numpy()
        if tag == "numpy":
            import numpy as np

            return np.dtype(value[0]).type(_decode(value[1], tensors, source))
    raise CheckpointError(f"{source}: unknown entry {str(obj)[:80]!r} in the checkpoint structure")


def _lazy_dtypes() -> frozenset:
    import torch

    names = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
             "float32", "float64")
    return frozenset(getattr(torch, n) for n in names)


class _Dtypes:
    """Dtypes a safetensors file can hold (built on first use: keeps ``import`` free of torch)."""

    _set: frozenset | None = None

    def __contains__(self, dtype: Any) -> bool:
        if _Dtypes._set is None:
            _Dtypes._set = _lazy_dtypes()
        return dtype in _Dtypes._set


_SAFETENSORS_DTYPES = _Dtypes()


def _digest(structure: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 of the structure JSON and of every tensor's name, dtype, shape and bytes."""
    import torch

    h = hashlib.sha256(structure.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.contiguous().reshape(-1)
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def encode_checkpoint(state: Mapping[str, Any]) -> bytes:
    """The bytes of a checkpoint file: a ``safetensors`` file whose tensors are those of the
    nested ``state`` (named by their path, e.g. ``server/params/fc.weight``) and whose metadata
    holds the structure and scalars as JSON (``structure``), a SHA-256 of both (``sha256``) and
    the format tag. Round-trips exactly through :func:`decode_checkpoint`: every tensor dtype
    safetensors knows (bit for bit, incl. empty and non-contiguous tensors), nested
    dicts (any JSON-able keys, order kept), lists, tuples, ``None``, bools, ints of any size,
    floats incl. non-finite ones, numpy arrays and scalars.

    Raises ``TypeError`` naming the path of a value it cannot store.
    """
    from safetensors.torch import save

    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping, got {type(state).__name__}")
    enc = _Encoder()
    structure = json.dumps(enc.encode(state, ""), allow_nan=False, separators=(",", ":"))
    meta = {"format": CHECKPOINT_FORMAT, "structure": structure,
            "sha256": _digest(structure, enc.tensors)}
    return save(enc.tensors, metadata=meta)


def _is_pickle(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"   # torch.save zip / raw pickle


def _header(data: bytes, source: str, check_size: bool = True) -> dict[str, Any]:
    if len(data) < 8:
        raise CheckpointError(f"{source}: truncated ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError(f"{source}: truncated (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{source}: damaged (its header is not valid JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: not a fedopt checkpoint (no {CHECKPOINT_FORMAT!r} "
                              f"metadata)")
    if check_size:
        try:
            ends = [int(e["data_offsets"][1]) for k, e in header.items() if k != "__metadata__"]
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{source}: damaged (bad tensor table)") from None
        need = 8 + n + max(ends, default=0)
        if len(data) < need:
            raise CheckpointError(f"{source}: truncated ({len(data)} of {need} bytes)")
    return meta


def decode_checkpoint(data: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """The state encoded by :func:`encode_checkpoint`; never executes code from the file.

    Raises :class:`CheckpointError` naming ``source`` when the bytes are truncated, damaged
    (checksum mismatch), not a fedopt checkpoint, or a pickle (``torch.save``) checkpoint.
    """
    from safetensors.torch import load

    if _is_pickle(data):
        raise CheckpointError(
            f"{source}: a pickle checkpoint (torch.save, written by an older fedopt); fedopt "
            f"never unpickles files, since that can run arbitrary code; rerun into a new out "
            f"directory")
    meta = _header(data, source)
    try:
        tensors = load(bytes(data))
    except Exception as e:   # safetensors' own error type: truncated or damaged tensor table
        raise CheckpointError(f"{source}: damaged ({e})") from None
    structure = meta.get("structure", "")
    if _digest(structure, tensors) != meta.get("sha256"):
        raise CheckpointError(f"{source}: damaged (checksum mismatch)")
    try:
        state = _decode(json.loads(structure), tensors, source)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: damaged structure ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: not a fedopt checkpoint (got {type(state).__name__})")
    return state


def _written_by_fedopt(path: Path) -> bool:
    """Whether ``path`` starts with a fedopt checkpoint header (reads the header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            if n > 100_000_000:
                return False
            _header(head + f.read(n), os.fspath(path), check_size=False)
        return True
    except (OSError, CheckpointError):
        return False


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


def read_json(path: PathLike) -> Any:
    """Parse one JSON file (as written: no conversion of non-finite markers)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint written by :meth:`RunRecorder.save_checkpoint`
    (a dict with key ``round``); tensors are moved to ``map_location``.

    Raises :class:`CheckpointError` naming the file when it is truncated, damaged, not a
    fedopt checkpoint or an old pickle checkpoint (never unpickled), ``FileNotFoundError``
    when it is missing.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    state = decode_checkpoint(data, source)
    if map_location is not None and str(map_location) != "cpu":
        state = _move(state, map_location)
    return state


def _move(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device) for v in obj)
    return obj


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
            raise CheckpointError(
                f"{os.fspath(ckpt_dir / old[-1])}: a pickle checkpoint (torch.save, written by "
                f"an older fedopt); fedopt never unpickles files, since that can run arbitrary "
                f"code; rerun into a new out directory")
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


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def _longer(recorded: Any, given: Any) -> bool:
    """Whether a run length ``given`` is shorter than ``recorded`` (None: unlimited)."""
    if given is None:
        return False
    if recorded is None:
        return True
    return given < recorded


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
        with _io(out, "create the run directory"):
            out.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._start(out)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = Path(self.out_dir) / LOCK_FILE
        with _io(path, "create the lock file"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
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
        with _io(out / VERSIONS_FILE, "write"):
            atomic_write_json(out / VERSIONS_FILE, {**environment_info(), "seed": self.seed})
        with _io(out / CONFIG_FILE, "write"):
            atomic_write_json(out / CONFIG_FILE, self.config)
        self._rows = 0 if not (out / METRICS_FILE).exists() else None

    def _check_resume(self, out: Path) -> None:
        config_path = out / CONFIG_FILE
        if not config_path.is_file():
            raise ResumeMismatchError(f"{config_path}: missing, so the recorded config cannot be "
                                      f"checked; rerun into a new out directory")
        with _io(config_path, "read"):
            old = read_json(config_path)
        changed = [k for k in _diff_keys(old, self.config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ResumeMismatchError(
                f"{changed[0]}: differs from the recorded config of {self.out_dir} "
                f"(changed: {', '.join(changed)}); resume with the same config or use another --out")
        versions_path = out / VERSIONS_FILE
        with _io(versions_path, "read"):
            versions = read_json(versions_path) if versions_path.is_file() else {"seed": self.seed}
        if versions.get("seed", self.seed) != self.seed:
            raise ResumeMismatchError(f"seed: {self.seed} differs from the recorded seed "
                                      f"{versions['seed']} of {self.out_dir}")
        for key in sorted(RESUMABLE_CHANGES):
            recorded, given = _get(old, key), _get(self.config, key)
            if recorded != given and _longer(recorded, given):
                self.kept_values[key] = recorded
                _set(self.config, key, recorded)
                warnings.warn(f"{key}: {given} is shorter than the recorded {recorded} of "
                              f"{self.out_dir}; the resumed run keeps {recorded}", stacklevel=3)
        env = environment_info()
        versions.setdefault("resumed", []).append(
            {k: env[k] for k in ("time", "hostname", "git_commit", "fedopt", "torch")})
        with _io(versions_path, "write"):
            atomic_write_json(versions_path, versions)
        if old != self.config:  # a longer run: record the config the run now follows
            with _io(config_path, "write"):
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
        line = (_dumps_line(metrics) + "\n").encode()
        with _io(self.metrics_path, "write"):
            if self._metrics_fd is None:
                self._metrics_fd = self._open_metrics()
            if self._rows is None:
                self._rows = len(self.read_metrics())
            _write_all(self._metrics_fd, line)
        self._rows += 1

    def _open_metrics(self) -> int:
        path = Path(self.metrics_path)
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
            if needs_newline:  # a crash left a partial line: drop it first
                self._rewrite_metrics(lambda row: True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _FILE_MODE)

    def _rewrite_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        path = Path(self.metrics_path)
        if not path.is_file():
            self._rows = 0
            return 0
        with _io(path, "rewrite"):
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
        with _io(path, "write"):
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
        with _io(target, "write"):
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        files = _round_files(ckpt_dir)
        stale = [p for r, p in files if r > round]  # from an abandoned, later trajectory
        older = [p for r, p in files if r < round]
        for p in stale + older[:max(0, len(older) - (self.keep - 1))]:
            if _written_by_fedopt(p):
                with _io(p, "remove"):
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

_RUN_FILES = frozenset({CONFIG_FILE, VERSIONS_FILE, METRICS_FILE, SUMMARY_FILE, LOCK_FILE})


def remove_run_dir(run_dir: PathLike, dry_run: bool = False) -> None:
    """Delete a run directory that fedopt wrote, file by file: its records, its checkpoints,
    its ``plots/`` PNGs, fedopt's temporary files (``dry_run``: only check that it may).

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
    with _io(d, "list"):
        for p in d.iterdir():
            if p.name in _RUN_FILES and p.is_file() and not p.is_symlink():
                files.append(p)
            elif _TMP_FILE.match(p.name) and p.is_file():
                files.append(p)
            elif p.name == CHECKPOINT_DIR and p.is_dir() and not p.is_symlink():
                for q in p.iterdir():
                    if q.is_file() and (_ROUND_FILE.match(q.name) or _PICKLE_FILE.match(q.name)
                                        or _TMP_FILE.match(q.name)):
                        files.append(q)
                    else:
                        raise RunDirError(f"{os.fspath(q)}: not written by fedopt; "
                                          f"{os.fspath(d)} is left alone")
                dirs.append(p)
            elif p.name == "plots" and p.is_dir() and not p.is_symlink():
                for q in p.iterdir():
                    if q.is_file() and q.suffix == ".png":
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
        with _io(p, "remove"):
            p.unlink()
    for p in [*dirs, d]:
        with _io(p, "remove"):
            p.rmdir()
