"""Data stores on disk: a builder's final arrays as memory-mapped ``.npy`` files.

With ``data: {storage: mmap}`` a builder that supports it (Synthetic) writes its arrays, in the
order it produces them, into ``.npy`` files of one directory instead of into memory, and the
:class:`~fedopt.data.FederatedDataset` tensors are ``torch.from_numpy`` views of read-only
memory maps of those files (shared read-only ``mmap`` maps: no copy; rows are paged in from the
page cache when a round or an evaluation touches them, and :func:`read_ahead` asks for the
rows of a round's clients all at once). So a population larger than memory can
be simulated, and the process's own (anonymous) memory grows with the rows a round touches, not
with the population; the numbers are those of the in-memory build bit for bit (the builder is
the same code writing to another destination). The maps are read-only, not copy-on-write: a
private writable map is charged to the kernel's commit limit in full, and one of 45 GB is
refused (ENOMEM) on a 24 GB machine without swap. fedopt never writes into a data set's tensors;
an in-place write into these ones is a segmentation fault, so ``clone()`` a tensor to change it.

A store is the directory ``data.cache_dir`` (default: ``<cache>/<name>-<digest>`` under
``$XDG_CACHE_HOME/fedopt/data``, else ``~/.cache/fedopt/data``, the digest a hash of the request
below). It holds one ``<array>.npy`` per array and ``manifest.json``::

    {"format": "fedopt-data-store", "format_version": 1, "fedopt_version": ...,
     "request": {"builder": <data.name>, "builder_version": <int>, "seed": <seed>,
                 "data": {<every data key but storage and cache_dir>}},
     "arrays": {<array>: {"shape": [...], "dtype": "<f4"}, ...}}

Life cycle: the store is built in a sibling temporary directory ``.<name>.tmp-<pid>-<hex>``
(removed if the build fails), its files are flushed to disk (``fsync``), the manifest written
last, and the directory renamed to its final name in one step, so a store is either complete
or absent. A later run with the same request reuses it (the manifest's request must equal the
run's; each array's header must match the manifest). fedopt writes only into directories it
creates and deletes only its own temporary directories: an existing ``cache_dir`` that is not a
fedopt store, or a store built for another request, is a :class:`ConfigError` naming the
config field that differs (``data.<key>`` or ``seed``); choose another ``data.cache_dir`` or
delete the old store yourself.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import shutil
import warnings
import weakref
from pathlib import Path
from typing import Any, Annotated, Callable, Literal, Optional

import numpy as np
import torch
from numpy.lib import format as npy_format
from pydantic import BeforeValidator, Field

from fedopt.runfiles import fsync_dir
from fedopt.schema import ConfigError, Str, path_like

#: ``manifest.json``'s ``format`` and ``format_version``: what this module reads
STORE_FORMAT, STORE_FORMAT_VERSION = "fedopt-data-store", 1
MANIFEST = "manifest.json"

#: the schema type of ``data.storage`` (a data set whose builder writes through a
#: :class:`Destination` adds ``storage`` and ``cache_dir`` fields of these types)
Storage = Literal["memory", "mmap"]
CacheDir = Optional[Annotated[Str, BeforeValidator(path_like)]]
STORAGE_FIELD = Field("memory", description="memory: the arrays in RAM; mmap: .npy files on "
                                            "disk, memory-mapped (fedopt.data.store)")
CACHE_DIR_FIELD = Field(None, description="mmap: the store's directory (created by fedopt; "
                                          "reused by a run with the same data keys and seed); "
                                          "null: ~/.cache/fedopt/data/<name>-<digest>")
#: keys that say where the arrays live, not what they hold (left out of the request)
STORAGE_KEYS = ("storage", "cache_dir")


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/fedopt/data``, or ``~/.cache/fedopt/data`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedopt" / "data"


def store_request(name: str, builder_version: int, seed: int, keys: dict[str, Any]
                  ) -> dict[str, Any]:
    """What a store holds: builder ``name`` (``data.name``) at ``builder_version`` (bumped when
    the builder's numbers change), ``seed``, and the data keys ``keys`` without
    :data:`STORAGE_KEYS` (JSON values)."""
    return {"builder": name, "builder_version": int(builder_version), "seed": int(seed),
            "data": {k: v for k, v in sorted(keys.items()) if k not in STORAGE_KEYS}}


def store_path(request: dict[str, Any], cache_dir: str | None) -> Path:
    """The store's directory: ``cache_dir`` when given (``~`` expanded), else
    ``cache_root()/<builder>-<first 16 hex of sha256(request as sorted JSON)>``."""
    if cache_dir is not None:
        return Path(os.path.expanduser(cache_dir))
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"{request['builder']}-{digest}"


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``; ConfigError naming ``data.cache_dir`` when
    ``path`` is not a directory fedopt made into a store."""
    if not path.is_dir():
        raise ConfigError(f"data.cache_dir: {str(path)!r} exists and is not a directory; "
                          f"give a path that does not exist yet (fedopt creates the store)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise ConfigError(f"data.cache_dir: {str(path)!r} exists and is not a fedopt data store "
                          f"(no readable {MANIFEST}); fedopt writes only into a directory it "
                          f"creates: give a path that does not exist yet")
    if (not isinstance(manifest.get("request"), dict)
            or not isinstance(manifest.get("arrays"), dict)):
        raise ConfigError(f"data.cache_dir: the manifest of the store at {str(path)!r} is "
                          f"damaged (no request/arrays); delete that store to rebuild it, or "
                          f"give another data.cache_dir")
    if manifest.get("format_version") != STORE_FORMAT_VERSION:
        raise ConfigError(f"data.cache_dir: the store at {str(path)!r} has format version "
                          f"{manifest.get('format_version')!r}, this fedopt reads "
                          f"{STORE_FORMAT_VERSION}; delete it or give another data.cache_dir")
    return manifest


def _mismatch(path: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    """ConfigError naming the first field where the store's request ``have`` differs from the
    run's ``want``."""
    if have == want:
        return
    fields = [("data.name", have.get("builder"), want["builder"]),
              ("seed", have.get("seed"), want["seed"])]
    old, new = have.get("data") or {}, want["data"]
    fields += [(f"data.{k}", old.get(k), new.get(k)) for k in sorted(set(old) | set(new))]
    fields.append(("data.name", f"version {have.get('builder_version')}",
                   f"version {want['builder_version']}"))
    field, was, now = next((f for f in fields if f[1] != f[2]),
                           ("data.cache_dir", "another request", "this one"))
    raise ConfigError(f"{field}: the data store at {str(path)!r} (data.cache_dir) was built with "
                      f"{was!r}, this run asks for {now!r}; give another data.cache_dir (or "
                      f"delete that store to rebuild it there)")


def check_store(request: dict[str, Any], cache_dir: str | None) -> bool:
    """Whether the store of ``request`` exists (and then matches it: ConfigError naming the
    field otherwise, or ``data.cache_dir`` for a directory that is not a fedopt store)."""
    path = store_path(request, cache_dir)
    if not os.path.lexists(path):
        return False
    _mismatch(path, _read_manifest(path)["request"], request)
    return True


def open_store(request: dict[str, Any], cache_dir: str | None) -> dict[str, np.ndarray]:
    """The arrays of the existing store of ``request`` as read-only memory maps; the
    checks of :func:`check_store`, and ConfigError naming ``data.cache_dir`` when a file is
    missing or does not match the manifest (a damaged store: delete it)."""
    path = store_path(request, cache_dir)
    manifest = _read_manifest(path)
    _mismatch(path, manifest["request"], request)
    arrays = {}
    for name, meta in manifest["arrays"].items():
        try:
            a = _map_npy(path / f"{name}.npy")
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.cache_dir: the store at {str(path)!r} is damaged "
                              f"({name}.npy: {e}); delete it to rebuild") from None
        if list(a.shape) != meta["shape"] or a.dtype.str != meta["dtype"]:
            raise ConfigError(f"data.cache_dir: the store at {str(path)!r} is damaged ({name}.npy "
                              f"holds {a.dtype.str} {list(a.shape)}, the manifest says "
                              f"{meta['dtype']} {meta['shape']}); delete it to rebuild")
        arrays[name] = a
    return arrays


#: the arrays :func:`_map_npy` mapped, by the address of their first byte (weak: an entry
#: goes with its array)
_MAPPED: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def _map_npy(file: Path) -> np.ndarray:
    """A C-order ``.npy`` file as a read-only array over a shared read-only ``mmap`` (the
    array's ``base``), registered for :func:`read_ahead`. ValueError for a file shorter than
    its header says."""
    with open(file, "rb") as f:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version}")
        read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                       else npy_format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError("not a C-order array of plain values")
        count = int(np.prod(shape, dtype=np.int64))
        size = os.fstat(f.fileno()).st_size
        if size < offset + count * dtype.itemsize:
            raise ValueError(f"{size} bytes, the header needs {offset + count * dtype.itemsize}")
        if count == 0:
            return np.empty(shape, dtype=dtype)
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    a = np.frombuffer(m, dtype=dtype, count=count, offset=offset).reshape(shape)
    _MAPPED[a.ctypes.data] = a
    return a


