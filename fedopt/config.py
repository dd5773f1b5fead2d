"""Run configuration: load (YAML or dict), apply ``--set`` overrides, validate, fill defaults.

Everything is checked before anything runs. The sections are declarative schemas (pydantic, see
:mod:`fedopt.schema`), each beside what it configures: the data sets' beside their builders
(:mod:`fedopt.data`), the models' in :mod:`fedopt.models.registry`, each algorithm's in its
module (``ALGORITHM_SPECS``), the clock's in :mod:`fedopt.clock.config`, each executor's with it
(:mod:`fedopt.executors`: ``local`` in the core, others such as Ray through entry points). This
module assembles them (it imports them; none imports it) and adds the checks that span sections.

An unknown key, a wrong type or an impossible value raises one :class:`ConfigError` whose
message starts with the dotted field name, e.g. ``algorithm.clients_per_round: 200 exceeds
data.num_clients (100)``. :func:`validate` runs every check that building a run does (data spec,
model shapes, client/server optimizers, the algorithm's own build, clock, device) without
building the data, so ``fedopt validate`` refuses exactly what ``fedopt run`` would.

Values as users write them: YAML is read with YAML 1.2 floats (``1e-3``, ``1E5``, ``.5e-2`` are
numbers, not strings) and a repeated key is an error naming it and its lines (config files and
``--set`` values alike); numpy scalars, 0-d arrays and 0-d torch tensors given through the
Python API are taken as the Python numbers they hold.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from functools import lru_cache
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import yaml
from pydantic import Field, create_model, model_validator

from fedopt.algorithms import ServerOptimizer, algorithm_specs
from fedopt.algorithms.server_opt import DEFAULTS, RULE_KEYS
from fedopt.client_eval import PerClientEvalConfig, check_config as check_per_client_eval
from fedopt.clock.config import ClockConfig
from fedopt.data.registry import DataSpec, check_dataset_spec
from fedopt.engine.program import LOSSES, METRICS, check_task_fit
from fedopt.executors import LocalExecutorConfig, executor_entries, executor_schemas
from fedopt.models.char_rnn import check_token_vocab
from fedopt.models.registry import MODEL_SCHEMAS, ModelSpec
from fedopt.privacy.config import PrivacyConfig, resolve_privacy, with_privacy
from fedopt.algorithms.decentralized import DECENTRALIZED
from fedopt.decentralized.topology import TopologySpec
from fedopt.algorithms.fedzo import with_estimator
from fedopt.zo.estimators import EstimatorConfig
from fedopt.local.config import CLIENT_FIELDS as LOCAL_FIELDS, check_local_training
from fedopt.schema import (SEED_MAX, Bool, Check, ConfigError, Float, NonNegativeInt,  # noqa: F401
                           PositiveInt, Schema, Seed, Str, check_clients_per_round, fail, join,
                           named_union, parse, plain)

_plain = plain   # numpy/torch scalars -> Python numbers (kept under its old name)


class ClientConfig(Schema):
    """``client:``: local training of every sampled client."""

    what = "client"
    local_steps: Optional[PositiveInt] = Field(None, description="local steps per round")
    local_epochs: Optional[PositiveInt] = Field(
        None, description="local epochs: u_i = E·⌈n_i/B⌉ steps (finished clients are masked)")
    batch_size: PositiveInt = 10
    optimizer: Optional[dict[str, Any]] = Field(
        None, description="{name: <any fedopt.optim optimizer>, <its keywords>} (sgd, lr 0.01)")
    lr_decay: Annotated[Float, Check(lambda v: 0 < v <= 1, "in (0, 1]")] = Field(
        1.0, description="client lr multiplied by lr_decay**round")
    loss: Optional[Literal[tuple(LOSSES)]] = Field(
        None, description="per-sample loss (null: the task's, cross_entropy for class labels, "
                          "mse for float targets; fedopt.run(loss=...) takes a callable)")
    metrics: Optional[list[Literal[tuple(METRICS)]]] = Field(
        None, description="evaluation metrics, each a test_<name> column (null: the task's, "
                          "[accuracy] for class labels, [] for float targets)")
    estimator: Optional[EstimatorConfig] = Field(
        None, description="zeroth-order clients' gradient estimator {name, directions, mu, "
                          "scheme} (fedopt.zo; read by the zeroth-order algorithms, e.g. fedzo)")
    # adaptive local training (fedopt.local): batch_size_test, lr_batch_scaling, sso, curriculum
    batch_size_test: LOCAL_FIELDS["batch_size_test"][0] = LOCAL_FIELDS["batch_size_test"][1]
    lr_batch_scaling: LOCAL_FIELDS["lr_batch_scaling"][0] = LOCAL_FIELDS["lr_batch_scaling"][1]
    sso: LOCAL_FIELDS["sso"][0] = LOCAL_FIELDS["sso"][1]
    curriculum: LOCAL_FIELDS["curriculum"][0] = LOCAL_FIELDS["curriculum"][1]
    client_curriculum: LOCAL_FIELDS["client_curriculum"][0] = LOCAL_FIELDS["client_curriculum"][1]

    @model_validator(mode="after")
    def _one_mode(self) -> "ClientConfig":
        if (self.local_steps is None) == (self.local_epochs is None):
            raise fail("local_steps", "give exactly one of client.local_steps and "
                                      "client.local_epochs")
        return self


@lru_cache(maxsize=None)
def run_schema() -> type[Schema]:
    """The whole run config: every registered algorithm and executor (assembled on first use)."""
    algorithms = [spec.schema for spec in algorithm_specs().values()]
    executors = executor_schemas()
    model = create_model(
        "RunConfig", __base__=Schema, __doc__="A run: data, model, algorithm, clients, executor.",
        seed=(Seed, 0),
        name=(Optional[Str], None),
        data=(DataSpec, ...),
        model=(ModelSpec, Field(default_factory=MODEL_SCHEMAS[0])),
        algorithm=(named_union(algorithms, default="fedavg"), ...),
        client=(Optional[ClientConfig], Field(
            None, description="the clients' local training (required except by the "
                              "decentralized algorithms, which read only its loss/metrics)")),
        executor=(named_union(executors, default="local"),
                  Field(default_factory=LocalExecutorConfig)),
        eval_every=(PositiveInt, 1),
        eval_train=(Bool, True),
        eval_clients=(Optional[PositiveInt], Field(
            None, description="estimate the test (and train) metrics on this many clients drawn "
                              "per evaluation, with 95 % confidence intervals (*_ci columns); "
                              "null: every client (fedopt.sampled_eval)")),
        per_client_eval=(Optional[PerClientEvalConfig], Field(
            None, description="per-client metrics of the global model: mean, std, worst/best "
                              "10 % of clients (fedopt.client_eval)")),
        tensorboard=(Bool, Field(False, description="TensorBoard event files of every metric "
                                                    "in <out>/tensorboard")),
        csv=(Bool, Field(False, description="metrics.csv beside metrics.jsonl")),
        checkpoint_every=(NonNegativeInt, 10),
        on_nonfinite=(Literal["error", "drop"], Field(
            "error", description="a client whose update is NaN/inf: 'error' stops the run "
                                 "naming it; 'drop' leaves it out of the aggregate and counts it")),
        clock=(Optional[ClockConfig], Field(
            None, description="virtual-clock models of client compute/communication time")),
        topology=(Optional[TopologySpec], Field(
            None, description="communication graph of the decentralized algorithms "
                              "(fedopt.decentralized.topology)")),
        privacy=(Optional[PrivacyConfig], Field(
            None, description="differential privacy: dp_fedavg or diff2 (fedopt.privacy)")),
    )
    model.what = ""
    return model


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
    """``algorithm.server_optimizer``: the algorithm's defaults under the keys the user gave
    (checked by the schema), checked against what the algorithm's name fixes and by the rule
    itself, and resolved to the keys its rule reads."""
    given = {k: v for k, v in (user or {}).items() if v is not None}
    so = {"name": "sgd", "lr": 1.0, **spec.server_optimizer, **given}
    spec.check_server_optimizer(name, so)
    try:
        ServerOptimizer(**{k: tuple(v) if isinstance(v, list) else v for k, v in so.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"algorithm.{e}") from None
    out = {"name": so["name"], "lr": so["lr"]}
    for key in RULE_KEYS[so["name"]]:
        out[key] = so.get(key, DEFAULTS.get(key))
    return out


def _check_executor_name(config: Mapping[str, Any]) -> None:
    """An executor name no installed package registers: the usual ConfigError, plus how
    executors become known (an entry point is written when its package is installed, so a
    checkout updated without reinstalling does not know a newly registered one)."""
    ex = config.get("executor")
    name = ex.get("name") if isinstance(ex, Mapping) else None
    known = executor_entries()
    if isinstance(name, str) and name not in known:
        raise ConfigError(f"executor.name: unknown {name!r} (choose one of {', '.join(known)}); "
                          f"executors register under the 'fedopt.executors' entry points of "
                          f"installed packages: after installing or updating one, reinstall it "
                          f"(e.g. pip install -e . in a fedopt checkout)")


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config (defaults filled; a plain dict) or a :class:`ConfigError` naming the
    field.

    Runs every check that :class:`fedopt.simulation.Simulation` makes while building a run,
    without building the data set's tensors: the schemas, the data spec's checks
    (``check_dataset_spec``: an npz file's contents by the builder's validators, Synthetic's
    memory bound), the model's shape and size checks (on the meta device), the optimizers, the
    algorithm's ``build`` with unit client counts, the clock (a ``clock.timeout`` or round
    deadline no job can meet, with the model's size as the jobs' payload) and the device."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(config).__name__}")
    _check_executor_name(config)
    cfg = parse(run_schema(), config).model_dump()
    check_per_client_eval(cfg)   # per_client_eval.every fits eval_every
    spec = algorithm_specs()[cfg["algorithm"]["name"]]
    alg = cfg["algorithm"]
    if spec.resolve is not None:   # defaults that depend on what the user wrote
        spec.resolve(alg, config)
    alg["server_optimizer"] = _server_optimizer_section(spec, alg["server_optimizer"], alg["name"])
    if cfg["client"] is None:   # only the decentralized algorithms run without local training
        if alg["name"] not in DECENTRALIZED:
            raise ConfigError(f"client: required by algorithm.name: {alg['name']} (the clients' "
                              f"local training: local_steps or local_epochs, optimizer, ...); "
                              f"only the decentralized algorithms ({', '.join(DECENTRALIZED)}) "
                              f"run without it")
        cfg["client"] = ClientConfig(local_steps=1).model_dump()   # a placeholder, not read
    cfg["client"]["optimizer"] = _optimizer_section(cfg["client"]["optimizer"], "client.optimizer")

    if alg["name"] not in DECENTRALIZED:
        for key, given in (("topology", cfg["topology"] is not None),
                           ("model.l2", bool(cfg["model"].get("l2"))),
                           ("executor.on_node_failure",
                            cfg["executor"].get("on_node_failure") is not None)):
            if given:
                raise ConfigError(f"{key}: read only by the decentralized algorithms "
                                  f"({', '.join(DECENTRALIZED)}), not algorithm.name: "
                                  f"{alg['name']}")
    facts = check_dataset_spec(cfg["data"], cfg["seed"])
    if facts.token_vocab is not None:   # token-index features: the embedding covers them
        check_token_vocab(cfg["model"], facts.num_classes, facts.token_vocab)
    if facts.regression is not None:   # the loss and metrics fit the targets (as a run checks)
        for key in ("loss", "metrics"):
            check_task_fit(key, cfg["client"][key], f"client.{key}", facts.regression,
                           cfg["data"]["name"] == "regression")
    _check_device(cfg["executor"]["device"])
    check_clients_per_round(alg["clients_per_round"], facts.num_clients)
    payload = None
    if facts.feature_shape is not None:
        payload = _check_model_shape(cfg["model"], facts.feature_shape, facts.num_classes or 2,
                                     cfg["executor"])
    resolve_privacy(cfg, facts.num_clients)   # privacy: noise calibrated, budget checked
    built = _dry_build(spec, cfg, facts.num_clients)
    with_estimator(alg["name"], built, cfg)    # client.estimator: zeroth-order clients or refused
    check_local_training(built, cfg)   # client.batch_size_test / sso / curriculum fit the clients
    built = with_privacy(built, cfg)
    if built is not None and payload is not None:
        _check_job_times(built, cfg, payload)
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
                       num_classes: int, executor: dict[str, Any]) -> int | None:
    """Construct the configured model on the meta device (no memory, no initialisation), so
    shape errors (a CNN on flat features, images too small for its pooling) surface now, and
    size it as a run does (:func:`~fedopt.models.registry.check_model_size`: at most a fraction
    of the free memory of ``executor.device`` in ``executor.dtype``). Returns the bytes of its
    parameters (a job's default payload on the clock)."""
    from fedopt.dtypes import DTYPES
    from fedopt.models.registry import MODEL_CLASSES, check_model_size

    cls = MODEL_CLASSES.get(model["name"])
    if cls is None:
        return None
    kwargs = {k: v for k, v in model.items() if k != "name"}
    dtype = DTYPES[executor["dtype"]]
    try:
        n = check_model_size(lambda: cls(feature_shape, num_classes, **kwargs), model["name"],
                             feature_shape, num_classes, dtype, executor["device"])
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("model") else f"model: {msg}") from None
    return n * dtype.itemsize


