"""The ``client:`` keys of adaptive local training and the :class:`LocalTraining` they build.

    client:
      batch_size: 8                       # b₀, the first batch size
      batch_size_test: {name: norm, eta: 0.1, max_batch_size: 512, test_rows: 256}  # AdAdaGrad
      lr_batch_scaling: sqrt              # none | linear | sqrt (needs batch_size_test), or
                                          # {rule: sqrt, max_lr: 0.5}: lr = min(max_lr, lr·scale)
      sso: {inner_steps: 10, eta: 1.0}    # target-based surrogates around the client optimizer
      curriculum: {order: curriculum, score: global, pacing: linear, a: 0.8, b: 0.2}

:func:`with_local_training` checks them against the algorithm's local program and returns the
program carrying them (:class:`~fedopt.engine.program.LocalProgram`'s ``training`` field), so
they travel with it to every executor. ConfigError naming the field for a bad combination.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import Discriminator, Field, Tag

from fedopt.local.batch_test import TEST_ROWS, TESTS, BatchSizeTest
from fedopt.local.client_order import ClientCurriculumConfig, check_client_curriculum
from fedopt.local.curriculum import ORDERS, PACINGS, SCORES
from fedopt.local.lr_scaling import RULES
from fedopt.schema import (Bool, ConfigError, PositiveFloat, PositiveInt, Probability, Schema)


class BatchSizeTestConfig(Schema):
    """``client.batch_size_test``: AdAdaGrad's adaptive batch size (fedopt.local.batch_test)."""

    what = "client.batch_size_test"
    name: Literal[TESTS] = Field("norm", description="norm (Byrd et al.) or inner_product (the "
                                                     "augmented inner-product test)")
    eta: PositiveFloat = Field(0.1, description="η of the norm test (θ of the inner-product "
                                                "test)")
    nu: Optional[PositiveFloat] = Field(None, description="ν of the orthogonality test "
                                                          "(inner_product; null: eta)")
    max_batch_size: Optional[PositiveInt] = Field(
        None, description="b_max (null: each client's rows; always capped there)")
    blockwise: Bool = Field(False, description="the authors' per-tensor statistics instead of "
                                               "the whole-vector ones")
    test_rows: Optional[PositiveInt] = Field(
        TEST_ROWS, description="the most rows of a client's batch the test computes per-example "
                               "gradients on (memory: clients × test_rows × parameters numbers); "
                               "a larger batch is tested on a uniform subsample keyed by seed, "
                               "round, client and local step; >= 2; null: every row")


class LrBatchScalingConfig(Schema):
    """``client.lr_batch_scaling`` in its long form: the rule and a cap on the scaled lr
    (fedopt.local.lr_scaling; the short form ``lr_batch_scaling: sqrt`` is ``{rule: sqrt}``)."""

    what = "client.lr_batch_scaling"
    rule: Literal[RULES] = Field("sqrt", description="linear: lr × b/b₀; sqrt: lr × (b/b₀)^½; "
                                                     "none: lr")
    max_lr: Optional[PositiveFloat] = Field(
        None, description="max_lr: the scaled lr is min(max_lr, lr × scale(b)) (Granziol et al. "
                          "§2's cap; null: uncapped); at least client.optimizer.lr")


def _short_or_long(v: Any) -> str:
    return "@long" if isinstance(v, (Mapping, LrBatchScalingConfig)) else "@short"


#: ``client.lr_batch_scaling``: a rule name (the short form) or {rule, max_lr}
LR_BATCH_SCALING = Annotated[Union[Annotated[Literal[RULES], Tag("@short")],
                                   Annotated[LrBatchScalingConfig, Tag("@long")]],
                             Discriminator(_short_or_long)]


class SSOConfig(Schema):
    """``client.sso``: each local step is an outer step of SSO (fedopt.local.sso)."""

    what = "client.sso"
    inner_steps: PositiveInt = Field(1, description="m, client-optimizer steps on the surrogate "
                                                    "per outer step (1: plain training)")
    eta: PositiveFloat = Field(1.0, description="η, the surrogate's step in target space "
                                                "(≤ 1/L_z: 2 for cross-entropy)")