def _advise(m: mmap.mmap, start: int, length: int) -> None:
    m.madvise(mmap.MADV_WILLNEED, start, length)


def read_ahead(tensors: tuple[torch.Tensor, ...], starts: np.ndarray, stops: np.ndarray) -> None:
    """Ask the kernel to read rows ``starts[j]:stops[j]`` of each memory-mapped tensor now
    (``madvise(MADV_WILLNEED)``, which queues the reads and returns): the rows of a round's
    clients then come from disk in parallel, not one page fault after another. A no-op for
    tensors that are not views of a store's map, and where ``madvise`` is missing."""
    if not _MAPPED or not hasattr(mmap, "MADV_WILLNEED"):
        return
    page = mmap.PAGESIZE
    for t in tensors:
        a = _MAPPED.get(t.data_ptr())
        if a is None or t.numel() == 0 or a.nbytes != t.numel() * t.element_size():
            continue
        m, row = a.base, a.strides[0]
        while not isinstance(m, mmap.mmap):   # reshape's view -> frombuffer's array -> the map
            m = m.obj if isinstance(m, memoryview) else m.base
        begin = a.ctypes.data - np.frombuffer(m, dtype=np.uint8, count=1).ctypes.data
        for lo, hi in zip(np.asarray(starts).tolist(), np.asarray(stops).tolist()):
            if hi > lo:
                first = begin + lo * row
                aligned = first - first % page
                try:
                    _advise(m, aligned, first + (hi - lo) * row - aligned)
                except OSError:     # only a hint: the rows still come in by page faults
                    return


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a whole array of a store's memory map (not a copy in memory)."""
    a = _MAPPED.get(t.data_ptr())
    return a is not None and a.nbytes == t.numel() * t.element_size()


