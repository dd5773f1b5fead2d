"""Server optimizers against hand-computed traces and the identities of federated.md §5."""
import math

import pytest
import torch

from fedopt.algorithms import ServerOptimizer


def _p(*v):
    return {"w": torch.tensor(v, dtype=torch.float64)}


D1, D2 = (0.5, -2.0), (1.0, 0.1)     # Δ_0, Δ_1 (new − old)


def _two_rounds(opt):
    x = _p(1.0, 2.0)
    s = opt.init(x)
    x, s = opt.step(x, _p(*D1), s)
    x1 = x["w"].clone()
    x, s = opt.step(x, _p(*D2), s)
    return x1, x["w"], s


def _hand(rule, eta=0.1, b1=0.9, b2=0.99, tau=1e-3, style="paper"):
    """Plain-Python two-round trace of the update equations, elementwise."""
    out = []
    for j in range(2):
        x, m = [1.0, 2.0][j], 0.0
        v = tau ** 2 if style == "paper" else 0.0
        xs = []
        for t, d in enumerate((D1[j], D2[j]), start=1):
            if rule == "adagrad":
                v = v + d * d
            elif rule == "adam":
                v = b2 * v + (1 - b2) * d * d
            else:
                v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v
            if rule == "adagrad" and style == "tff":
                m, lr = d, eta
            else:
                m = b1 * m + (1 - b1) * d
                lr = eta if style == "paper" else eta * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            x = x + lr * m / (math.sqrt(v) + tau)
            xs.append(x)
        out.append(xs)
    return torch.tensor([out[0][0], out[1][0]], dtype=torch.float64), \
        torch.tensor([out[0][1], out[1][1]], dtype=torch.float64)


@pytest.mark.parametrize("style", ["paper", "tff"])
@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_adaptive_server_optimizers_match_hand_trace(rule, style):
    b2 = 0.99 if style == "paper" else 0.999
    x1, x2, _ = _two_rounds(ServerOptimizer(name=rule, lr=0.1, tau=1e-3, style=style))
    h1, h2 = _hand(rule, eta=0.1, b2=b2, style=style)
    torch.testing.assert_close(x1, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2, h2, rtol=1e-12, atol=1e-12)


def test_fedavgm_with_zero_momentum_and_unit_lr_is_fedavg():
    opt = ServerOptimizer(name="sgd", lr=1.0, momentum=0.0)
    x1, x2, _ = _two_rounds(opt)
    assert torch.equal(x1, torch.tensor([1.5, 0.0], dtype=torch.float64))
    assert torch.equal(x2, torch.tensor([2.5, 0.1], dtype=torch.float64))


def test_fedavgm_heavy_ball():
    x1, x2, _ = _two_rounds(ServerOptimizer(name="sgd", lr=0.5, momentum=0.9))
    # m_0 = Δ_0, m_1 = 0.9 m_0 + Δ_1; x += η m
    m0 = torch.tensor(D1, dtype=torch.float64)
    m1 = 0.9 * m0 + torch.tensor(D2, dtype=torch.float64)
    torch.testing.assert_close(x1, torch.tensor([1.0, 2.0], dtype=torch.float64) + 0.5 * m0)
    torch.testing.assert_close(x2, x1 + 0.5 * m1)


def test_yogi_second_moment_sign_rule_and_adagrad_monotone():
    opt = ServerOptimizer(name="yogi", lr=0.1, tau=0.5, betas=(0.9, 0.99))
    x = _p(0.0, 0.0)
    s = opt.init(x)                      # v = τ² = 0.25
    d = _p(0.1, 2.0)                     # Δ² = 0.01 (< v) and 4 (> v)
    _, s2 = opt.step(x, d, s)
    dv = s2["v"]["w"] - s["v"]["w"]
    torch.testing.assert_close(dv, torch.tensor([-(0.01) * 0.01, +(0.01) * 4.0], dtype=torch.float64))
    ada = ServerOptimizer(name="adagrad", lr=0.1)
    s = ada.init(x)
    for k in range(5):
        _, s_next = ada.step(x, _p(0.3 * k, -1.0), s)
        assert torch.all(s_next["v"]["w"] >= s["v"]["w"])
        s = s_next


@pytest.mark.parametrize("name", ["sgd", "adam", "yogi", "adagrad"])
def test_positive_update_increases_the_model(name):
    opt = ServerOptimizer(name=name, lr=0.1)
    x = _p(0.0)
    x_new, _ = opt.step(x, _p(1.0), opt.init(x))
    assert x_new["w"].item() > 0


@pytest.mark.parametrize("kw, field", [({"lr": -1}, "lr"), ({"momentum": 1.0}, "momentum"),
                                       ({"tau": 0}, "tau"), ({"name": "rmsprop"}, "name"),
                                       ({"betas": (0.9, 1.0), "name": "adam"}, "betas"),
                                       ({"style": "keras"}, "style")])
def test_bad_server_hyperparameters_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ServerOptimizer(**kw)


# -- keys a rule does not read, and names that fix the rule -------------------------------------

