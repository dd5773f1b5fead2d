"""``build_model(spec, input_shape, num_classes, seed)``: the config's ``model:`` section to an
``nn.Module``.

Each built-in model's schema is here (:data:`MODEL_SCHEMAS`, the union :data:`ModelSpec` on
``name``, default ``logreg``); ``MODEL_KEYS[name]`` lists every key a model accepts (besides
``name``) with its default; :func:`resolve_model_spec` checks a spec and fills defaults. A user's own ``nn.Module`` (used as
given) or a factory ``(input_shape, num_classes) -> nn.Module`` (initialised under ``seed``) is
accepted in place of a spec, after :func:`~fedopt.models.check.check_model`.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Optional

import torch
from pydantic import Field
from torch import nn

from fedopt.data.checks import positive_int
from fedopt.memory import available_memory_bytes
from fedopt.models.char_rnn import CharRNN
from fedopt.models.check import check_model
from fedopt.models.cnn import CNN
from fedopt.models.logreg import LogisticRegression
from fedopt.models.mlp import MLP
from fedopt.models.seeding import seeded_build
from fedopt.models.shapes import normalize_input_shape
from fedopt.schema import (Check, ConfigError, Float, PositiveInt, Schema, defaults_table,
                           named_union, parse, variant)


class ModelConfig(Schema):
    """A ``model:`` section: a built-in model and its sizes."""
    what = "model"


OddKernel = Annotated[PositiveInt, Check(lambda v: v % 2 == 1, "odd (same padding)")]
MODEL_SCHEMAS = [
    variant(ModelConfig, "logreg", doc="multinomial logistic regression",
            l2=(Annotated[Float, Check(lambda v: v >= 0, ">= 0")], Field(
                0.0, description="λ: (λ/2)‖x‖² added to every node's loss (decentralized "
                                 "algorithms)"))),
    variant(ModelConfig, "mlp", doc="fully connected ReLU network",
            hidden=(list[PositiveInt], Field([200, 200], description="hidden layer widths"))),
    variant(ModelConfig, "cnn", doc="FEMNIST-style CNN",
            channels=(Annotated[list[PositiveInt], Field(min_length=1)],
                      Field([32, 64], description="conv channels; one 2x2 pooling each")),
            kernel_size=(OddKernel, 5),
            hidden=(PositiveInt, Field(512, description="width of the hidden dense layer"))),
    variant(ModelConfig, "char_rnn", doc="embedding + GRU over token indices (Shakespeare)",
            vocab_size=(Optional[PositiveInt], Field(
                None, description="token indices 0..vocab_size-1 (null: num_classes, LEAF "
                                  "Shakespeare's characters)")),
            embed_dim=(PositiveInt, Field(8, description="embedding width")),
            hidden=(PositiveInt, Field(64, description="GRU state width"))),
]
#: a ``model:`` section (default ``logreg``)
ModelSpec = named_union(MODEL_SCHEMAS, default="logreg")
MODEL_KEYS: dict[str, dict[str, Any]] = defaults_table(MODEL_SCHEMAS)

#: the built-in model class of each name: ``cls(input_shape, num_classes, **MODEL_KEYS[name])``
MODEL_CLASSES: dict[str, type[nn.Module]] = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN,
                                             "char_rnn": CharRNN}

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def resolve_model_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A full, checked copy of ``spec`` with defaults filled; ConfigError naming
    ``model.<key>``."""
    return parse(ModelSpec, spec, "model").model_dump()


#: a model's parameters may take at most this fraction of the free memory of its device (the
#: engine stacks several copies per client: parameters, gradients, optimizer state)
MAX_MODEL_MEMORY_FRACTION = 0.25


def check_model_size(factory: Callable[[], nn.Module], name: str, input_shape: tuple[int, ...],
                     num_classes: int, dtype: torch.dtype,
                     device: torch.device | str | None = None) -> int:
    """Number of parameters of ``factory()``, counted on the ``meta`` device (nothing is
    allocated); ConfigError naming ``model.name`` and ``data.num_classes`` if they would take
    more than :data:`MAX_MODEL_MEMORY_FRACTION` of the free memory of ``device`` (CPU if None).
    """

    with torch.device("meta"):
        probe = factory()
    n = sum(p.numel() for p in probe.parameters())
    need = n * dtype.itemsize
    free = available_memory_bytes(torch.device(device if device is not None else "cpu"))
    if need > MAX_MODEL_MEMORY_FRACTION * free:
        raise ConfigError(f"model.name: {name} for input shape {list(input_shape)} and "
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
    :func:`~fedopt.models.check.check_model` after the move (ConfigError naming ``model``).
    A built-in model is first sized on the ``meta`` device by :func:`check_model_size`
    (ConfigError naming ``model.name``/``data.num_classes`` when it would not fit).
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