def check_mapped_copy(data: Any, device: torch.device, dtype: torch.dtype) -> None:
    """A memory-mapped data set (``data.storage: mmap``) stays on disk only where the run uses
    it as stored: on the CPU in its own dtype. Another ``executor.dtype`` on the CPU copies every
    feature into memory; ConfigError naming ``executor.dtype`` when that copy would not fit in
    free memory (a device copy is the device's memory: its own allocator reports it)."""
    from fedopt.memory import available_memory_bytes

    x = data.x
    if device.type != "cpu" or dtype == x.dtype or not is_mapped(x):
        return
    need = x.numel() * dtype.itemsize
    free = available_memory_bytes(torch.device("cpu"))
    if need > free:
        raise ConfigError(f"executor.dtype: the memory-mapped data set (data.storage: mmap) is "
                          f"stored as {str(x.dtype).removeprefix('torch.')}; running in "
                          f"{str(dtype).removeprefix('torch.')} copies all {x.shape[0]:,} rows "
                          f"into memory, {need / 2**30:.1f} GiB, more than the "
                          f"{free / 2**30:.1f} GiB free; use executor.dtype: "
                          f"{str(x.dtype).removeprefix('torch.')}")


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``torch.from_numpy`` of each array, without torch's warning about read-only arrays
    (the maps of :func:`open_store` are read-only on purpose: module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(a) for name, a in arrays.items()}


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the file system that would hold ``path`` (its nearest existing ancestor)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p.parent != p:
        p = p.parent
    return int(shutil.disk_usage(p).free)


# ----------------------------------------------------------------------------- destinations

