"""When no client update can ever arrive (issue 11.12): one ``error:`` line naming the clock
field that stops the run, with advice that fits the settings — and no error where the run can
still go on (refill free slots instead)."""
import math

import pytest

from fedopt.algorithms.async_schedule import ClockStall, SchedulePolicy, Scheduler
from fedopt.clock import VirtualClock, validate_clock_config
from fedopt.config import ConfigError


def scheduler(taus, policy, **clock):
    clock["speed"] = {"name": "list", "values": [None if math.isinf(t) else t for t in taus]}
    return Scheduler(policy, VirtualClock(validate_clock_config(clock), len(taus), seed=0), seed=0)


def stall(taus, policy, **clock):
    s = scheduler(taus, policy, **clock)
    st, _ = s.init_state()
    with pytest.raises(ClockStall) as e:
        for _ in range(50):
            s.advance(st)
    assert isinstance(e.value, ConfigError)        # printed as one `error:` line by the CLI
    return str(e.value), st


def test_failure_prob_one_is_refused_by_the_config():
    """At failure_prob 1 no job ever returns, whatever the timeout: no run can use it."""
    with pytest.raises(ConfigError, match=r"^clock\.failure_prob: .*\[0, 1\)"):
        validate_clock_config({"failure_prob": 1.0, "timeout": 2.0})
    assert validate_clock_config({"failure_prob": 0.999})["failure_prob"] == 0.999


def test_timeout_below_every_job_names_the_shortest_job():
    # M = N = 3: every client gets version 0 and is dropped at t = 0.5
    msg, st = stall([1.0, 2.0, 0.75], SchedulePolicy(3, buffer_size=1), timeout=0.5)
    assert msg.startswith("clock.timeout:") and "set clock.timeout" not in msg
    assert "clients [0, 1, 2]" in msg and "raise clock.timeout above 0.75" in msg


def test_jobs_that_never_complete_without_a_timeout_advise_setting_it():
    msg, _ = stall([math.inf, math.inf], SchedulePolicy(2, buffer_size=1))
    assert msg.startswith("clock.timeout:") and "clients [0, 1] never complete" in msg
    assert "set clock.timeout" in msg


@pytest.mark.parametrize("policy", [SchedulePolicy(1, buffer_size=1),
                                    SchedulePolicy(1, buffer_size=1, cancel_stragglers=True),
                                    SchedulePolicy(1, buffer_size=1, dispatch="on_arrival")])
def test_all_jobs_in_flight_dropped_refills_with_other_clients(policy):
    """One slot, clients 0–3 never return, client 4 takes 1 unit, timeout 2: whichever
    clients are tried first, each dead one is dropped 2 units after its dispatch and the slot
    is refilled at once, so step 0 aggregates client 4 (staleness 0) at time 2k + 1 after k
    drops — instead of stopping at the first drop."""
    s = scheduler([math.inf] * 4 + [1.0], policy, timeout=2.0)
    st, _ = s.init_state()
    step = s.advance(st)
    assert step.clients.tolist() == [4] and step.staleness.tolist() == [0]
    k = st["dropped"]
    assert 0 <= k <= 4 and step.time == 2 * k + 1
    assert len({c for c, _ in step.dropped}) == k


def test_every_client_failing_is_one_error_line_from_the_cli_before_anything_runs(tmp_path, capsys):
    from fedopt.simulations import cli

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {name: synthetic, num_clients: 6, min_samples: 10, max_samples: 30}\n"
                   "model: {name: logreg}\n"
                   "algorithm: {name: async_fedavg, rounds: 2, clients_per_round: 3}\n"
                   "client: {local_steps: 1, batch_size: 5}\n"
                   "clock: {failure_prob: 1.0, timeout: 2.0}\n")
    code = cli.main(["run", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: clock.failure_prob: must be a probability in [0, 1)")
