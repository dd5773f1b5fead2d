"""Virtual-clock compute times as injected real-time delays (no Ray needed)."""
import math

import numpy as np
import pytest

from fedopt.server.ray_async import delay_from_clock


def test_delays_follow_the_virtual_clock_and_cap_never_returning_jobs():
    clock_mod = pytest.importorskip("fedopt.clock")
    cfg = clock_mod.validate_clock_config({
        "compute": {"name": "exponential", "shift": 0.5, "scale": 1.0},
        "speed": {"name": "list", "values": [1.0, 2.0, math.inf]}})
    clock = clock_mod.VirtualClock(cfg, num_clients=3, seed=0)
    delay = delay_from_clock(clock, seconds_per_unit=0.01, cap_s=5.0)
    work = clock.work(np.array([0, 1]), np.array([4, 4]), clock.init_state())
    assert delay(0, 4) == pytest.approx(0.01 * work[0])
    assert delay(1, 4) == pytest.approx(0.01 * work[1])
    assert delay(0, 4) != delay(0, 5)                # a fresh draw per job
    assert delay(2, 0) == 5.0                        # infinitely slow client: held until the cap
