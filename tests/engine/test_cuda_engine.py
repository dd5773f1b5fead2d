"""The engine on a CUDA device computes what it computes on the CPU (skipped without one).

The minibatch plan is drawn on the device by integer arithmetic (fedopt.rng's torch copies),
so a GPU run trains on the same rows as the CPU run; Hessian probes are the same bits
(Rademacher) or the same to an ulp (Gaussian, Sophia's default); what differs is floating-point
rounding only, which float64 keeps far below the tolerances here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedopt.config import load_config
from fedopt.engine.batches import plan_batches
from fedopt.simulation import Simulation

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "configs" / "quickstart.yaml"


@pytest.mark.parametrize("per_client_key", [False, True])
@pytest.mark.parametrize("local_steps, batch", [(20, 10), (None, 7), (3, 500)])
def test_plan_made_on_the_gpu_is_the_host_plan_bit_for_bit(per_client_key, local_steps, batch):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 300, size=400)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = rng.choice(400, 150, replace=False).astype(np.int64)
    n = counts[ids]
    steps = (np.full(150, local_steps, dtype=np.int64) if local_steps
             else 2 * -(-n // batch))
    key = rng.integers(0, 10**6, size=150) if per_client_key else 11
    cpu = plan_batches(3, key, ids, offsets, batch, steps, device="cpu", dtype=torch.float64)
    gpu = plan_batches(3, key, ids, offsets, batch, steps, device="cuda", dtype=torch.float64)
    assert gpu.rows.is_cuda and gpu.weight.is_cuda and gpu.active.is_cuda
    for f in ("rows", "weight", "active", "steps"):
        assert torch.equal(getattr(cpu, f), getattr(gpu, f).cpu()), f


def _run(device: str, overrides: list[str], rounds: int) -> dict:
    cfg = load_config(QUICKSTART, overrides + [f"executor.device={device}",
                                               "executor.dtype=float64", "eval_every=1000"])
    sim = Simulation(cfg)
    for _ in range(rounds):
        sim.step()
    params = {k: v.detach().cpu() for k, v in sim.state.params.items()}
    sim.executor.close()
    return params


CASES = {
    "fedavg-logreg": ["algorithm.clients_per_round=20"],
    "fedavg-cnn": ["data={name: digits, num_clients: 20, flatten: false}", "model={name: cnn}"],
    "fedavg-mlp-epochs": ["data={name: digits, num_clients: 20}", "model={name: mlp}",
                          "client.local_steps=null", "client.local_epochs=1"],
    "scaffold": ["algorithm={name: scaffold, rounds: 4, clients_per_round: 10}"],
    "fedprox": ["algorithm={name: fedprox, rounds: 4, clients_per_round: 10, mu: 0.1}"],
    "fedadam": ["algorithm.server_optimizer={name: adam, lr: 0.01}"],
    "sophia-clients": ["client.optimizer={name: sophia, lr: 0.05, update_period: 2}"],
    "fedbuff": ["algorithm={name: fedbuff, rounds: 4, clients_per_round: 8, buffer_size: 4}"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_simulation_on_the_gpu_equals_the_cpu_run(case):
    cpu = _run("cpu", CASES[case], 4)
    gpu = _run("cuda", CASES[case], 4)
    assert any(not torch.equal(cpu[k], _run("cpu", CASES[case], 0)[k]) for k in cpu)  # it moved
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-9, atol=1e-11, msg=f"{case}: {k}")