def _check_job_times(built: Any, cfg: dict[str, Any], payload_bytes: int) -> None:
    """An asynchronous algorithm's clock (with the model's size as the jobs' payload, as a
    run sets it): refuse a ``clock.timeout``, or with cancelled stragglers an
    ``algorithm.deadline``/``algorithm.interval``, that no job can meet
    (:meth:`~fedopt.clock.VirtualClock.check_reachable`). Not in real time without
    ``executor.seconds_per_unit``: there jobs take their real time, not the clock's."""
    from fedopt.clock import VirtualClock

    policy, clock_config = getattr(built, "policy", None), getattr(built, "clock_config", None)
    if policy is None or clock_config is None:
        return
    ex = cfg["executor"]
    if ex.get("realtime") and ex.get("seconds_per_unit") is None:
        return
    clock = VirtualClock(clock_config, built.num_clients, built.seed, float(payload_bytes))
    clock.check_reachable(deadline=policy.deadline, cancel_stragglers=policy.cancel_stragglers,
                          interval=policy.interval)


def _dry_build(spec: Any, cfg: dict[str, Any], num_clients: int | None) -> Any:
    """The algorithm's own ``build`` (cheap: no parameters yet) with ``num_clients`` unit client
    counts, so its checks (FedBuff's buffer_size against clients_per_round, the clock's
    per-client lists, ...) run now; and the real-time driver's, when asked for. Returns the
    built algorithm (None without a number of clients)."""
    import numpy as np

    if num_clients is None:
        return None
    alg = cfg["algorithm"]
    so = {k: tuple(v) if isinstance(v, list) else v
          for k, v in alg["server_optimizer"].items() if v is not None}
    try:
        built = spec.build(alg, np.ones(num_clients, dtype=np.int64), cfg["seed"],
                           ServerOptimizer(**so), cfg)
    except ConfigError:
        raise
    except ValueError as e:   # an algorithm's constructor names its own key (relative)
        msg = str(e)
        field = msg.split(":")[0].strip()
        top = field.split(".")[0].split("[")[0]
        if "." in field and top in cfg:                  # already a dotted config field
            raise ConfigError(msg) from None
        if top in alg:                                    # one of the algorithm's own keys
            raise ConfigError(f"algorithm.{msg}") from None
        raise                                             # not a config field: a real bug
    ex = cfg["executor"]
    if ex.get("realtime") and executor_entries()[ex["name"]].realtime is not None:
        missing = [a for a in ("policy", "weights", "server_optimizer", "clock_config")
                   if not hasattr(built, a)]
        if missing:
            raise ConfigError(f"algorithm.name: real-time mode (executor.realtime) runs the "
                              f"asynchronous algorithms (fedavg_sync, fedfix, async_fedavg, "
                              f"fedasync, fedbuff, async_general), not {alg['name']!r}")
    return built


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
        raw = plain(copy.deepcopy(dict(source)))
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
