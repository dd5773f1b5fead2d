"""Run configuration: load (YAML or dict), apply ``--set`` overrides, validate, fill defaults.

Everything is checked before anything runs. An unknown key, a wrong type or an impossible
value raises one :class:`ConfigError` whose message starts with the dotted field name, e.g.
``algorithm.clients_per_round: 200 exceeds data.num_clients (100)``. :func:`validate` runs every
check that building a run does (data spec, model shapes, client/server optimizers, the
algorithm's own build, clock, device) without building the data, so ``fedopt validate``
refuses exactly what ``fedopt run`` would.

Values as users write them: YAML is read with YAML 1.2 floats (``1e-3``, ``1E5``, ``.5e-2`` are
numbers, not strings) and a repeated key is an error naming it and its lines (config files and
``--set`` values alike); numpy scalars, 0-d arrays and 0-d torch tensors given through the
Python API are taken as the Python numbers they hold.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml

REQUIRED = object()


class ConfigError(ValueError):
    """A configuration problem; the message names the field."""


@dataclass(frozen=True)
class Field:
    """One config key: accepted types, default, and an optional value check.

    ``check(value)`` returns an error string (without the field name) or None.
    """

    types: tuple[type, ...]
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    allow_inf: bool = False   # ±inf is an error unless the field gives it a meaning


#: seeds are 64-bit: the keyed RNG (:mod:`fedopt.rng`) and torch's generators take 0..2**64 − 1
SEED_MAX = 2 ** 64 - 1


def seed_range(v) -> str | None:
    return None if 0 <= v <= SEED_MAX else \
        f"must be an integer in [0, 2**64 - 1] (the RNG's 64-bit seed range), got {v!r}"


def positive(v) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def non_negative(v) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}, got {v!r}"
    return check


INT, FLOAT, BOOL, STR = (int,), (int, float), (bool,), (str,)
OPT_INT = (int, type(None))

#: null (the default) means "not given": each rule fills its own defaults for the keys it
#: reads, and a key the chosen rule does not read is an error (fedopt.algorithms.server_opt)
SERVER_OPTIMIZER_FIELDS = {
    "name": Field(STR, "sgd", one_of("sgd", "adam", "yogi", "adagrad")),
    "lr": Field(FLOAT, 1.0, positive, "server learning rate η"),
    "momentum": Field(FLOAT + (type(None),), None,
                      lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}",
                      "sgd only (default 0)"),
    "nesterov": Field(BOOL + (type(None),), None, doc="sgd only (default false)"),
    "betas": Field((list, tuple, type(None)), None,
                   doc="adam/yogi: [β1, β2]; paper-style adagrad: [β1]"),
    "tau": Field(FLOAT + (type(None),), None, positive, "adaptivity τ (adaptive rules, default 1e-3)"),
    "style": Field(STR + (type(None),), None, one_of("paper", "tff"),
                   "adaptive rules: paper (default) or tff"),
}

ALGORITHM_COMMON = {
    "name": Field(STR, "fedavg"),
    "rounds": Field(INT, REQUIRED, positive),
    "clients_per_round": Field(INT, REQUIRED, positive),
    "aggregation_weights": Field(STR, "num_samples", one_of("num_samples", "uniform", "unbiased")),
    "server_optimizer": Field((dict, type(None)), None),
}

CLIENT_FIELDS = {
    "local_steps": Field(OPT_INT, None, lambda v: None if v is None or v > 0 else f"must be > 0, got {v!r}"),
    "local_epochs": Field(OPT_INT, None, lambda v: None if v is None or v > 0 else f"must be > 0, got {v!r}"),
    "batch_size": Field(INT, 10, positive),
    "optimizer": Field((dict, type(None)), None),
    "lr_decay": Field(FLOAT, 1.0, lambda v: None if 0 < v <= 1 else f"must be in (0, 1], got {v!r}",
                      "client lr multiplied by lr_decay**round"),
}

EXECUTOR_FIELDS = {
    "name": Field(STR, "local", one_of("local", "ray")),
    "device": Field(STR, "cpu"),
    "chunk_size": Field(OPT_INT, None, lambda v: None if v is None or v > 0 else f"must be > 0, got {v!r}",
                        "clients per vectorized chunk (null: automatic from free memory)"),
    "dtype": Field(STR, "float32", one_of("float32", "float64")),
    "num_threads": Field(OPT_INT, None, lambda v: None if v is None or v > 0 else f"must be > 0, got {v!r}",
                         "torch intra-op threads (null: leave torch's default)"),
    # Ray executor (server/ and client/): ignored by the local executor
    "num_workers": Field(INT, 2, positive),
    "num_cpus_per_worker": Field(FLOAT, 1.0, non_negative),
    "num_gpus_per_worker": Field(FLOAT, 0.0, non_negative),
    "address": Field((str, type(None)), None, doc="null: start a local Ray; 'auto' or ray://host:port"),
    "round_timeout_s": Field((int, float, type(None)), None, doc="a worker slower than this is a straggler"),
    "max_retries": Field(INT, 2, non_negative),
    "on_timeout": Field(STR, "drop", one_of("drop", "retry"),
                        "a straggling worker's clients: dropped (renormalised FedAvg) or re-sent"),
    "realtime": Field(BOOL, False, doc="asynchronous algorithms on Ray workers in real time "
                                       "(server/realtime.py) instead of on the virtual clock"),
    "seconds_per_unit": Field((int, float, type(None)), None,
                              lambda v: None if v is None or v > 0 else f"must be > 0, got {v!r}",
                              "real time: seconds per clock unit; clock: job times are injected "
                              "as delays (null: no delays, intervals/timeouts in seconds)"),
}

TOP_FIELDS = {
    "seed": Field(INT, 0, seed_range),
    "name": Field((str, type(None)), None),
    "data": Field((dict,), REQUIRED),
    "model": Field((dict, type(None)), None),
    "algorithm": Field((dict,), REQUIRED),
    "client": Field((dict,), REQUIRED),
    "executor": Field((dict, type(None)), None),
    "eval_every": Field(INT, 1, positive),
    "eval_train": Field(BOOL, True),
    "checkpoint_every": Field(INT, 10, non_negative),
    "on_nonfinite": Field(STR, "error", one_of("error", "drop"),
                          doc="a client whose update is NaN/inf: 'error' stops the run naming it; "
                              "'drop' leaves it out of the aggregate and counts it"),
    "clock": Field((dict, type(None)), None, doc="virtual-clock models of client compute/communication time"),
}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is not an int here
    return isinstance(value, types)


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", bool: "true/false", str: "string", list: "list",
             tuple: "list", dict: "mapping", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def join(path: str, key: Any) -> str:
    """``path.key`` (just ``key`` at the top level: error paths never start with a dot)."""
    return f"{path}.{key}" if path else str(key)


def validate_section(values: Mapping[str, Any] | None, fields: Mapping[str, Field],
                     path: str) -> dict[str, Any]:
    """Check keys/types/values of one mapping and fill defaults; errors name ``path.key``."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(values).__name__}")
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"{join(path, unknown[0])}: unknown key (valid keys: {', '.join(fields)})")
    out: dict[str, Any] = {}
    for key, f in fields.items():
        where = join(path, key)
        if key not in values:
            if f.default is REQUIRED:
                raise ConfigError(f"{where}: required")
            out[key] = copy.deepcopy(f.default)
            continue
        v = values[key]
        if f.allow_inf and v == "inf":   # how a recorded config.json writes +inf
            v = math.inf
        if not _type_ok(v, f.types):
            raise ConfigError(f"{where}: expected {_type_name(f.types)}, got {v!r}")
        if isinstance(v, float) and v != v:
            raise ConfigError(f"{where}: NaN is not allowed")
        if isinstance(v, float) and v in (float("inf"), float("-inf")) and not f.allow_inf:
            raise ConfigError(f"{where}: must be finite, got {v!r}")
        if f.check is not None and v is not None:
            msg = f.check(v)
            if msg:
                raise ConfigError(f"{where}: {msg}")
        out[key] = v
    return out


