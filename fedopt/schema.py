"""The shared base of fedopt's declarative config schemas (pydantic v2): strict models, the value
types every section uses, ``name``-tagged unions, and :class:`ConfigError` with its formatting.

Each schema lives beside what it configures (an algorithm's in its module next to its
``ALGORITHM_SPECS``, a data set's beside its builder, the clock's in :mod:`fedopt.clock.config`,
an executor's with its transport) and imports only this module; :mod:`fedopt.config` assembles
them. What users rely on:

* **strict values**: no coercion (``"5"`` is not 5, ``true`` is not 1); an integer is accepted
  where a number is expected; NaN and ±inf are refused unless the field gives +inf a meaning
  (:data:`InfFloat`, :data:`NullInf`: then ``.inf``, the string ``"inf"`` that a recorded
  config.json holds and, for :data:`NullInf`, ``null`` all mean +inf);
* **unknown keys** are refused naming the key and listing the valid ones;
* **one error**: :func:`parse` raises one :class:`ConfigError` whose message starts with the dotted
  field (``algorithm.server_optimizer.betas[1]: must be in [0, 1), got 1.5``), never pydantic's
  multi-line report.

A union over variants selected by ``name`` is :func:`named_union`: a variant may be written as its
name alone (``compute: pareto``), a section may default its name (``model: {hidden: [64]}`` is an
``mlp`` only when its name says so; a missing name takes the union's default).
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Annotated, Any, Callable, ClassVar, Literal, Mapping, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator,
                      Field, Tag, TypeAdapter, ValidationError, create_model, model_validator)
from pydantic_core import PydanticCustomError

__all__ = [
    "ConfigError", "Schema", "Check", "Int", "Float", "Bool", "Str", "PositiveInt",
    "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Probability", "InfFloat", "NullInf",
    "Seed", "SEED_MAX", "named_union", "variant", "fail", "parse", "plain", "join",
    "defaults_table", "check_clients_per_round",
]


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted field name."""


def join(path: str, key: Any) -> str:
    """``path.key`` (``path[i]`` for an index; just ``key`` at the top level: error paths never
    start with a dot)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------- errors

def fail(field: str | None, message: str) -> PydanticCustomError:
    """An error for a model validator to raise: ``field`` (relative to the model, dotted; None:
    the model itself) and the message after ``field: ``."""
    return PydanticCustomError("fedopt", "{message}", {"field": field, "message": message})


def _got(value: Any) -> str:
    return repr(value)


_EXPECTED = {"int_type": "integer", "float_type": "number", "bool_type": "true/false",
             "string_type": "string", "list_type": "list", "dict_type": "mapping",
             "model_type": "mapping", "model_attributes_type": "mapping"}


def _describe(err: Mapping[str, Any]) -> tuple[list[Any], str]:
    """(extra path components, message) of one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "fedopt":
        extra = [p for p in str(ctx["field"]).split(".")] if ctx.get("field") else []
        return extra, str(ctx["message"])
    if kind == "missing":
        return [], "required"
    if kind in _EXPECTED:
        if kind in ("dict_type", "model_type", "model_attributes_type"):
            return [], f"expected a mapping, got {type(value).__name__}"
        return [], f"expected {_EXPECTED[kind]}, got {_got(value)}"
    if kind == "finite_number":
        if isinstance(value, float) and value != value:
            return [], "NaN is not allowed"
        return [], f"must be finite, got {_got(value)}"
    if kind == "literal_error":
        return [], f"must be one of {ctx['expected']}, got {_got(value)}"
    if kind == "union_tag_invalid":
        tag = str(ctx["tag"]).lstrip("@")
        choices = ", ".join(t.strip().strip("'").lstrip("@")
                            for t in str(ctx["expected_tags"]).split(","))
        if not tag:
            return ["name"], f"required (choose one of {choices})"
        return ["name"], f"unknown {tag!r} (choose one of {choices})"
    if kind == "union_tag_not_found":
        return [], f"expected a mapping with a 'name', got {_got(value)}"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return [], "must not be empty"
    if kind in ("too_short", "too_long"):
        return [], f"must have {'at least' if kind == 'too_short' else 'at most'} " \
                   f"{ctx.get('min_length', ctx.get('max_length'))} entries, got {len(value)}"
    return [], str(err.get("msg"))


def _location(loc: tuple[Any, ...]) -> list[Any]:
    """pydantic's location without the union tags (``'@name'``) it inserts."""
    return [p for p in loc if not (isinstance(p, str) and p.startswith("@"))]


def config_error(error: ValidationError, path: str = "") -> ConfigError:
    """The first error of ``error`` as one :class:`ConfigError` naming ``path.<field>``."""
    err = error.errors(include_url=False)[0]
    extra, message = _describe(err)
    where = path
    for part in [*_location(err["loc"]), *extra]:
        where = join(where, part)
    return ConfigError(f"{where or 'config'}: {message}")


@lru_cache(maxsize=None)
def _adapter(schema: Any) -> TypeAdapter:
    return TypeAdapter(schema)


def parse(schema: Any, value: Any, path: str = "") -> Any:
    """``value`` validated by ``schema`` (a model class or any type pydantic accepts), numpy and
    torch scalars first read as Python numbers (:func:`plain`); :class:`ConfigError` naming
    ``path.<field>`` otherwise."""
    try:
        return _adapter(schema).validate_python(plain(value))
    except ValidationError as e:
        raise config_error(e, path) from None


# ----------------------------------------------------------------------------- values

