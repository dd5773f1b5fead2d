"""``fedopt serve`` / ``fedopt client`` argument handling (no network)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedopt.simulations.cli import main
from fedopt.simulations.grpc_cli import parse_ids

QUICKSTART = str(Path(__file__).resolve().parents[2] / "simulations/configs/quickstart.yaml")


def test_parse_ids():
    assert parse_ids("0,1,5-7").tolist() == [0, 1, 5, 6, 7]
    assert parse_ids(" 3 ").dtype == np.int64
    for bad in ("", "a", "1-x"):
        with pytest.raises(ValueError, match="--clients"):
            parse_ids(bad)


def test_serve_refuses_a_config_for_another_executor(tmp_path, capsys):
    code = main(["serve", QUICKSTART, "--out", str(tmp_path / "r")])
    assert code == 2
    assert "executor.name: 'fedopt serve' runs a gRPC coordinator" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,words", [
    ([], "give either --config CONFIG --clients IDS or --data FILE.npz"),
    (["--config", "c.yaml", "--data", "d.npz"], "give either"),
    (["--config", QUICKSTART], "--clients: required with --config"),
    (["--config", QUICKSTART, "--clients", "x"], "--clients: expected"),
    # gRPC's C core aborted the process (Check failed: private_key != nullptr)
    (["--config", QUICKSTART, "--clients", "0", "--cert", "c.pem"], "--cert and --key"),
    (["--config", QUICKSTART, "--clients", "0", "--key", "k.pem"], "--cert and --key"),
])
def test_client_argument_errors(args, words, capsys):
    code = main(["client", "--server", "127.0.0.1:1", "--token", "t" * 32] + args)
    assert code == 2
    assert words in capsys.readouterr().err


def test_client_reads_its_token_from_the_environment(monkeypatch, capsys):
    """A token on the command line is readable by every local user (ps, /proc/PID/cmdline):
    ``fedopt client`` also takes it from FEDOPT_TOKEN, and without either names both."""
    import fedopt.client.grpc_client as gc

    seen = []

    class Fake:
        def __init__(self, opts):
            seen.append(opts)

        def serve(self):
            return 0

    monkeypatch.setattr(gc, "GrpcClient", Fake)
    monkeypatch.delenv("FEDOPT_TOKEN", raising=False)
    args = ["client", "--server", "127.0.0.1:1", "--config", QUICKSTART, "--clients", "0-1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--token: required" in err and "FEDOPT_TOKEN" in err and not seen
    monkeypatch.setenv("FEDOPT_TOKEN", "e" * 32)
    assert main(args) == 0 and seen[-1].token == "e" * 32
    assert main(args + ["--token", "f" * 32]) == 0 and seen[-1].token == "f" * 32


def test_half_a_client_certificate_pair_is_a_value_error():
    """grpc.ssl_channel_credentials with a chain and no key aborts the process in gRPC's C
    core when the channel connects; client_credentials refuses it first."""
    from fedopt.protocols.grpc_wire import client_credentials

    with pytest.raises(ValueError, match="--cert and --key"):
        client_credentials(None, cert=QUICKSTART, key=None)
    with pytest.raises(ValueError, match="--cert and --key"):
        client_credentials(None, cert=None, key=QUICKSTART)


def test_validate_and_serve_check_the_coordinators_files(tmp_path, capsys):
    """`fedopt validate` called a gRPC config valid when its tokens file or TLS files were
    missing (only the coordinator's start read them), breaking "validate runs every check
    run does". The coordinator-only check runs in validate and serve, naming the field; a
    client process loading the same config (a host without those files) does not run it."""
    import yaml

    from fedopt.simulations import cli
    from tests.server.grpc_fixtures import grpc_config, make_certificates, write_tokens

    cfg = grpc_config(tmp_path / "missing_tokens.txt", 50051)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for cmd in (["validate", str(path)], ["serve", str(path), "--out", str(tmp_path / "r")]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "executor.tokens: cannot read" in err and "missing_tokens.txt" in err, cmd
    assert not (tmp_path / "r").exists()
    assert cli.load_config(str(path))["executor"]["tokens"].endswith("missing_tokens.txt")

    write_tokens(tmp_path / "tokens.txt", 1)                 # min_clients is 2
    cfg["executor"]["tokens"] = str(tmp_path / "tokens.txt")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 2
    assert "executor.min_clients: 2 client processes" in capsys.readouterr().err

    write_tokens(tmp_path / "tokens.txt", 2)
    pem = make_certificates(tmp_path)
    for missing in ("cert", "key", "ca"):
        tls = {"cert": pem["server_cert"], "key": pem["server_key"], "ca": pem["ca_cert"]}
        tls[missing] = str(tmp_path / "absent.pem")
        cfg["executor"]["tls"] = tls
        path.write_text(yaml.safe_dump(cfg))
        assert main(["validate", str(path)]) == 2
        assert f"executor.tls.{missing}: cannot read" in capsys.readouterr().err
    cfg["executor"]["tls"] = {"cert": pem["server_cert"], "key": pem["server_key"]}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 0


def test_serve_and_client_quiet_grpcs_core_unless_the_user_set_it(monkeypatch, capsys):
    """gRPC's C core printed its own INFO/debug lines (fork support, keepalive, ...) into the
    coordinator's and clients' output; both commands now set GRPC_VERBOSITY=ERROR unless the
    user chose a level."""
    import os

    import fedopt.client.grpc_client as gc

    class Fake:
        def __init__(self, opts):
            pass

        def serve(self):
            return 0

    monkeypatch.setattr(gc, "GrpcClient", Fake)
    args = ["client", "--server", "127.0.0.1:1", "--token", "t" * 32, "--config", QUICKSTART,
            "--clients", "0"]
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    assert main(args) == 0 and os.environ["GRPC_VERBOSITY"] == "ERROR"
    monkeypatch.delenv("GRPC_VERBOSITY")
    main(["serve", QUICKSTART, "--out", "unused"])           # refused (local executor), after
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    assert main(args) == 0 and os.environ["GRPC_VERBOSITY"] == "DEBUG"
    capsys.readouterr()
