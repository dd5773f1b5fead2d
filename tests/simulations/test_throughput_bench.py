"""The throughput benchmark measures what it says: its three implementations train the model
they claim to (checked against the engine and against each other's arithmetic), and its table
carries the spread of the repetitions."""
import torch

from fedopt.config import load_config
from fedopt.simulation import Simulation
from fedopt.simulations.benchmarks import throughput as tp


def small_sim(workload="logreg", m=3):
    overrides = tp.WORKLOADS[workload] + [f"algorithm.clients_per_round={m}",
                                          "data.num_clients=12", "client.local_steps=3"]
    return Simulation(load_config(tp.QUICKSTART, overrides))


def test_engine_agrees_with_the_per_client_reference_on_every_workload():
    for workload in tp.WORKLOADS:
        sim = small_sim(workload)
        assert tp.agreement(sim, 5) < 1e-5, workload


def test_plain_loop_is_fedavg_with_sgd():
    """One round of the timed loop on one client with one full-batch step is x - lr ∇F(x)
    (server lr 1), computed here by autograd on a copy of the model."""
    sim = small_sim(m=1)
    loop = tp.PlainLoop(sim)
    loop.steps, loop.batch = 1, 10_000
    start = {k: v.clone() for k, v in loop.global_params.items()}
    rng_state = loop.rng.bit_generator.state
    client = int(loop.rng.choice(12, 1, replace=False)[0])
    loop.rng.bit_generator.state = rng_state
    samples = loop.round()
    lo, hi = int(sim.data.offsets[client]), int(sim.data.offsets[client + 1])
    assert samples == hi - lo
    model = sim.model
    model.load_state_dict(start, strict=False)
    loss = torch.nn.functional.cross_entropy(model(sim.data.x[lo:hi]), sim.data.y[lo:hi])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (k, x0), g in zip(start.items(), grads):
        torch.testing.assert_close(loop.global_params[k], x0 - 0.01 * g)


def test_interleaved_repetitions_and_table():
    calls = []

    def impl(name):
        def fn(n):
            calls.append(name)
            return 0.5, n, 10 * n
        return fn

    runs = tp.interleaved({"a": impl("a"), "b": impl("b")}, window=1.0, repeats=3)
    assert calls[4:] == ["a", "b"] * 3          # 2 calibration calls each, then alternating
    assert all(len(r) == 3 and r[0] == (0.5, 2, 20) for r in runs.values())
    row = {"x": tp._med([1.0, 3.0, 2.0])}
    assert "2 [1–3]" in tp.table([row])
