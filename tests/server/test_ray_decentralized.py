"""Decentralized nodes as Ray actors (executor.name: ray): shards of nodes exchange parameters
with their neighbours' actors directly, each node's events in the keyed stream's order, so the
run equals the in-process virtual-clock run (same events, iterates to float64 round-off); a
killed node actor stops the run with an error naming it or the run goes on without its nodes
(executor.on_node_failure), never a hang."""
import threading
import time

import numpy as np
import pytest
import torch

from fedopt.checkpoint import decode_checkpoint, encode_checkpoint
from fedopt.config import ConfigError, load_config
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import TEST_CPUS_PER_WORKER, ray_session  # noqa: F401

pytestmark = pytest.mark.slow


def config(algorithm, executor="local", spu=None, on_node_failure=None, nodes=6,
           topology="ring", batch_events=False):
    cfg = {"seed": 4, "data": {"name": "synthetic", "alpha": 1.0, "beta": 1.0,
                               "num_clients": nodes, "max_samples": 60},
           "model": {"name": "logreg", "l2": 0.1},
           "algorithm": {**algorithm, "batch_events": batch_events},
           "topology": {"name": topology},
           "executor": {"name": executor, "dtype": "float64"}, "eval_every": 1000}
    if executor == "ray":
        cfg["algorithm"]["seconds_per_unit"] = spu
        cfg["executor"].update({"num_workers": 2, "num_threads": 1,
                                "num_cpus_per_worker": TEST_CPUS_PER_WORKER})
        if on_node_failure:
            cfg["executor"]["on_node_failure"] = on_node_failure
    return cfg


def node_states(sim):
    return sim.state.extra["decentralized"]["nodes"]


@pytest.mark.parametrize("algorithm,spu", [
    ({"name": "gossip", "time_budget": 3, "lr": 0.2}, 0.02),
    ({"name": "dadao", "time_budget": 3}, None)])
def test_node_actors_equal_the_virtual_clock(ray_session, algorithm, spu):
    ref = Simulation(load_config(config(algorithm)))
    batched = Simulation(load_config(config(algorithm, batch_events=True)))
    live = Simulation(load_config(config(algorithm, "ray", spu=spu)))
    counts = ref.data.counts.numpy()
    try:
        for r in range(3):
            if r == 2:                               # for the resume check below
                blob = encode_checkpoint(live.checkpoint())
            k0 = live.state.extra["decentralized"]["event"]
            t_start = time.monotonic()
            a, c, b = ref.step(), batched.step(), live.step()
            took = time.monotonic() - t_start
            # every event of the round, applied by the actors of its nodes
            k1 = live.state.extra["decentralized"]["event"]
            assert k1 > k0
            np.testing.assert_array_equal(live.algorithm._group.last_events,
                                          np.arange(k0, k1))
            for key in ("virtual_time", "gradient_steps", "communications"):
                assert b[key] == a[key] == c[key], key
            for key in ("consensus_error", "suboptimality"):
                assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-14), key
            assert b["live_nodes"] == 6
            for k, v in node_states(ref).items():
                torch.testing.assert_close(node_states(live)[k], v, rtol=0, atol=1e-10)
            if spu:                              # paced: a time unit takes >= spu seconds
                assert took >= 0.8 * spu
        group = live.algorithm._group             # each actor holds its own nodes' rows only
        held = ray_session.get([a.held_rows.remote() for a in group.actors])
        assert held == [int(counts[group.nodes_of(s)].sum()) for s in range(2)]
        assert sum(held) == counts.sum()
        # restored to round 2's checkpoint, the actors restart from it: round 3 again, equal
        final = {k: v.clone() for k, v in node_states(live).items()}
        live.restore(decode_checkpoint(blob))
        again = live.step()
        assert again["communications"] == b["communications"]
        for k, v in final.items():
            torch.testing.assert_close(node_states(live)[k], v, rtol=0, atol=1e-12)
    finally:
        for s in (ref, batched, live):
            s.close()


def run_with_watchdog(fn, timeout_s=120.0):
    """fn() in a thread; fails instead of hanging the suite."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:          # noqa: BLE001 - handed to the test
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout_s)
    assert not th.is_alive(), "the run hung after a node actor died"
    return box


def test_a_killed_node_actor_stops_the_run_with_an_error(ray_session):
    from fedopt.server.ray_nodes import NodeFailedError

    alg = {"name": "gossip", "time_budget": 4, "lr": 0.2}
    live = Simulation(load_config(config(alg, "ray", spu=0.5)))
    try:
        live.step()
        # killed mid-round (or, on a very busy machine, between rounds): a later step sees it
        killer = threading.Timer(0.25, lambda: ray_session.kill(live.algorithm._group.actors[1]))
        killer.start()
        box = run_with_watchdog(lambda: [live.step() for _ in range(3)])
        killer.join()
        assert isinstance(box.get("error"), NodeFailedError)
        msg = str(box["error"])
        assert "node actor 1 (nodes [3, 4, 5])" in msg and "on_node_failure" in msg
    finally:
        live.close()


def test_a_killed_node_actor_is_left_out_when_the_config_says_continue(ray_session):
    alg = {"name": "gossip", "time_budget": 6, "lr": 0.2}
    live = Simulation(load_config(config(alg, "ray", spu=0.5, on_node_failure="continue")))
    try:
        live.step()
        killer = threading.Timer(0.25, lambda: ray_session.kill(live.algorithm._group.actors[0]))
        killer.start()
        box = run_with_watchdog(lambda: [live.step() for _ in range(2)])
        killer.join()
        assert "error" not in box, box.get("error")
        row = box["value"][-1]
        assert row["live_nodes"] == 3
        dead = live.state.extra["decentralized"]["dead"]
        assert dead.tolist() == [True, True, True, False, False, False]
        before = {k: v.clone() for k, v in node_states(live).items()}
        stream = live.algorithm._stream()
        applied = []
        for _ in range(3):                                   # the survivors go on
            row = run_with_watchdog(live.step)["value"]
            assert row["live_nodes"] == 3 and np.isfinite(row["consensus_error"])
            applied += live.algorithm._group.last_events.tolist()
        assert applied                                       # events among the live nodes ran
        for k in applied:                                    # ... and only those
            ev = stream.draw(k, 1, 0.0)
            assert ev.a[0] >= 3 and (ev.b[0] < 0 or ev.b[0] >= 3), k
        x = node_states(live)["x"]
        torch.testing.assert_close(x[:3], before["x"][:3], rtol=0, atol=0)   # dead: frozen
        assert not torch.equal(x[3:], before["x"][3:])                       # live: moving
    finally:
        live.close()


def test_only_the_asynchronous_event_algorithms_run_on_node_actors():
    with pytest.raises(ConfigError, match="^executor.name: dsgd"):
        load_config(config({"name": "dsgd", "time_budget": 2}, "ray"))
    with pytest.raises(ConfigError, match="^algorithm.seconds_per_unit"):
        cfg = config({"name": "gossip", "time_budget": 2})
        cfg["algorithm"]["seconds_per_unit"] = 0.1
        load_config(cfg)
    cfg = config({"name": "gossip", "time_budget": 2})
    assert "client" not in cfg                         # not needed by these algorithms
    assert load_config(cfg)["client"]["local_steps"] == 1