@pytest.mark.parametrize("kw, field", [
    ({"name": "sgd", "betas": (0.9, 0.99)}, "betas"),
    ({"name": "sgd", "tau": 1e-3}, "tau"),
    ({"name": "sgd", "style": "paper"}, "style"),
    ({"name": "adam", "momentum": 0.9}, "momentum"),
    ({"name": "adam", "nesterov": False}, "nesterov"),
    ({"name": "yogi", "momentum": 0.0}, "momentum"),
    ({"name": "adagrad", "momentum": 0.5}, "momentum"),
    ({"name": "adagrad", "betas": (0.9, 0.99)}, "betas"),       # adagrad has no β2
    ({"name": "adagrad", "style": "tff", "betas": (0.9,)}, "betas"),  # nor β1 in tff style
    ({"name": "adam", "betas": (0.9,)}, "betas"),
    ({"name": "adam", "betas": ("a", 0.9)}, r"betas\[0\]"),
    ({"name": "adam", "betas": 0.9}, "betas"),
    ({"name": "sgd", "nesterov": True}, "nesterov"),
])
def test_keys_the_rule_does_not_read_or_cannot_use_are_refused(kw, field):
    with pytest.raises(ValueError, match=rf"^server_optimizer\.{field}"):
        ServerOptimizer(lr=0.1, **kw)


def test_paper_adagrad_uses_its_beta1():
    """β1 = 0.5 (not the default 0.9) reaches the update: the hand trace with b1 = 0.5."""
    x1, x2, _ = _two_rounds(ServerOptimizer(name="adagrad", lr=0.1, betas=(0.5,)))
    h1, h2 = _hand("adagrad", eta=0.1, b1=0.5)
    torch.testing.assert_close(x1, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2, h2, rtol=1e-12, atol=1e-12)


QUICK = {"data": {"name": "synthetic", "num_clients": 10},
         "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 2,
                       "server_optimizer": {"name": "sgd", "lr": 1.0}},
         "client": {"local_steps": 1}}


@pytest.mark.parametrize("name, rule", [("fedadam", "adam"), ("fedyogi", "yogi"),
                                        ("fedadagrad", "adagrad"), ("fedavgm", "sgd")])
def test_an_algorithm_name_that_fixes_the_rule_refuses_a_contradiction(name, rule):
    """The issue's case: ``--set algorithm.name=fedadam`` on a config with an sgd server
    optimizer used to run plain FedAvg; now one error names both fields."""
    from fedopt.config import ConfigError, load_config

    other = "adam" if rule == "sgd" else "sgd"
    with pytest.raises(ConfigError) as e:
        load_config(QUICK, [f"algorithm.name={name}", f"algorithm.server_optimizer.name={other}"])
    msg = str(e.value)
    assert msg.startswith("algorithm.server_optimizer.name:") and f"algorithm.name: {name}" in msg
    cfg = load_config(QUICK, [f"algorithm.name={name}", "algorithm.server_optimizer=null"])
    assert cfg["algorithm"]["server_optimizer"]["name"] == rule
    cfg = load_config(QUICK, [f"algorithm.name={name}", f"algorithm.server_optimizer.name={rule}"])
    assert cfg["algorithm"]["server_optimizer"]["name"] == rule


def test_fedavgm_needs_momentum():
    from fedopt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^algorithm\.server_optimizer\.momentum: 0\.0 "
                                          r"conflicts with algorithm\.name: fedavgm"):
        load_config(QUICK, ["algorithm.name=fedavgm", "algorithm.server_optimizer.momentum=0.0"])
    cfg = load_config(QUICK, ["algorithm.name=fedavgm", "algorithm.server_optimizer=null"])
    assert cfg["algorithm"]["server_optimizer"]["momentum"] == 0.9


@pytest.mark.parametrize("override, field", [
    ("algorithm.server_optimizer.betas=[0.9]", "betas"),          # was an IndexError
    ("algorithm.server_optimizer.betas=[0.9, 0.99, 0.5]", "betas"),
    ("algorithm.server_optimizer.betas=[0.9, x]", r"betas\[1\]"),
    ("algorithm.server_optimizer.momentum=0.9", "momentum"),
    ("algorithm.server_optimizer.nesterov=false", "nesterov"),
])
def test_server_optimizer_section_errors_are_one_config_error(override, field):
    from fedopt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"^algorithm\.server_optimizer\.{field}"):
        load_config(QUICK, ["algorithm.server_optimizer.name=adam", override])


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                                  "fedprox", "scaffold", "feddyn", "fedspeed", "fedbuff"])
def test_resolved_server_optimizer_holds_what_its_rule_reads_and_revalidates(name):
    """Each resolved section has exactly name, lr and the keys of RULE_KEYS[rule] (so a run's
    recorded config.json validates again to itself, as resume requires)."""
    from fedopt.algorithms.server_opt import RULE_KEYS
    from fedopt.config import load_config

    extra = ["algorithm.buffer_size=2"] if name == "fedbuff" else []
    cfg = load_config(QUICK, [f"algorithm.name={name}", "algorithm.server_optimizer=null", *extra])
    so = cfg["algorithm"]["server_optimizer"]
    assert set(so) == {"name", "lr", *RULE_KEYS[so["name"]]}
    assert load_config(cfg) == cfg