def _fields_from_defaults(defaults: Mapping[str, Any]) -> dict[str, Field]:
    """Fields for a registry section described by {key: default} (types from the default)."""
    fields = {}
    for k, d in defaults.items():
        if d is None:
            types: tuple[type, ...] = (object,)
        elif isinstance(d, bool):
            types = BOOL
        elif isinstance(d, int):
            types = INT
        elif isinstance(d, float):
            types = FLOAT
        elif isinstance(d, (list, tuple)):
            types = (list, tuple)
        elif isinstance(d, dict):
            types = (dict, str)  # a sub-spec such as partition: {name: dirichlet} or its name
        else:
            types = (type(d),)
        fields[k] = Field(types, copy.deepcopy(d))
    return fields


def _registry_section(values: Mapping[str, Any] | None, registry: Mapping[str, Mapping[str, Any]],
                      default_name: str | None, path: str) -> dict[str, Any]:
    values = dict(values or {})
    name = values.get("name", default_name)
    if name is None:
        raise ConfigError(f"{path}.name: required (one of {', '.join(registry)})")
    if name not in registry:
        raise ConfigError(f"{path}.name: unknown {name!r} (choose one of {', '.join(registry)})")
    fields = {"name": Field(STR, name), **_fields_from_defaults(
        {k: v for k, v in registry[name].items() if k != "name"})}
    return validate_section(values, fields, path)


