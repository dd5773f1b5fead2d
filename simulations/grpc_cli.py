"""``fedopt serve`` and ``fedopt client``: a gRPC coordinator and its client processes.

    fedopt serve CONFIG --out DIR
    fedopt client --server HOST:PORT --token TOKEN [--ca CERT] (--config CONFIG --clients 0,1,...
                  | --data FILE.npz)

``serve`` runs the config (its ``executor: {name: grpc, ...}``) as ``fedopt run`` does, recording
into DIR; when DIR already holds the run it resumes from its newest checkpoint (a restarted
coordinator), and unless the config sets ``checkpoint_every`` it checkpoints every round.
Registered into the main parser by :func:`register`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import numpy as np


#: where ``fedopt client`` reads its token when ``--token`` is not given
TOKEN_ENV = "FEDOPT_TOKEN"


def quiet_grpc() -> None:
    """gRPC's C core logs at ERROR only, unless the user set ``GRPC_VERBOSITY`` (it is read
    when grpc is first imported: call before that)."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def parse_ids(text: str) -> np.ndarray:
    """``"0,1,5-7"`` -> int64 [0, 1, 5, 6, 7]; ValueError naming ``--clients``."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--clients: expected ids such as 0,1,5-7, got {text!r}") from None
    if not ids:
        raise ValueError("--clients: no ids given")
    return np.asarray(ids, dtype=np.int64)


def _has_key(path: str, key: str) -> bool:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return True      # load_config reports the problem
    return isinstance(raw, dict) and key in raw


def cmd_serve(args: argparse.Namespace) -> int:
    quiet_grpc()
    from fedopt.records import holds_run
    from fedopt.server.grpc_config import check_files
    from fedopt.server.grpc_service import CoordinatorError
    from fedopt.simulations import cli

    overrides = ([] if _has_key(args.config, "checkpoint_every") else ["checkpoint_every=1"])
    config = cli.load_config(args.config, overrides + list(args.set))
    if config["executor"]["name"] != "grpc":
        raise cli.CLIError(f"executor.name: 'fedopt serve' runs a gRPC coordinator, the config "
                           f"says {config['executor']['name']!r} (use 'fedopt run', or set "
                           f"executor: {{name: grpc, address: HOST:PORT, tokens: FILE}})")
    try:
        check_files(config["executor"])     # before the data set is built
    except ValueError as e:
        raise cli.CLIError(str(e)) from None
    out_dir = args.out
    resume = holds_run(out_dir)
    if resume:
        print(f"{out_dir} holds this run: resuming from its latest checkpoint", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("server.grpc").setLevel(logging.INFO)  # listening on, who registered
    try:
        result = cli.run_experiment(config, out_dir=out_dir, progress=not args.no_progress,
                                    resume=resume)
    except CoordinatorError as e:
        raise cli.CLIError(str(e)) from None
    except KeyboardInterrupt:
        print(f"\ninterrupted (the client processes were told to exit); continue with: "
              f"{cli.invoked_as()} serve {args.config} --out {out_dir}", file=sys.stderr)
        return cli.EXIT_INTERRUPTED
    row = cli.final_row(result.metrics or [], result.summary)
    print()
    cli._print_table([row])
    print(f"\nrun directory: {out_dir}")
    return cli.EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    quiet_grpc()
    from fedopt.client.grpc_client import ClientExit, GrpcClient, Options
    from fedopt.simulations import cli

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if not token:
        raise cli.CLIError(f"--token: required (or set the environment variable {TOKEN_ENV}, "
                           f"which other local users cannot read in the process list)")
    if (args.cert is None) != (args.key is None):
        raise cli.CLIError("--cert and --key: give both (this client's certificate and private "
                           "key, for mutual TLS) or neither")
    if (args.config is None) == (args.data is None):
        raise cli.CLIError("give either --config CONFIG --clients IDS or --data FILE.npz")
    if args.config is not None and args.clients is None:
        raise cli.CLIError("--clients: required with --config (the ids this process holds)")
    try:
        clients = None if args.clients is None else parse_ids(args.clients)
    except ValueError as e:
        raise cli.CLIError(str(e)) from None
    config = cli.load_config(args.config) if args.config is not None else None
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = Options(server=args.server, token=token, ca=args.ca, cert=args.cert,
                   key=args.key, config=config, clients=clients, data=args.data,
                   device=args.device, max_wait_s=args.max_wait)
    try:
        return GrpcClient(opts).serve()
    except ClientExit as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return cli.EXIT_INTERRUPTED


def register(sub: Any, formatter: type = argparse.HelpFormatter) -> None:
    """Add ``serve`` and ``client`` to the ``fedopt`` subcommands ``sub``."""
    from fedopt.simulations import cli

    p = sub.add_parser(
        "serve", formatter_class=formatter, help="run a gRPC coordinator for a config",
        description="Run the config's experiment with client processes connecting over gRPC "
                    "(executor: {name: grpc, address, min_clients, tokens, tls}); records into "
                    "--out like 'fedopt run' and resumes when --out already holds the run.",
        epilog="example:\n  fedopt serve deploy.yaml --out runs/deploy")
    p.add_argument("config", metavar="CONFIG.yaml", help="experiment config (YAML)")
    p.add_argument("--out", metavar="DIR", required=True, help="run directory")
    cli.add_set_option(p)
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "client", formatter_class=formatter, help="run a gRPC client process",
        description="Connect to a coordinator ('fedopt serve') and train the clients this "
                    "process holds: those of --config's data set given by --clients, or the "
                    "clients of --data FILE.npz (as global ids --clients, default 0..K-1).",
        epilog="examples:\n"
               "  fedopt client --server coord:50051 --token $TOKEN --ca ca.pem "
               "--config deploy.yaml --clients 0-49\n"
               "  fedopt client --server coord:50051 --token $TOKEN --ca ca.pem --data site3.npz "
               "--clients 3")
    p.add_argument("--server", metavar="HOST:PORT", required=True,
                   help="the coordinator's address (its executor.address, with a host name "
                        "its TLS certificate names)")
    p.add_argument("--token", metavar="TOKEN", default=None,
                   help=f"this process's token (a line of the coordinator's tokens file); "
                        f"default: the environment variable {TOKEN_ENV} (a command line is "
                        f"visible to other local users)")
    p.add_argument("--ca", metavar="CERT", default=None,
                   help="CA certificate (PEM) to verify the coordinator: TLS on")
    p.add_argument("--cert", metavar="CERT", default=None, help="client certificate (mutual TLS)")
    p.add_argument("--key", metavar="KEY", default=None, help="client private key (mutual TLS)")
    p.add_argument("--config", metavar="CONFIG.yaml", default=None,
                   help="the run's config: the clients' data are built from its data section "
                        "and seed, as on the coordinator")
    p.add_argument("--clients", metavar="IDS", default=None, help="e.g. 0,1,5-7")
    p.add_argument("--data", metavar="FILE.npz", default=None,
                   help="this site's own clients (npz data set) instead of --config")
    p.add_argument("--device", default="cpu", help="torch device to train on (default: cpu)")
    p.add_argument("--max-wait", metavar="S", type=float, default=600.0,
                   help="give up after the coordinator is unreachable this long (seconds)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.set_defaults(func=cmd_client)
