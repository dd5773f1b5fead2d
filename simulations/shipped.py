"""The example configs shipped inside the package (``fedopt/simulations/configs/*.yaml``).

``fedopt run quickstart`` runs the shipped ``quickstart.yaml`` from any folder (an existing file
of that name wins: a path is always a path); ``fedopt configs`` lists them and ``fedopt configs
copy NAME [DEST]`` writes one out to edit. The files are package data, found with
:mod:`importlib.resources`, so they work from a wheel as from the repository.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SUFFIX = ".yaml"


class ShippedConfigError(ValueError):
    """A name that is neither a file nor a shipped config, or a copy that would overwrite."""


def _folder():
    return resources.files("fedopt.simulations") / "configs"


def shipped_names() -> list[str]:
    """Names of the shipped configs (file stems), sorted."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(SUFFIX)] for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(SUFFIX))


def shipped_text(name: str) -> str:
    """The YAML text of shipped config ``name`` (with or without ``.yaml``)."""
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem not in shipped_names():
        raise ShippedConfigError(f"no shipped config named {name!r}; shipped: "
                                 f"{', '.join(shipped_names()) or '(none)'}")
    return (_folder() / (stem + SUFFIX)).read_text(encoding="utf-8")


def describe(name: str) -> str:
    """The first comment line of a shipped config ('' when it has none)."""
    for line in shipped_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            return ""
    return ""


def resolve_config(arg: str) -> str | Path:
    """What ``fedopt run ARG`` reads: ``arg`` itself when it is an existing file (a path always
    wins), else the shipped config of that name (``quickstart`` or ``quickstart.yaml``), else
    ``arg`` unchanged (the loader then reports the missing file; :func:`missing_hint` adds the
    shipped names to that message)."""
    if os.path.exists(arg) or _looks_like_path(arg):
        return arg
    stem = arg[:-len(SUFFIX)] if arg.endswith(SUFFIX) else arg
    if stem in shipped_names():
        return Path(os.fspath(_folder() / (stem + SUFFIX)))   # installed packages are folders
    return arg


def _looks_like_path(arg: str) -> bool:
    return os.sep in arg or (os.altsep is not None and os.altsep in arg)


def missing_hint(arg: str) -> str:
    """For an ``arg`` that is neither a file nor a shipped config: the sentence listing the
    shipped configs ('' otherwise)."""
    if os.path.exists(arg) or (not _looks_like_path(arg) and resolve_config(arg) != arg):
        return ""
    return (f"{arg!r} is neither a file nor a shipped config; shipped configs: "
            f"{', '.join(shipped_names()) or '(none)'} (see `fedopt configs`)")


def copy_config(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write shipped config ``name`` to ``dest`` (a file, or a folder to put ``NAME.yaml`` in;
    default ``./NAME.yaml``) and return the path written. An existing file is kept unless
    ``force`` (:class:`ShippedConfigError` naming it)."""
    text = shipped_text(name)
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    target = Path(dest) if dest is not None else Path(stem + SUFFIX)
    if target.is_dir():
        target = target / (stem + SUFFIX)
    if target.exists() and not force:
        raise ShippedConfigError(f"DEST: {target} exists; choose another DEST or pass --force "
                                 f"to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target