def _as_config_error(resolve: Callable[[Any], Any], section: Any) -> Any:
    """``resolve(section)``, its ValueError (whose message names the field) as a ConfigError."""
    try:
        return resolve(section)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _optimizer_section(values: Mapping[str, Any] | None, path: str) -> dict[str, Any]:
    """A client optimizer section ``{name, **hyperparameters}`` checked by building it; errors
    name ``<path>.<key>``. ``lr`` must be > 0 (0 would never move the model; a schedule may
    still reach 0, so the functional rules themselves accept it)."""
    from fedopt.optim import make as make_optimizer
    from fedopt.optim.registry import REGISTRY

    values = dict(values or {"name": "sgd", "lr": 0.01})
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: required, a string such as 'sgd' or 'adam'")
    key = name.lower()
    if key not in REGISTRY:
        raise ConfigError(f"{path}.name: unknown optimizer {name!r} "
                          f"(choose one of {', '.join(REGISTRY)})")
    accepted = [f.name for f in dataclasses.fields(REGISTRY[key])]
    for k in values:
        if k not in accepted:
            raise ConfigError(f"{path}.{k}: unknown key for optimizer {name!r} "
                              f"(accepted: {', '.join(['name', *accepted])})")
    if "lr" in values and _is_number(values["lr"]) and not values["lr"] > 0:
        raise ConfigError(f"{path}.lr: must be > 0, got {values['lr']!r} (0 never moves the model)")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        make_optimizer(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{_optimizer_error_path(str(e), path, values)}: {e}") from None
    return {"name": name, **values}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _optimizer_error_path(message: str, path: str, values: Mapping[str, Any]) -> str:
    """``<path>.<key>[i]`` for an optimizer error "invalid <key>[i]: ..." about a given key."""
    m = re.search(r"invalid (\w+)(\[\d+\])?", message)
    if m and m.group(1) in values:
        return f"{path}.{m.group(1)}{m.group(2) or ''}"
    return path


def _server_optimizer_section(spec: Any, user: Mapping[str, Any] | None, name: str
                              ) -> dict[str, Any]:
    """``algorithm.server_optimizer``: the algorithm's defaults under the user's keys, checked
    against what the algorithm's name fixes, and resolved to the keys its rule reads."""
    from fedopt.algorithms import ServerOptimizer
    from fedopt.algorithms.server_opt import DEFAULTS, RULE_KEYS

    path = "algorithm.server_optimizer"
    if user is not None and not isinstance(user, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(user).__name__}")
    so = validate_section({**spec.server_optimizer, **(user or {})}, SERVER_OPTIMIZER_FIELDS, path)
    try:
        spec.check_server_optimizer(name, so)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    given = {k: v for k, v in so.items() if v is not None}
    if isinstance(given.get("betas"), list):
        given["betas"] = tuple(given["betas"])
    try:
        ServerOptimizer(**given)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"algorithm.{e}") from None
    out = {"name": so["name"], "lr": so["lr"]}
    for key in RULE_KEYS[so["name"]]:
        out[key] = so[key] if so[key] is not None else DEFAULTS.get(key)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars and 0-d arrays, 0-d torch tensors -> the Python numbers they hold;
    numpy arrays and tuples -> lists (as YAML and config.json hold them); mappings and lists
    converted recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    module = type(value).__module__
    if module == "numpy":
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return _plain(value.tolist())
    elif module.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor) and value.ndim == 0:
            return value.item()
    return value


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config (defaults filled) or a :class:`ConfigError` naming the field.

    Runs every check that :class:`fedopt.simulation.Simulation` makes while building a run,
    without building the data: the data spec's checks (``check_dataset_spec``), the model's
    shape checks (on the meta device), the optimizers, the algorithm's ``build`` with unit
    client counts, the clock and the device."""
    from fedopt.algorithms import algorithm_specs
    from fedopt.data import DATASET_KEYS, resolve_dataset_spec
    from fedopt.data.registry import check_dataset_spec
    from fedopt.models import MODEL_KEYS, resolve_model_spec

    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    config = _plain(config)
    cfg = validate_section(config, TOP_FIELDS, "")
    cfg["data"] = _registry_section(cfg["data"], DATASET_KEYS, None, "data")
    cfg["model"] = _registry_section(cfg["model"], MODEL_KEYS, "logreg", "model")
    cfg["data"] = _as_config_error(resolve_dataset_spec, cfg["data"])     # nested keys, e.g.
    cfg["model"] = _as_config_error(resolve_model_spec, cfg["model"])     # data.partition.*
    facts = _as_config_error(check_dataset_spec, cfg["data"])

    alg = dict(cfg["algorithm"])
    name = alg.get("name", "fedavg")
    algorithms = algorithm_specs()
    if name not in algorithms:
        raise ConfigError(f"algorithm.name: unknown {name!r} (choose one of {', '.join(algorithms)})")
    spec = algorithms[name]
    alg = validate_section(alg, {**ALGORITHM_COMMON, **spec.fields}, "algorithm")
    alg["server_optimizer"] = _server_optimizer_section(spec, alg["server_optimizer"], name)
    cfg["algorithm"] = alg

    client = validate_section(cfg["client"], CLIENT_FIELDS, "client")
    if (client["local_steps"] is None) == (client["local_epochs"] is None):
        raise ConfigError("client.local_steps: give exactly one of client.local_steps and client.local_epochs")
    client["optimizer"] = _optimizer_section(client["optimizer"], "client.optimizer")
    cfg["client"] = client
    cfg["executor"] = validate_section(cfg["executor"], EXECUTOR_FIELDS, "executor")
    if cfg["executor"]["realtime"] and cfg["executor"]["name"] != "ray":
        raise ConfigError("executor.realtime: runs on Ray workers; set executor.name: ray")
    _check_device(cfg["executor"]["device"])
    if cfg["clock"] is not None:
        try:
            from fedopt.clock import validate_clock_config
        except ImportError:
            raise ConfigError("clock: virtual clocks are not available in this version") from None
        cfg["clock"] = validate_clock_config(cfg["clock"])

    n = facts.num_clients
    if n is not None and alg["clients_per_round"] > n:
        raise ConfigError(f"algorithm.clients_per_round: {alg['clients_per_round']} exceeds "
                          f"data.num_clients ({n})")
    if facts.feature_shape is not None:
        _check_model_shape(cfg["model"], facts.feature_shape, facts.num_classes or 2)
    _dry_build(spec, cfg, n)
    return cfg


def _check_device(device: str) -> None:
    """``executor.device`` parses, and CUDA is there when asked for (as a run checks)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"executor.device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"executor.device: {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"executor.device: {device!r} requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")


