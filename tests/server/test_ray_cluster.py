"""The same config on a 2-node Ray test cluster (``ray.cluster_utils.Cluster``): one worker per
node, results identical to the in-process run."""
import pytest

from fedopt.config import load_config
from fedopt.simulation import Simulation
from tests.server.ray_fixtures import assert_metrics_close, assert_params_close, make_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_two_node_cluster_run_equals_in_process(cluster):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    local = Simulation(load_config(make_config("local")))
    local_metrics = local.run()
    # a whole CPU per worker: the placement group has to put one worker on each node
    sim = Simulation(load_config(make_config("ray", num_workers=2, num_cpus_per_worker=1.0)))
    try:
        nodes = {w["node_id"] for w in sim.executor.workers}
        assert len(nodes) == 2
        metrics = sim.run()
        assert_metrics_close(local_metrics, metrics)
        assert_params_close(local.state.params, sim.state.params)
        assert sim.executor.faults()["worker_deaths"] == 0
    finally:
        sim.executor.close()
    assert ray.is_initialized()            # the cluster session belongs to the test, not the run