class CurriculumConfig(Schema):
    """``client.curriculum``: per-client data ordering with pacing (fedopt.local.curriculum)."""

    what = "client.curriculum"
    order: Literal[ORDERS] = Field("curriculum", description="curriculum (easy first), anti "
                                                             "or random")
    score: Literal[SCORES] = Field(
        "global", description="the per-example loss that orders the rows: global = of the "
                              "received model, scored once at the job's start (the paper's 'G'); "
                              "local = of the client's live iterate within this job, re-scored "
                              "at the start of every pass after the first (the first pass uses "
                              "the received model). local is NOT the paper's 'L' (the client's "
                              "model from its previous visit): fedopt keeps no per-client model "
                              "across rounds; 'L', 'LG' and 'E' are not implemented")
    pacing: Literal[PACINGS] = Field("linear", description="pacing function g")
    a: PositiveFloat = Field(0.8, description="fraction of the local steps until all data "
                                              "(of the samples, with client.batch_size_test)")
    b: Probability = Field(0.2, description="fraction of the data at the start")
    min_prefix: PositiveInt = Field(32, description="smallest prefix of a pass")


#: the new ``client:`` fields: name -> (type, pydantic Field) for fedopt.config.ClientConfig
CLIENT_FIELDS: dict[str, Any] = {
    "batch_size_test": (Optional[BatchSizeTestConfig], Field(
        None, description="adaptive batch size {name: norm|inner_product, eta, max_batch_size} "
                          "(AdAdaGrad; null: fixed client.batch_size); b restarts from "
                          "client.batch_size every round")),
    "lr_batch_scaling": (LR_BATCH_SCALING, Field(
        "none", description="client lr × (b/b₀) (linear) or (b/b₀)^½ (sqrt) as the batch grows "
                            "(none: unscaled); or {rule: linear|sqrt, max_lr} to cap the scaled "
                            "lr at max_lr")),
    "sso": (Optional[SSOConfig], Field(
        None, description="target-based surrogates {inner_steps: m, eta} around the client "
                          "optimizer (null: off)")),
    "curriculum": (Optional[CurriculumConfig], Field(
        None, description="data curriculum {order, score, pacing, a, b} (null: uniform "
                          "epochs)")),
    "client_curriculum": (Optional[ClientCurriculumConfig], Field(
        None, description="server samples clients from a paced pool ranked by the global "
                          "model's loss {order, pacing, a, b} (null: uniform sampling)")),
}


@dataclass(frozen=True)
class Curriculum:
    """Resolved ``client.curriculum`` (see :mod:`fedopt.local.curriculum`)."""

    order: str = "curriculum"
    score: str = "global"
    pacing: str = "linear"
    a: float = 0.8
    b: float = 0.2
    min_prefix: int = 32


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains locally beyond plain minibatch steps: an adaptive batch size
    (``batch_test``), the learning rate's batch scaling rule (``lr_scaling``) and its cap
    (``lr_max``, None: uncapped), SSO outer steps
    (``sso_steps`` m ≥ 1 with ``sso_eta``; None: off) and a ``curriculum``."""

    batch_test: BatchSizeTest | None = None
    lr_scaling: str = "none"
    lr_max: float | None = None
    sso_steps: int | None = None
    sso_eta: float = 1.0
    curriculum: Curriculum | None = None

    @property
    def online_batches(self) -> bool:
        """Whether batches are chosen step by step (adaptive size or curriculum)."""
        return self.batch_test is not None or self.curriculum is not None


def lr_rule(client: dict[str, Any]) -> tuple[str, float | None]:
    """(rule, max_lr) of ``client.lr_batch_scaling`` in either form. ConfigError naming the
    field for a cap without a rule or below the client optimizer's lr (lr(b₀) must be lr₀)."""
    value = client.get("lr_batch_scaling") or "none"
    if isinstance(value, str):
        return value, None
    rule, cap = value.get("rule", "sqrt"), value.get("max_lr")
    if cap is not None and rule == "none":
        raise ConfigError("client.lr_batch_scaling.max_lr: caps the scaled lr; with rule: none "
                          "nothing is scaled (set a rule or drop max_lr)")
    lr0 = (client.get("optimizer") or {}).get("lr")
    if cap is not None and isinstance(lr0, (int, float)) and cap < lr0:
        raise ConfigError(f"client.lr_batch_scaling.max_lr: {cap} is below client.optimizer.lr "
                          f"({lr0}); the cap must leave lr(b₀) = lr")
    return rule, cap