def plain(value: Any) -> Any:
    """numpy scalars and 0-d arrays, 0-d torch tensors -> the Python numbers they hold;
    numpy arrays and tuples -> lists (as YAML and config.json hold them); mappings and lists
    converted recursively."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    module = type(value).__module__
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return plain(value.tolist())
    elif module.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor) and value.ndim == 0:
            return value.item()
    return value


def Check(ok: Callable[[Any], bool], what: str) -> AfterValidator:   # noqa: N802 (a marker)
    """A value check: ``ok(value)`` must hold, else "must be <what>, got <value>"."""
    def check(v: Any) -> Any:
        if v is not None and not ok(v):
            raise PydanticCustomError("fedopt", "{message}",
                                      {"field": None, "message": f"must be {what}, got {v!r}"})
        return v
    return AfterValidator(check)


def _inf_strings(v: Any) -> Any:
    return math.inf if v == "inf" else v   # how a recorded config.json writes +inf


def _null_inf(v: Any) -> Any:
    return math.inf if v is None or v == "inf" else v


def _not_nan(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        raise PydanticCustomError("fedopt", "{message}", {"field": None,
                                                          "message": "NaN is not allowed"})
    return v


Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]        # finite (the models refuse inf and NaN)
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
PositiveInt = Annotated[Int, Check(lambda v: v > 0, "> 0")]
NonNegativeInt = Annotated[Int, Check(lambda v: v >= 0, ">= 0")]
PositiveFloat = Annotated[Float, Check(lambda v: v > 0, "> 0")]
NonNegativeFloat = Annotated[Float, Check(lambda v: v >= 0, ">= 0")]
Probability = Annotated[Float, Check(lambda v: 0 <= v <= 1, "a probability in [0, 1]")]
#: a number where +inf means something ("never", "unlimited"): ``.inf`` or ``"inf"``; not NaN
InfFloat = Annotated[float, Field(strict=True, allow_inf_nan=True), BeforeValidator(_inf_strings),
                     AfterValidator(_not_nan)]
#: as :data:`InfFloat`, and ``null`` also means +inf
NullInf = Annotated[float, Field(strict=True, allow_inf_nan=True), BeforeValidator(_null_inf),
                    AfterValidator(_not_nan)]

#: seeds are 64-bit: the keyed RNG (:mod:`fedopt.rng`) and torch's generators take 0..2**64 − 1
SEED_MAX = 2 ** 64 - 1
Seed = Annotated[Int, Check(lambda v: 0 <= v <= SEED_MAX,
                            "an integer in [0, 2**64 - 1] (the RNG's 64-bit seed range)")]


# ----------------------------------------------------------------------------- models

class Schema(BaseModel):
    """A strict config section: unknown keys are refused naming them and the valid keys
    (``what``, e.g. "executor 'local'", says whose keys they are)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False,
                              validate_default=False, protected_namespaces=())
    what: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    whose = f" for {cls.what}" if cls.what else ""
                    raise fail(str(key), f"unknown key{whose} (valid keys: "
                                         f"{', '.join(cls.model_fields)})")
        return data


def variant(base: type[Schema], name: str, what: str = "", doc: str = "",
            **fields: Any) -> type[Schema]:
    """A subclass of ``base`` selected by ``name: <name>`` with extra ``fields`` (pydantic
    ``create_model`` field definitions: ``(type, default)``)."""
    model = create_model(f"{base.__name__}_{name}", __base__=base, __doc__=doc or base.__doc__,
                         name=(Literal[name], name), **fields)
    model.what = what or f"{base.what or base.__name__} {name!r}".strip()
    return model


def named_union(variants: list[type[Schema]], default: str | None = None) -> Any:
    """The union of ``variants`` selected by their ``name`` (a string alone names a variant
    with its defaults; ``None`` or a mapping without a name takes ``default``)."""
    names = [v.model_fields["name"].default for v in variants]

    def shorthand(v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if v is None and default is not None:
            return {"name": default}
        return v

    def tag(v: Any) -> str | None:
        if isinstance(v, Mapping):
            name = v.get("name", default)
            return "@" + ("" if name is None else str(name))
        if isinstance(v, BaseModel):
            return "@" + str(getattr(v, "name", ""))
        return None

    members = tuple(Annotated[v, Tag("@" + n)] for v, n in zip(variants, names))
    return Annotated[Union[members], Discriminator(tag), BeforeValidator(shorthand)]


def defaults_table(variants: list[type[Schema]]) -> dict[str, dict[str, Any]]:
    """``{name: {key: default}}`` of a union's variants (None where a key is required)."""
    table = {}
    for v in variants:
        keys = {}
        for k, f in v.model_fields.items():
            if k == "name":
                continue
            d = f.get_default(call_default_factory=True)
            keys[k] = d.model_dump() if isinstance(d, BaseModel) else (
                None if d is ... or repr(d) == "PydanticUndefined" else d)
        table[v.model_fields["name"].default] = keys
    return table


def check_clients_per_round(clients_per_round: int, num_clients: int | None,
                            what: str = "data.num_clients") -> None:
    """The one range check of ``algorithm.clients_per_round`` against the number of clients
    (its schema type makes it a positive integer); ``num_clients`` None: not known yet."""
    if num_clients is not None and clients_per_round > num_clients:
        raise ConfigError(f"algorithm.clients_per_round: {clients_per_round} exceeds "
                          f"{what} ({num_clients})")


def path_like(v: Any) -> Any:
    """A path given as ``os.PathLike`` (Python API) as the string config.json holds."""
    return os.fspath(v) if isinstance(v, os.PathLike) else v

