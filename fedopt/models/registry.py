"""``build_model(spec, input_shape, num_classes, seed)``: the config's ``model:`` section to an
``nn.Module``.

``MODEL_KEYS[name]`` lists every key a model accepts (besides ``name``) with its default;
:func:`resolve_model_spec` checks a spec and fills defaults. A user's own ``nn.Module`` (used as
given) or a factory ``(input_shape, num_classes) -> nn.Module`` (initialised under ``seed``) is
accepted in place of a spec, after :func:`~fedopt.models.check.check_model`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fedopt.data.checks import positive_int, resolve_named
from fedopt.memory import available_memory_bytes
from fedopt.models.check import check_model
from fedopt.models.cnn import CNN
from fedopt.models.logreg import LogisticRegression
from fedopt.models.mlp import MLP
from fedopt.models.seeding import seeded_build
from fedopt.models.shapes import normalize_input_shape

MODEL_KEYS: dict[str, dict[str, Any]] = {
    "logreg": {},
    "mlp": {"hidden": [200, 200]},
    "cnn": {"channels": [32, 64], "kernel_size": 5, "hidden": 512},
}

#: the built-in model class of each name: ``cls(input_shape, num_classes, **MODEL_KEYS[name])``
MODEL_CLASSES: dict[str, type[nn.Module]] = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def _widths(value: Any, field: str, allow_empty: bool) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: must be a list of positive integers, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{field}: must not be empty")
    return [positive_int(v, f"{field}[{i}]") for i, v in enumerate(value)]


def resolve_model_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A full, checked copy of ``spec`` with defaults filled; errors name ``model.<key>``."""
    full = resolve_named(spec, MODEL_KEYS, "model", "model")
    name = full["name"]
    if name == "mlp":
        full["hidden"] = _widths(full["hidden"], "model.hidden", allow_empty=True)
    elif name == "cnn":
        full["channels"] = _widths(full["channels"], "model.channels", allow_empty=False)
        full["kernel_size"] = positive_int(full["kernel_size"], "model.kernel_size")
        if full["kernel_size"] % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd (same padding), "
                             f"got {full['kernel_size']}")
        full["hidden"] = positive_int(full["hidden"], "model.hidden")
    return full


#: a model's parameters may take at most this fraction of the free memory of its device (the
#: engine stacks several copies per client: parameters, gradients, optimizer state)
MAX_MODEL_MEMORY_FRACTION = 0.25


def check_model_size(factory: Callable[[], nn.Module], name: str, input_shape: tuple[int, ...],
                     num_classes: int, dtype: torch.dtype,
                     device: torch.device | str | None = None) -> int:
    """Number of parameters of ``factory()``, counted on the ``meta`` device (nothing is
    allocated); ValueError naming ``model.name`` and ``data.num_classes`` if they would take
    more than :data:`MAX_MODEL_MEMORY_FRACTION` of the free memory of ``device`` (CPU if None).
    """

    with torch.device("meta"):
        probe = factory()
    n = sum(p.numel() for p in probe.parameters())
    need = n * dtype.itemsize
    free = available_memory_bytes(torch.device(device if device is not None else "cpu"))
    if need > MAX_MODEL_MEMORY_FRACTION * free:
        raise ValueError(f"model.name: {name} for input shape {list(input_shape)} and "
                         f"{num_classes} classes (data.num_classes) has {n:,} parameters "
                         f"({need / 2**30:.1f} GiB), more than {MAX_MODEL_MEMORY_FRACTION:g} of "
                         f"the {free / 2**30:.1f} GiB of free memory")
    return n


def build_model(spec: dict[str, Any] | nn.Module | ModelFactory, input_shape: tuple[int, ...],
                num_classes: int, seed: int = 0, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """The model for ``spec``, initialised from ``seed`` (same seed ⇒ same parameters, global
    RNG untouched), then moved to ``device``/``dtype`` if given.

    ``spec`` may be a config dict (``{"name": "mlp", "hidden": [200, 200]}``), a user's
    ``nn.Module`` (returned as given, moved in place if ``device``/``dtype`` are given) or a
    factory ``(input_shape, num_classes) -> nn.Module``; the latter two are checked with
    :func:`~fedopt.models.check.check_model` after the move (ValueError naming ``model``).
    A built-in model is first sized on the ``meta`` device by :func:`check_model_size`
    (ValueError naming ``model.name``/``data.num_classes`` when it would not fit).
    """
    shape = normalize_input_shape(input_shape)
    num_classes = positive_int(num_classes, "num_classes")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if isinstance(spec, nn.Module):
        model = spec
        user = True
    elif callable(spec) and not isinstance(spec, dict):
        model = seeded_build(lambda: spec(shape, num_classes), seed)
        user = True
    else:
        full = resolve_model_spec(spec)
        kwargs = {k: v for k, v in full.items() if k != "name"}
        cls = MODEL_CLASSES[full["name"]]
        check_model_size(lambda: cls(shape, num_classes, **kwargs), full["name"], shape,
                         num_classes, dtype or torch.float32, device)
        model = seeded_build(lambda: cls(shape, num_classes, **kwargs), seed)
        user = False
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    if user:
        check_model(model, shape, num_classes)
    return model
