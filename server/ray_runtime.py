"""Shipping fedopt's code to Ray's nodes with a ``runtime_env`` (Ray's own mechanism), so a
cluster's nodes need Ray, torch and fedopt's dependencies but not fedopt itself.

``executor.ship_code: true`` adds fedopt's package folder to the job's ``runtime_env``
``py_modules``: Ray zips it once, uploads it to the cluster (GCS) and unpacks it on each node in
front of the workers' ``sys.path``, so workers import the driver's exact code.
``executor.runtime_env`` is passed to ``ray.init`` as written (``working_dir``, ``pip``,
``env_vars``, ... — Ray validates it); ``ship_code`` appends to its ``py_modules``.

The package-dir mapping: installed from a wheel, ``fedopt/`` holds ``server/``, ``client/``,
``protocols/`` and ``simulations/`` and is shipped as it is. From the repository (an editable
install) those four are sibling folders mapped to ``fedopt.server`` etc. (setup.py), so the
installed layout is staged first in a temporary folder (copies, without ``__pycache__``) and that
``fedopt/`` is shipped.
"""
from __future__ import annotations

import atexit
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: subpackages installed under fedopt from sibling folders of the repository (setup.py's map)
MAPPED = ("server", "client", "protocols", "simulations")

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
_staged: dict[str, Path] = {}


def package_dir() -> Path:
    """A folder named ``fedopt`` laid out as the installed package: the package itself when it
    is installed so, else a staged copy (made once per process, removed at exit)."""
    import fedopt

    root = Path(fedopt.__file__).resolve().parent
    parts = {name: Path(importlib.import_module(f"fedopt.{name}").__path__[0]).resolve()
             for name in MAPPED}
    if all(p == root / name for name, p in parts.items()):
        return root
    key = str(root)
    if key not in _staged:
        tmp = Path(tempfile.mkdtemp(prefix="fedopt-ship-"))
        atexit.register(shutil.rmtree, tmp, True)
        stage = tmp / "fedopt"
        shutil.copytree(root, stage, ignore=_IGNORE)
        for name, src in parts.items():
            if (stage / name).exists():
                shutil.rmtree(stage / name)
            shutil.copytree(src, stage / name, ignore=_IGNORE)
        _staged[key] = stage
    return _staged[key]


def runtime_env(executor: dict[str, Any]) -> dict[str, Any] | None:
    """The ``runtime_env`` for ``ray.init`` from an ``executor:`` section (``runtime_env`` as
    given, plus fedopt's folder in ``py_modules`` with ``ship_code``); None when neither is set."""
    env = dict(executor.get("runtime_env") or {})
    if executor.get("ship_code"):
        modules = list(env.get("py_modules") or [])
        modules.append(str(package_dir()))
        env["py_modules"] = modules
    return env or None