def _check_model_shape(model: dict[str, Any], feature_shape: tuple[int, ...],
                       num_classes: int) -> None:
    """Construct the configured model on the meta device (no memory, no initialisation), so
    shape errors (a CNN on flat features, images too small for its pooling) surface now."""
    import torch

    from fedopt.models.registry import MODEL_CLASSES

    cls = MODEL_CLASSES.get(model["name"])
    if cls is None:
        return
    kwargs = {k: v for k, v in model.items() if k != "name"}
    try:
        with torch.device("meta"):
            cls(feature_shape, num_classes, **kwargs)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("model") else f"model: {msg}") from None


def _dry_build(spec: Any, cfg: dict[str, Any], num_clients: int | None) -> None:
    """The algorithm's own ``build`` (cheap: no parameters yet) with ``num_clients`` unit client
    counts, so its checks (FedBuff's buffer_size against clients_per_round, the clock's
    per-client lists, ...) run now; and the real-time driver's, when asked for."""
    import numpy as np

    from fedopt.algorithms import ServerOptimizer

    if num_clients is None:
        return
    alg = cfg["algorithm"]
    so = {k: tuple(v) if isinstance(v, list) else v
          for k, v in alg["server_optimizer"].items() if v is not None}
    try:
        built = spec.build(alg, np.ones(num_clients, dtype=np.int64), cfg["seed"],
                           ServerOptimizer(**so), cfg)
    except ConfigError:
        raise
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if "." in msg.split(":")[0] else f"algorithm.{msg}") from None
    if cfg["executor"]["realtime"]:
        missing = [a for a in ("policy", "weights", "server_optimizer", "clock_config")
                   if not hasattr(built, a)]
        if missing:
            raise ConfigError(f"algorithm.name: real-time mode (executor.realtime) runs the "
                              f"asynchronous algorithms (fedavg_sync, fedfix, async_fedavg, "
                              f"fedasync, fedbuff, async_general), not {alg['name']!r}")


