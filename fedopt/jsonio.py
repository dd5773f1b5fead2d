"""JSON as fedopt records it: plain data, non-finite floats as strings.

Contract of every JSON file fedopt writes (``config.json``, ``versions.json``, ``summary.json``,
each line of ``metrics.jsonl``, a study's ``results.json``):

* :func:`to_jsonable` turns tensors and numpy values into numbers or lists, tuples into lists,
  paths into strings, enums into their value, dataclasses into dicts; anything else raises
  ``TypeError`` naming the entry.
* Non-finite floats are the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON: no bare
  ``NaN`` token is ever written); ``null`` means "not measured".
* :func:`from_jsonable_floats` turns those strings back into floats; :func:`read_json` parses a
  file as written (no conversion).
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any, Mapping

PathLike = str | os.PathLike

#: The recorded strings of the non-finite floats, and their values.
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def float_to_json(x: float) -> float | str:
    """``x`` itself when finite, else its recorded string (``"nan"``, ``"inf"``, ``"-inf"``)."""
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
        return float_to_json(float(obj))
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
        return NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: from_jsonable_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable_floats(v) for v in obj]
    return obj


def to_json_line(row: Mapping[str, Any], where: str = "metrics") -> str:
    """One line of a JSONL file (no newline): ``row`` through :func:`to_jsonable`, strict JSON."""
    return json.dumps(to_jsonable(row, where), allow_nan=False)


def read_json(path: PathLike) -> Any:
    """Parse one JSON file (as written: no conversion of non-finite markers)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