class Column:
    """One array of known shape filled front to back: ``append(values)`` writes
    ``values`` (rows along the first axis) after the rows written so far."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.shape, self.dtype, self.rows = tuple(int(s) for s in shape), np.dtype(dtype), 0

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.shape[1:] or self.rows + values.shape[0] > self.shape[0]:
            raise ValueError(f"Column.append: {values.shape} after {self.rows} rows does not fit "
                             f"{self.shape}")
        self._write(values)
        self.rows += values.shape[0]

    def _write(self, values: np.ndarray) -> None:
        raise NotImplementedError


class _MemoryColumn(Column):
    def __init__(self, shape: tuple[int, ...], dtype: Any):
        super().__init__(shape, dtype)
        self.array = np.empty(self.shape, dtype=self.dtype)

    def _write(self, values: np.ndarray) -> None:
        self.array[self.rows:self.rows + values.shape[0]] = values


class _FileColumn(Column):
    """An ``.npy`` file written sequentially (header, then the rows as they come): the rows
    pass through the page cache, never through this process's memory maps."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any):
        super().__init__(shape, dtype)
        self.path = path
        self.file = open(path, "wb")
        npy_format.write_array_header_2_0(
            self.file, {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False,
                        "shape": self.shape})

    def _write(self, values: np.ndarray) -> None:
        if values.size:
            self.file.write(memoryview(values.reshape(-1)).cast("B"))

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


class Destination:
    """Where a builder puts its final arrays: ``column(name, shape, dtype)`` gives a
    :class:`Column` to fill in order; :meth:`arrays` returns the filled arrays."""

    def column(self, name: str, shape: tuple[int, ...], dtype: Any) -> Column:
        raise NotImplementedError


class MemoryDestination(Destination):
    """The arrays in memory (``numpy.empty``), filled in place."""

    def __init__(self) -> None:
        self.columns: dict[str, _MemoryColumn] = {}

    def column(self, name: str, shape: tuple[int, ...], dtype: Any) -> Column:
        self.columns[name] = _MemoryColumn(shape, dtype)
        return self.columns[name]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: c.array for name, c in self.columns.items()}


class _DiskDestination(Destination):
    def __init__(self, directory: Path):
        self.directory = directory
        self.columns: dict[str, _FileColumn] = {}

    def column(self, name: str, shape: tuple[int, ...], dtype: Any) -> Column:
        self.columns[name] = _FileColumn(self.directory / f"{name}.npy", shape, dtype)
        return self.columns[name]

    def close(self) -> dict[str, dict[str, Any]]:
        """Flush every file to disk; ValueError when a column was not filled."""
        for name, c in self.columns.items():
            c.close()
            if c.rows != c.shape[0]:
                raise ValueError(f"data store: {name} got {c.rows} of {c.shape[0]} rows")
        return {name: {"shape": list(c.shape), "dtype": c.dtype.str}
                for name, c in self.columns.items()}

    def abort(self) -> None:
        for c in self.columns.values():
            c.file.close()


def _warn_leftovers(path: Path) -> None:
    """Warn about temporary build directories of ``path`` whose process no longer runs (a
    build killed before it could clean up): fedopt never trusts them, and never deletes what it
    cannot prove it owns, so it names them for the user to remove."""
    if os.name != "posix":      # liveness by signal 0 is POSIX's (on Windows it is Ctrl-C)
        return
    stale = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.append(tmp)
        except (ValueError, IndexError, OSError):
            continue
    if stale:
        warnings.warn(f"data.cache_dir: {len(stale)} unfinished build(s) of this store left by "
                      f"processes that no longer run, never used: "
                      f"{', '.join(str(t) for t in stale)}; remove them to free the disk",
                      stacklevel=3)


def build_stored(request: dict[str, Any], cache_dir: str | None,
                 build: Callable[[Destination], None]) -> dict[str, np.ndarray]:
    """The arrays of ``request``'s store: reused when it exists (:func:`open_store`), else
    built by ``build(destination)`` into a temporary sibling directory, flushed, given its
    manifest and renamed into place (module docstring), then opened. If another process
    completed the same store meanwhile, that one is used and ours removed. ConfigError naming
    ``data.cache_dir`` when the store's folders cannot be created."""
    from fedopt import __version__

    path = store_path(request, cache_dir)
    if check_store(request, cache_dir):
        return open_store(request, cache_dir)
    _warn_leftovers(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:   # a parent that is a file, no permission, a read-only file system
        raise ConfigError(f"data.cache_dir: cannot create the data store at {str(path)!r} "
                          f"({e.strerror}: {e.filename!r}); give a path in a writable "
                          f"folder") from None
    dest = _DiskDestination(tmp)
    try:
        try:
            build(dest)
            arrays = dest.close()
        except BaseException:
            dest.abort()
            raise
        manifest = {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
                    "fedopt_version": __version__, "request": request, "arrays": arrays}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, path)
            fsync_dir(path.parent)                    # the rename itself reaches the disk
        except OSError:
            if not check_store(request, cache_dir):   # not a concurrent build of the same store
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return open_store(request, cache_dir)