# ----------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``1E5``, ``.5e-2``, ``-2.5E+3`` are
    numbers (YAML 1.1, PyYAML's default, needs a dot and a signed exponent and reads ``1e-3``
    as a string)."""


_FLOAT_TAG = "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                   |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _check_duplicates(node: yaml.Node, path: str, where: str, seen: set[int]) -> None:
    """ConfigError naming ``path.key`` and both lines for a key repeated in one mapping."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None:
                if key in lines:
                    raise ConfigError(f"{join(path, key)}: duplicate key in {where} (lines "
                                      f"{lines[key]} and {line}); give each key once")
                lines[key] = line
            _check_duplicates(value_node, join(path, key) if key is not None else path,
                              where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", where, seen)


def load_yaml(text: str, where: str = "YAML", path: str = "") -> Any:
    """Parse one YAML document (YAML 1.2 floats, no repeated keys). ``where`` names the source
    in messages; ``path`` is the dotted field the document sits at (for ``--set`` values).
    Raises ConfigError (a repeated key, naming it) or ``yaml.YAMLError`` (bad syntax)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, path, where, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def set_dotted(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as a YAML scalar, with
    the loader of config files). Raises ConfigError for a malformed assignment or value."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key component")
    try:
        value = load_yaml(raw, f"--set {key}", key) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
    node = config
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is not a mapping, cannot set {key}")
        node = nxt
    node[parts[-1]] = value


def load_config(source: str | os.PathLike | Mapping[str, Any],
                overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML file (or take a mapping), apply overrides, validate, fill defaults.

    Raises ConfigError naming the field (or the file: missing, unreadable, invalid YAML)."""
    if isinstance(source, Mapping):
        raw = _plain(copy.deepcopy(dict(source)))
    else:
        name = os.fspath(source)
        try:
            with open(source) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"config file {name!r}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {name!r}: not UTF-8 text ({e.reason})") from None
        try:
            raw = load_yaml(text, f"config file {name!r}")
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {name!r}: invalid YAML: {e}") from None
        if raw is None:
            raise ConfigError(f"config file {name!r}: is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    for assignment in overrides:
        set_dotted(raw, assignment)
    return validate(raw)
