"""End to end with real processes on loopback: ``fedopt serve`` and ``fedopt client``
subprocesses, TLS with certificates generated here, tokens.

* The coordinator is killed (SIGKILL) mid-run and started again on the same run directory: it
  resumes from its last checkpoint, the client processes reconnect by themselves, and the run's
  metrics equal an uninterrupted in-process run's (float64; float summation order aside,
  rel 1e-9) — in particular ``client_updates``: no update was counted twice.
* A client process is killed mid-run: its jobs time out and are dropped (renormalised), the
  run completes and records the faults.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fedopt
from tests.server.grpc_fixtures import free_port, grpc_config, make_certificates, write_tokens
from tests.server.ray_fixtures import assert_metrics_close

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CLI = [sys.executable, "-m", "fedopt.simulations.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _spawn(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _rounds_done(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line)
    except OSError:
        return 0


def _setup(tmp_path: Path, rounds: int, **executor):
    pem = make_certificates(tmp_path)
    tokens = write_tokens(tmp_path / "tokens.txt", 2)
    port = free_port()
    cfg = grpc_config(tmp_path / "tokens.txt", port, **executor)
    cfg["executor"]["tls"] = {"cert": pem["server_cert"], "key": pem["server_key"]}
    cfg["algorithm"]["rounds"] = rounds
    cfg["eval_every"] = 1
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    clients = [_spawn(["client", "--server", f"localhost:{port}", "--token", tok,
                       "--ca", pem["ca_cert"], "--config", str(path), "--clients", ids,
                       "--max-wait", "120"], tmp_path / f"client{i}.log")
               for i, (tok, ids) in enumerate(zip(tokens, ["0-11", "12-23"]))]
    return cfg, path, clients


def _finish(procs, timeout=120) -> list[int]:
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    return codes


def test_coordinator_killed_and_restarted_resumes_and_matches_in_process(tmp_path):
    cfg, path, clients = _setup(tmp_path, rounds=12)
    out = tmp_path / "run"
    serve = _spawn(["serve", str(path), "--out", str(out), "--no-progress"], tmp_path / "s1.log")
    try:
        _wait_for(lambda: _rounds_done(out) >= 4 or serve.poll() is not None, 180, "round 4")
        assert serve.poll() is None, (tmp_path / "s1.log").read_text()
        serve.send_signal(signal.SIGKILL)
        serve.wait(30)
        killed_at = _rounds_done(out)
        assert killed_at < 12, "the run finished before the coordinator was killed"
        serve = _spawn(["serve", str(path), "--out", str(out), "--no-progress"],
                       tmp_path / "s2.log")
        codes = _finish([serve] + clients, timeout=180)
    finally:
        for p in [serve] + clients:
            if p.poll() is None:
                p.kill()
    logs = {f.name: f.read_text() for f in tmp_path.glob("*.log")}
    assert codes == [0, 0, 0], logs
    assert "resuming" in logs["s2.log"]
    assert any("registered as slot" in logs[c] and logs[c].count("registered as slot") >= 2
               for c in ("client0.log", "client1.log")), logs   # they came back by themselves
    got = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    local = {**cfg, "executor": {"name": "local", "dtype": "float64", "chunk_size": 3}}
    ref = fedopt.run(local, progress=False).metrics
    assert_metrics_close(ref, got, rtol=1e-9)
    assert got[-1]["client_updates"] == ref[-1]["client_updates"] == 12 * 8


def test_a_client_killed_mid_run_is_dropped_and_the_run_completes(tmp_path):
    cfg, path, clients = _setup(tmp_path, rounds=10, round_timeout_s=2.0, max_retries=0)
    out = tmp_path / "run"
    serve = _spawn(["serve", str(path), "--out", str(out), "--no-progress"], tmp_path / "s.log")
    try:
        _wait_for(lambda: _rounds_done(out) >= 2 or serve.poll() is not None, 180, "round 2")
        clients[1].send_signal(signal.SIGKILL)
        codes = _finish([serve, clients[0]], timeout=180)
    finally:
        for p in [serve] + clients:
            if p.poll() is None:
                p.kill()
    logs = {f.name: f.read_text() for f in tmp_path.glob("*.log")}
    assert codes == [0, 0], logs
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 11))
    assert rows[-1]["faults_timeouts"] >= 1 and rows[-1]["faults_dropped_clients"] >= 1
    assert rows[-1]["client_updates"] < 10 * 8       # the dead process's updates are missing
