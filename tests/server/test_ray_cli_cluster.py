"""Ray's own conventions against a real two-node cluster on loopback, started the way users do
(``ray start --head`` and ``ray start --address``, Ray's CLI, token authentication on):

* a run without the token fails fast with one ``error:`` line naming ``executor.address`` and
  what to set (``ray.init`` alone would retry ~20 s and say "cannot connect");
* ``executor.address: HOST:PORT`` with the token, and ``RAY_ADDRESS`` with ``executor.address``
  unset, run on both nodes with results equal to the in-process run; ``executor.ship_code``
  makes the job's workers import fedopt from the folder Ray shipped (``py_modules``);
* ``ray job submit`` (the ``ray[default]`` extra's job server) runs ``fedopt run`` as a job that
  joins the cluster through the ``RAY_ADDRESS`` Ray gives it.

Every fedopt run is a subprocess with its own environment (token variables, ``RAY_ADDRESS``),
so this test process never joins the cluster. The cluster gets its own ``HOME`` (token file),
``--temp-dir`` and ports, and is stopped by terminating the two ``ray start --block``
processes this module started (never ``ray stop``, which would stop every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fedopt
from tests.server.ray_fixtures import (assert_metrics_close, make_config,  # noqa: F401
                                       no_ray_in_process)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"port {port} not open after {timeout_s} s:\n{log.read_text()[-3000:]}")


class Cluster:
    """Two `ray start --block` processes (head + one worker node) and the environment a client
    needs to join them."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.token_file = root / "token"
        self.token_file.write_text(os.urandom(32).hex())
        self.port, self.dash, self.client = _free_port(), _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        # Ray's unix sockets live under --temp-dir: a short path (AF_UNIX paths <= 107 bytes)
        self.temp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))

    def env(self, token: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_") and k != "PYTHONPATH"}
        env.update(HOME=str(self.home), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        env.update(extra)
        return env

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--num-cpus=1",
                                 "--disable-usage-stats", *args], env=self.env(),
                                stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.root)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        head = self._start(["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                            f"--dashboard-port={self.dash}", "--dashboard-host=127.0.0.1",
                            f"--ray-client-server-port={self.client}",
                            f"--temp-dir={self.temp}"], "head")
        _wait_port(self.port, 120, head, self.root / "head.log")
        self._start([f"--address={self.address}", "--node-ip-address=127.0.0.1"], "node")
        probe = ("import ray, time\nray.init(log_to_driver=False)\nend = time.time() + 120\n"
                 "while len([n for n in ray.nodes() if n['Alive']]) < 2 and time.time() < end:\n"
                 "    time.sleep(0.5)\nprint(len([n for n in ray.nodes() if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", probe], env=self.env(RAY_ADDRESS=self.address),
                             capture_output=True, text=True, timeout=240)
        assert out.stdout.strip().endswith("2"), (out.stdout, out.stderr[-3000:])
        _wait_port(self.dash, 120, head, self.root / "head.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):        # the processes (sessions) this module started
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, no_ray_in_process):
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("Ray's CLI is not installed (pip install 'fedopt[ray]')")
    c = Cluster(tmp_path_factory.mktemp("raycluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _config(tmp: Path, name: str, **executor) -> Path:
    cfg = make_config("ray", num_workers=2, num_cpus_per_worker=1.0, **executor)
    cfg["checkpoint_every"] = 0
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(cfg))       # JSON is YAML
    return path


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_metrics():
    cfg = make_config("local")
    cfg["checkpoint_every"] = 0
    return fedopt.run(cfg, progress=False).metrics


def _fedopt(args, env, cwd, timeout=300):
    return subprocess.run([str(BIN / "fedopt"), *map(str, args), "--no-progress"], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_without_the_token_one_error_line_naming_executor_address(cluster, tmp_path):
    cfg = _config(tmp_path, "no-token", address=cluster.address)
    res = _fedopt(["run", cfg, "--out", tmp_path / "run"], cluster.env(token=False), tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert err[0].startswith("error: executor.address: ")
    assert "requires token authentication" in err[0] and "RAY_AUTH_MODE=token" in err[0]
    # the connection step alone (the run above also imports torch and builds its data):
    # ray.init without a token retries ~20 s and ends with "Failed to connect"
    timed = ("import time\nfrom fedopt.server.ray_connect import connect_ray\n"
             "t = time.perf_counter()\ntry:\n    connect_ray(%r)\nexcept ConnectionError as e:\n"
             "    print(type(e).__name__, time.perf_counter() - t)\n" % cluster.address)
    out = subprocess.run([sys.executable, "-c", timed], env=cluster.env(token=False),
                         capture_output=True, text=True, timeout=120)
    name, took = out.stdout.split()
    assert name == "RayConnectError" and float(took) < 5.0, (out.stdout, out.stderr[-2000:])
    # through the Ray client server (ray://) the same: its first call is refused
    client = ("from fedopt.server.ray_connect import check_auth\ntry:\n"
              "    check_auth('ray://127.0.0.1:%d')\nexcept ConnectionError as e:\n"
              "    print(e)\n" % cluster.client)
    out = subprocess.run([sys.executable, "-c", client], env=cluster.env(token=False),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("executor.address: the Ray cluster at 'ray://127.0.0.1:")
    assert "requires token authentication" in out.stdout, (out.stdout, out.stderr[-2000:])
    # a wrong token: refused, named
    wrong = cluster.root / "wrong-token"
    wrong.write_text("0" * 64)
    res = _fedopt(["run", cfg, "--out", tmp_path / "run2"],
                  cluster.env(RAY_AUTH_TOKEN_PATH=str(wrong)), tmp_path)
    assert res.returncode == 2 and "refused this process's token" in res.stderr, res.stderr[-3000:]
    assert str(wrong) in res.stderr


_DRIVER = """
import json, sys, ray
from fedopt.config import load_config
from fedopt.simulation import Simulation
sim = Simulation(load_config(sys.argv[1]))
try:
    nodes = sorted({w["node_id"] for w in sim.executor.workers})
    metrics = sim.run()
    where = ray.get(ray.remote(lambda: __import__("fedopt.server", fromlist=["_"]).__file__)
                    .options(num_cpus=0).remote())
    print(json.dumps({"nodes": nodes, "metrics": metrics, "fedopt_on_worker": where,
                      "faults": sim.executor.faults()}))
finally:
    sim.close()
"""


@pytest.mark.parametrize("how", ["host:port", "RAY_ADDRESS"])
def test_token_runs_on_both_nodes_equal_in_process(cluster, tmp_path, local_metrics, how):
    if how == "host:port":
        cfg, env = _config(tmp_path, "hp", address=cluster.address, ship_code=True), cluster.env()
    else:
        cfg, env = _config(tmp_path, "env"), cluster.env(RAY_ADDRESS=cluster.address)
    res = subprocess.run([sys.executable, "-c", _DRIVER, str(cfg)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["nodes"]) == 2                     # one worker on each node
    assert_metrics_close(local_metrics, out["metrics"])
    assert out["faults"]["worker_deaths"] == 0
    shipped = "runtime_resources" in out["fedopt_on_worker"]   # Ray's unpacked py_modules
    assert shipped == (how == "host:port"), out["fedopt_on_worker"]
    if shipped:
        assert not out["fedopt_on_worker"].startswith(str(REPO))


def test_ray_job_submit_runs_fedopt_as_a_job(cluster, tmp_path, local_metrics):
    cfg = _config(tmp_path, "job")          # executor.address unset: the job's RAY_ADDRESS
    out = tmp_path / "job-run"
    res = subprocess.run(
        [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{cluster.dash}",
         "--", str(BIN / "fedopt"), "run", str(cfg), "--out", str(out), "--no-progress"],
        env=cluster.env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "succeeded" in res.stdout.lower(), res.stdout[-3000:]
    assert_metrics_close(local_metrics, _metrics(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["faults"] == {"worker_deaths": 0, "timeouts": 0, "restarts": 0,
                                 "retried_shards": 0, "dropped_clients": 0}