def from_client(client: dict[str, Any]) -> LocalTraining | None:
    """The :class:`LocalTraining` of a validated ``client:`` section (None when all are off)."""
    test, sso, cur = (client.get("batch_size_test"), client.get("sso"),
                      client.get("curriculum"))
    rule, lr_max = lr_rule(client)
    if rule != "none" and test is None:
        raise ConfigError("client.lr_batch_scaling: scales the lr as the batch size adapts; "
                          "set client.batch_size_test too (or lr_batch_scaling: none)")
    if test is not None:
        if client.get("batch_size", 2) < 2:
            raise ConfigError("client.batch_size_test: the tests need a sample variance; start "
                              "from client.batch_size >= 2")
        if test.get("test_rows") is not None and test["test_rows"] < 2:
            raise ConfigError("client.batch_size_test.test_rows: the tests need a sample "
                              f"variance; must be >= 2, got {test['test_rows']}")
        cap = test.get("max_batch_size")
        if cap is not None and cap < client.get("batch_size", 1):
            raise ConfigError(f"client.batch_size_test.max_batch_size: {cap} is below "
                              f"client.batch_size ({client.get('batch_size')})")
    if test is None and sso is None and cur is None:
        return None
    return LocalTraining(
        batch_test=None if test is None else BatchSizeTest(**test),
        lr_scaling=rule,
        lr_max=lr_max,
        sso_steps=None if sso is None else int(sso["inner_steps"]),
        sso_eta=1.0 if sso is None else float(sso["eta"]),
        curriculum=None if cur is None else Curriculum(**cur))


def check_algorithm(name: str | None, client: dict[str, Any]) -> None:
    """ConfigError naming the key when ``client.batch_size_test``, ``sso`` or ``curriculum``
    is set for an algorithm ``name`` without local training: a decentralized one (its nodes
    take their own gradient steps, so the key would be silently ignored) or gradient_coding
    (its clients return full gradients or one uniform minibatch gradient, which an SSO step or
    a curriculum's prefix would silently turn into something else)."""
    from fedopt.algorithms.decentralized import DECENTRALIZED

    if name in DECENTRALIZED:
        why = f"the nodes of the decentralized algorithm {name} take their own gradient steps"
    elif name == "gradient_coding":
        why = "gradient_coding's clients return gradients, not local training"
    else:
        return
    for key in ("batch_size_test", "sso", "curriculum"):
        if client.get(key) is not None:
            raise ConfigError(f"client.{key}: read by the clients' local training of the "
                              f"server algorithms; {why} (set it to null)")


def with_local_training(program, client: dict[str, Any], optimizer=None):
    """``program`` carrying the client's :class:`LocalTraining` (unchanged when all are off).
    ConfigError naming the field when the algorithm's program cannot take it: the adaptive
    pieces need the autograd oracle (not SAM or a zeroth-order estimator); SSO and the batch
    test need a client optimizer without Hessian estimates."""
    from fedopt.engine.program import Autograd

    training = from_client(client)
    if training is None:
        return program
    first = ("client.batch_size_test" if training.batch_test is not None else
             "client.sso" if training.sso_steps is not None else "client.curriculum")
    if not isinstance(program.oracle, Autograd):
        raise ConfigError(f"{first}: needs clients that take plain gradient steps; this "
                          f"algorithm's clients use the {type(program.oracle).__name__} oracle")
    if optimizer is not None and getattr(optimizer, "needs_hessian", False):
        raise ConfigError(f"{first}: not available with a Hessian-based client optimizer "
                          f"({type(optimizer).__name__})")
    return dataclasses.replace(program, training=training)


def check_local_training(built: Any, cfg: dict[str, Any]) -> None:
    """What a run checks of these keys, for ``fedopt validate``: :func:`from_client`, and
    :func:`with_local_training` against the built algorithm's program (after
    ``client.estimator``'s zeroth-order clients, as a run builds it)."""
    training = from_client(cfg["client"])
    check_algorithm(cfg["algorithm"]["name"], cfg["client"])
    if cfg["client"].get("client_curriculum") is not None:
        check_client_curriculum(built, cfg)
    if training is None or built is None or not hasattr(built, "local_program"):
        return
    from fedopt.algorithms.fedzo import with_estimator
    from fedopt.optim import from_config

    alg = with_estimator(cfg["algorithm"]["name"], built, cfg)
    with_local_training(alg.local_program(), cfg["client"],
                        from_config(cfg["client"]["optimizer"] or {"name": "sgd", "lr": 0.01}))