# -- the rules come from the fedopt.optim core; trajectories and checkpoints are unchanged -------

def _scalar_fedopt(rule, style, lr, tau, b1, b2, x0, deltas):
    """Independent plain-Python re-implementation of the pre-core server step (federated.md §5,
    Reddi et al. Algorithm 2 / the TFF Keras optimizers), coordinate by coordinate."""
    xs = []
    x = list(x0)
    m = [0.0] * len(x)
    v = [tau * tau if style == "paper" else 0.0] * len(x)
    for t, d in enumerate(deltas, start=1):
        for i, di in enumerate(d):
            if rule == "adagrad":
                v[i] += di * di
            elif rule == "adam":
                v[i] = b2 * v[i] + (1 - b2) * di * di
            else:
                s = (v[i] > di * di) - (v[i] < di * di)
                v[i] -= (1 - b2) * di * di * s
            if rule == "adagrad" and style == "tff":
                m[i], step = di, lr
            else:
                m[i] = b1 * m[i] + (1 - b1) * di
                step = lr if style == "paper" else lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            x[i] += step * m[i] / (math.sqrt(v[i]) + tau)
        xs.append(list(x))
    return xs, m, v


@pytest.mark.parametrize("style", ["paper", "tff"])
@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_thirty_rounds_match_the_scalar_reimplementation(rule, style):
    """A 30-round FedAdam/FedYogi/FedAdagrad run on random Δ_t (float64) follows the scalar
    trajectory of the pre-core implementation, and the state keeps its {t, m, v} layout."""
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(5, generator=gen, dtype=torch.float64)
    deltas = [torch.randn(5, generator=gen, dtype=torch.float64) * 0.3 for _ in range(30)]
    betas = (0.8,) if rule == "adagrad" else (0.8, 0.95)
    if rule == "adagrad" and style == "tff":
        betas = None
    opt = ServerOptimizer(name=rule, lr=0.05, tau=1e-2, style=style, betas=betas)
    b1, b2 = opt.resolved_betas
    want, m, v = _scalar_fedopt(rule, style, 0.05, 1e-2, b1, b2, x0.tolist(),
                                [d.tolist() for d in deltas])
    x, s = {"w": x0}, opt.init({"w": x0})
    for t, d in enumerate(deltas):
        x, s = opt.step(x, {"w": d}, s)
        torch.testing.assert_close(x["w"], torch.tensor(want[t], dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
    assert s["t"] == 30 and set(s) == {"t", "m", "v"}
    torch.testing.assert_close(s["m"]["w"], torch.tensor(m, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s["v"]["w"], torch.tensor(v, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(name="adam", style="tff"), dict(name="yogi"),
                                dict(name="adagrad", style="tff"), dict(name="sgd", momentum=0.9)])
def test_server_state_round_trips_through_a_checkpoint(kw):
    """Stop after 3 rounds, write the state as a checkpoint, read it back, 3 more rounds ==
    6 uninterrupted rounds, bitwise (float32)."""
    from fedopt.checkpoint import decode_checkpoint, encode_checkpoint

    opt = ServerOptimizer(lr=0.1, **kw)
    gen = torch.Generator().manual_seed(3)
    x0 = {"a": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
    deltas = [{k: torch.randn(v.shape, generator=gen) for k, v in x0.items()} for _ in range(6)]
    x, s = x0, opt.init(x0)
    for d in deltas:
        x, s = opt.step(x, d, s)
    y, r = x0, opt.init(x0)
    for d in deltas[:3]:
        y, r = opt.step(y, d, r)
    back = decode_checkpoint(encode_checkpoint({"params": y, "opt_state": r}))
    y, r = back["params"], back["opt_state"]
    for d in deltas[3:]:
        y, r = opt.step(y, d, r)
    for k in x:
        assert torch.equal(x[k], y[k])


@pytest.mark.parametrize("name, rule", [("sgd", "SGD"), ("adam", "AdamTau"), ("yogi", "Yogi"),
                                        ("adagrad", "Adagrad")])
def test_each_server_optimizer_is_a_fedopt_optim_rule(name, rule):
    """The rule is the core's, with τ as its ε and the style's v_0 / bias correction."""
    import fedopt.optim as O

    opt = ServerOptimizer(name=name, lr=0.1, **({} if name == "sgd" else {"tau": 0.01}))
    r = opt.rule()
    assert type(r).__name__ == rule and r.lr == 0.1
    assert isinstance(r, type(O.make(rule.lower())))
    if name != "sgd":
        assert r.eps == 0.01 and r.initial_accumulator_value == pytest.approx(1e-4)
    if name in ("adam", "yogi"):
        assert r.bias_correction is False
        assert ServerOptimizer(name=name, style="tff").rule().bias_correction is True
