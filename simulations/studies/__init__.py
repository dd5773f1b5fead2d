"""Studies: sweeps of plain fedopt configs, their tables and plots.

A study writes only into an output folder it created: :func:`claim_out_dir` takes a new or
empty folder (recording ``study.json`` in it first) or one holding the ``study.json`` of the
same study (an earlier sweep, whose finished runs are reused), and refuses anything else
before the study writes a byte.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

#: The record a study writes first into its output folder: the folder is the study's.
STUDY_RECORD = "study.json"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``extra`` merged in, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _study_of(out: Path) -> str | None:
    """The study named by ``out/study.json``, or None when there is no such fedopt record."""
    from fedopt.jsonio import read_json

    try:
        record = read_json(out / STUDY_RECORD)
    except (OSError, ValueError):
        return None
    study = record.get("study") if isinstance(record, dict) else None
    return study if isinstance(study, str) and "fedopt" in record else None


def claim_out_dir(out: str | Path, study: str) -> Path:
    """Make ``out`` the output folder of ``study``, or refuse before anything is written.

    ``out`` is taken when it does not exist or is empty (``study.json``, the study's name and
    :func:`fedopt.environment.environment_info`, is written into it first), or when it holds
    the ``study.json`` of the same study: the folder of an earlier sweep, whose own files the
    study may rewrite. Raises :class:`fedopt.records.RunExistsError` naming ``out`` and an
    entry when ``out`` holds files without that record (the study did not create the folder:
    nothing in it is touched), :class:`fedopt.runfiles.RunDirError` for an OS error.
    """
    from fedopt.environment import environment_info
    from fedopt.records import RunExistsError
    from fedopt.runfiles import RunDirError, atomic_write_json, run_dir_errors

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out: {out} exists and is not a directory")
    if out.is_dir():
        owner = _study_of(out)
        if owner == study:
            return out
        with run_dir_errors(out, "list"):
            entries = sorted(p.name for p in out.iterdir())
        if owner is not None:
            raise RunExistsError(f"--out: {out} holds the output of the {owner} study; it is "
                                 f"left alone: choose another --out")
        if entries:
            raise RunExistsError(f"--out: {out / entries[0]} was not written by the {study} "
                                 f"study (no {STUDY_RECORD} of it in {out}); nothing in {out} is "
                                 f"touched: choose a new or empty --out")
    with run_dir_errors(out, "create the output folder"):
        out.mkdir(parents=True, exist_ok=True)
    with run_dir_errors(out / STUDY_RECORD, "write"):
        atomic_write_json(out / STUDY_RECORD, {"study": study, **environment_info()})
    return out
