"""Optional dependencies (pip extras) imported on use, with one error naming the extra.

The core (``pip install fedopt``) needs torch, numpy, pydantic, safetensors, PyYAML, msgpack and
the privacy accountants only. Each heavy part is an extra (pyproject.toml): ``fedopt[ray]``
(Ray with its job server: ``executor.name: ray``), ``fedopt[grpc]`` (the gRPC fleet),
``fedopt[plot]`` (``fedopt plot``), ``fedopt[tensorboard]``; ``fedopt[all]`` is all of them.
Code that needs one calls :func:`require` where it first uses it, never at module import.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: module imported -> the extra that installs it
EXTRAS = {"ray": "ray", "grpc": "grpc", "matplotlib": "plot", "tensorboard": "tensorboard"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it.
    The ``fedopt`` CLI prints it as one ``error:`` line."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module`` or raise :class:`MissingExtraError`: ``"<purpose> needs <pkg>, which is
    not installed: pip install 'fedopt[<extra>]'"`` (the extra from :data:`EXTRAS`)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise          # the package is there but one of its own dependencies is broken
        extra = EXTRAS.get(top)
        how = f"pip install 'fedopt[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(f"{purpose} needs {top}, which is not installed: {how} "
                                f"(or 'fedopt[all]')") from None
