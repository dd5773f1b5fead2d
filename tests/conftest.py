"""Test-session settings shared by every test folder."""
import sys

import torch

# The suite's tensors are tiny: intra-op threads only add synchronisation cost, and on a busy
# 2-core machine torch's default of one thread per core makes such tests ~50x slower.
torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    """Stop the shared Ray instance (tests/server/ray_fixtures.py) once, at the very end."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
