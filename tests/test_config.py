"""Config validation: the issue's config works as written; every bad field is named."""
import pytest

from fedopt.config import ConfigError, load_config, set_dotted

QUICKSTART = """
seed: 0
data: {name: synthetic, alpha: 1.0, beta: 1.0, num_clients: 100}
model: {name: logreg}
algorithm: {name: fedavg, rounds: 50, clients_per_round: 10,
            server_optimizer: {name: sgd, lr: 1.0}}
client: {local_steps: 20, batch_size: 10, optimizer: {name: sgd, lr: 0.01}}
executor: {name: local, device: cpu}
eval_every: 1
"""


@pytest.fixture
def quickstart(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text(QUICKSTART)
    return p


def test_quickstart_config_validates_and_fills_defaults(quickstart):
    cfg = load_config(quickstart)
    assert cfg["algorithm"]["rounds"] == 50
    assert cfg["algorithm"]["aggregation_weights"] == "num_samples"
    assert cfg["algorithm"]["server_optimizer"]["momentum"] == 0.0
    assert cfg["client"]["optimizer"] == {"name": "sgd", "lr": 0.01}
    assert cfg["executor"]["dtype"] == "float32"
    assert cfg["data"]["num_clients"] == 100 and "beta" in cfg["data"]


def test_overrides_apply_yaml_scalars(quickstart):
    cfg = load_config(quickstart, ["algorithm.rounds=5", "client.optimizer.lr=0.1",
                                   "algorithm.server_optimizer.name=adam", "executor.chunk_size=32"])
    assert cfg["algorithm"]["rounds"] == 5
    assert cfg["client"]["optimizer"]["lr"] == 0.1
    assert cfg["algorithm"]["server_optimizer"]["name"] == "adam"
    assert cfg["executor"]["chunk_size"] == 32


def test_algorithm_aliases_pick_their_server_optimizer(quickstart):
    cfg = load_config(quickstart, ["algorithm.name=fedadam", "algorithm.server_optimizer=null"])
    assert cfg["algorithm"]["server_optimizer"]["name"] == "adam"
    cfg = load_config(quickstart, ["algorithm.name=fedprox", "algorithm.mu=0.1"])
    assert cfg["algorithm"]["mu"] == 0.1


@pytest.mark.parametrize("override, field", [
    ("algorithm.clients_per_round=200", "algorithm.clients_per_round: 200 exceeds data.num_clients (100)"),
    ("algorithm.rounds=0", "algorithm.rounds: must be > 0"),
    ("algorithm.rounds=ten", "algorithm.rounds: expected integer"),
    ("algorithm.rounds=true", "algorithm.rounds: expected integer"),
    ("algorithm.bogus=1", "algorithm.bogus: unknown key"),
    ("algorithm.name=fedmagic", "algorithm.name: unknown 'fedmagic'"),
    ("algorithm.mu=0.1", "algorithm.mu: unknown key"),            # mu belongs to fedprox
    ("algorithm.server_optimizer.lr=-1", "algorithm.server_optimizer.lr: must be > 0"),
    ("algorithm.server_optimizer.betas=[0.9, 1.5]", "algorithm.server_optimizer.betas"),
    ("client.local_epochs=2", "client.local_steps: give exactly one"),
    ("client.batch_size=0", "client.batch_size: must be > 0"),
    ("client.optimizer.lr=-0.1", "client.optimizer"),
    ("client.optimizer.name=adamq", "client.optimizer"),
    ("client.optimizer.momentom=0.9", "client.optimizer"),
    ("data.name=mnist", "data.name: unknown 'mnist'"),
    ("data.alhpa=1", "data.alhpa: unknown key"),
    ("model.name=resnet", "model.name: unknown 'resnet'"),
    ("executor.name=spark", "executor.name: unknown 'spark' (choose one of local, grpc, ray"),
    ("executor.num_workers=3", "executor.num_workers: unknown key for executor 'local'"),
    ("executor.realtime=true", "executor.realtime: unknown key for executor 'local'"),
    ("eval_every=0", "eval_every: must be > 0"),
    ("seed=-1", "seed: must be an integer in [0, 2**64 - 1]"),
    ("data.partition={name: bogus}", "data.partition"),
    ("executor.device=gpu", "executor.device"),
    ("algorithm.server_optimizer.lr=.inf", "algorithm.server_optimizer.lr: must be finite"),
    ("algorithm.server_optimizer.nesterov=true", "algorithm.server_optimizer.nesterov"),
    ("client.optimizer.lr=.inf", "client.optimizer"),
    ("colour=blue", "colour: unknown key"),
])
def test_bad_values_raise_one_error_naming_the_field(quickstart, override, field):
    with pytest.raises(ConfigError) as e:
        load_config(quickstart, [override])
    assert field in str(e.value)


def test_missing_sections_and_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="algorithm: required"):
        load_config({"data": {"name": "synthetic"}, "client": {"local_steps": 1}})
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_set_dotted_rejects_malformed_assignments():
    cfg = {"a": 1}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        set_dotted(cfg, "a")
    with pytest.raises(ConfigError, match="a: is not a mapping"):
        set_dotted(cfg, "a.b=2")
    set_dotted(cfg, "c.d.e=[1, 2]")
    assert cfg["c"] == {"d": {"e": [1, 2]}}


def test_server_optimizer_keywords_it_does_not_use_are_errors(quickstart):
    with pytest.raises(ConfigError, match="algorithm.server_optimizer.momentum"):
        load_config(quickstart, ["algorithm.server_optimizer.name=adam",
                                 "algorithm.server_optimizer.momentum=0.9"])


@pytest.mark.parametrize("override, field", [("data.alpha=-1", "data.alpha"),
                                             ("data.num_clients=0", "data.num_clients")])
def test_values_the_builders_check_are_refused_by_validation(quickstart, override, field):
    """The builders' checks run at validation (no data built): one ConfigError."""
    with pytest.raises(ConfigError, match=f"^{field}"):
        load_config(quickstart, [override, "algorithm.clients_per_round=1"])


def test_an_executor_no_package_registers_says_how_executors_become_known(monkeypatch):
    import fedopt.config as config_mod

    monkeypatch.setattr(config_mod, "executor_entries", lambda: {"local": None})  # an old install
    with pytest.raises(ConfigError, match=r"^executor\.name: unknown 'ray' \(choose one of local\)"
                                          r".*reinstall"):
        config_mod.validate({"data": {"name": "synthetic"}, "executor": {"name": "ray"},
                             "algorithm": {"name": "fedavg", "rounds": 1, "clients_per_round": 1},
                             "client": {"local_steps": 1}})
