"""Run configuration: load (YAML or dict), apply ``--set`` overrides, validate, fill defaults.

Everything is checked before anything runs. An unknown key, a wrong type or an impossible
value raises one :class:`ConfigError` whose message starts with the dotted field name, e.g.
``algorithm.clients_per_round: 200 exceeds data.num_clients (100)``.
"""
from __future__ import annotations

import copy
import os
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

SERVER_OPTIMIZER_FIELDS = {
    "name": Field(STR, "sgd", one_of("sgd", "adam", "yogi", "adagrad")),
    "lr": Field(FLOAT, 1.0, positive, "server learning rate η"),
    "momentum": Field(FLOAT, 0.0, lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v!r}"),
    "nesterov": Field(BOOL, False),
    "betas": Field((list, tuple, type(None)), None),
    "tau": Field(FLOAT, 1e-3, positive, "adaptivity τ"),
    "style": Field(STR, "paper", one_of("paper", "tff")),
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
    "seed": Field(INT, 0, non_negative),
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


def validate_section(values: Mapping[str, Any] | None, fields: Mapping[str, Field],
                     path: str) -> dict[str, Any]:
    """Check keys/types/values of one mapping and fill defaults; errors name ``path.key``."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(values).__name__}")
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (valid keys: {', '.join(fields)})")
    out: dict[str, Any] = {}
    for key, f in fields.items():
        where = f"{path}.{key}" if path else key
        if key not in values:
            if f.default is REQUIRED:
                raise ConfigError(f"{where}: required")
            out[key] = copy.deepcopy(f.default)
            continue
        v = values[key]
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
    from fedopt.optim import make as make_optimizer

    values = dict(values or {"name": "sgd", "lr": 0.01})
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: required, a string such as 'sgd' or 'adam'")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        make_optimizer(name, **kwargs)
    except TypeError as e:  # unexpected keyword
        raise ConfigError(f"{path}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return {"name": name, **values}


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config (defaults filled) or a :class:`ConfigError` naming the field."""
    from fedopt.algorithms import ServerOptimizer, algorithm_specs
    from fedopt.data import DATASET_KEYS, resolve_dataset_spec
    from fedopt.models import MODEL_KEYS, resolve_model_spec

    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    cfg = validate_section(config, TOP_FIELDS, "")
    cfg["data"] = _registry_section(cfg["data"], DATASET_KEYS, None, "data")
    cfg["model"] = _registry_section(cfg["model"], MODEL_KEYS, "logreg", "model")
    cfg["data"] = _as_config_error(resolve_dataset_spec, cfg["data"])     # nested keys, e.g.
    cfg["model"] = _as_config_error(resolve_model_spec, cfg["model"])     # data.partition.*

    alg = dict(cfg["algorithm"])
    name = alg.get("name", "fedavg")
    algorithms = algorithm_specs()
    if name not in algorithms:
        raise ConfigError(f"algorithm.name: unknown {name!r} (choose one of {', '.join(algorithms)})")
    spec = algorithms[name]
    alg = validate_section(alg, {**ALGORITHM_COMMON, **spec.fields}, "algorithm")
    alg["server_optimizer"] = validate_section(
        {**spec.server_optimizer, **(alg["server_optimizer"] or {})},
        SERVER_OPTIMIZER_FIELDS, "algorithm.server_optimizer")
    so = dict(alg["server_optimizer"])
    so["betas"] = None if so["betas"] is None else tuple(so["betas"])
    try:
        ServerOptimizer(**so)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"algorithm.{e}") from None
    cfg["algorithm"] = alg

    client = validate_section(cfg["client"], CLIENT_FIELDS, "client")
    if (client["local_steps"] is None) == (client["local_epochs"] is None):
        raise ConfigError("client.local_steps: give exactly one of client.local_steps and client.local_epochs")
    client["optimizer"] = _optimizer_section(client["optimizer"], "client.optimizer")
    cfg["client"] = client
    cfg["executor"] = validate_section(cfg["executor"], EXECUTOR_FIELDS, "executor")
    if cfg["executor"]["realtime"] and cfg["executor"]["name"] != "ray":
        raise ConfigError("executor.realtime: runs on Ray workers; set executor.name: ray")
    try:
        import torch

        torch.device(cfg["executor"]["device"])
    except RuntimeError as e:
        raise ConfigError(f"executor.device: {e}") from None
    if cfg["clock"] is not None:
        try:
            from fedopt.clock import validate_clock_config
        except ImportError:
            raise ConfigError("clock: virtual clocks are not available in this version") from None
        cfg["clock"] = validate_clock_config(cfg["clock"])

    n = cfg["data"].get("num_clients")
    if isinstance(n, int) and alg["clients_per_round"] > n:
        raise ConfigError(f"algorithm.clients_per_round: {alg['clients_per_round']} exceeds "
                          f"data.num_clients ({n})")
    return cfg


def set_dotted(config: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as a YAML scalar)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
    """Read a YAML file (or take a mapping), apply overrides, validate, fill defaults."""
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        try:
            with open(source) as f:
                raw = yaml.safe_load(f)
        except OSError as e:
            raise ConfigError(f"config file {os.fspath(source)!r}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {os.fspath(source)!r}: invalid YAML: {e}") from None
        if raw is None:
            raise ConfigError(f"config file {os.fspath(source)!r}: is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    for assignment in overrides:
        set_dotted(raw, assignment)
    return validate(raw)
