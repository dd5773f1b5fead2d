"""The accountant (dp-accounting) against closed forms and the spec's test vectors
(seed_extras.md §6.2, computed there with dp-accounting 0.6.0 and opacus 1.6.0)."""
import math

import numpy as np
import pytest
from scipy import optimize
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

from fedopt.privacy import accounting

DELTA = 1e-5


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε of a μ-GDP mechanism at δ (Balle & Wang 2018; Dong, Roth & Su 2022):
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), solved for ε."""
    def gap(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(gap, 0.0, 100.0, xtol=1e-12)


def test_spec_vectors_diff2_composition():
    z1, r1, z2, r2 = 4.0, 5, 8.0, 45
    mu = math.sqrt(r1 / z1 ** 2 + r2 / z2 ** 2)
    assert 1 / mu == pytest.approx(0.9922779, abs=1e-7)
    exact = analytic_gaussian_epsilon(mu, DELTA)
    assert exact == pytest.approx(4.416651, abs=1e-6)
    pld = accounting.epsilon_diff2(z1, r1, z2, r2, DELTA, "pld")
    rdp = accounting.epsilon_diff2(z1, r1, z2, r2, DELTA, "rdp")
    assert pld == pytest.approx(4.416651, abs=2e-6)
    assert abs(pld - exact) <= 1e-3 * exact
    assert rdp == pytest.approx(4.770695, abs=2e-6)
    assert rdp >= exact


def test_dp_gd_full_batch_is_one_gaussian_with_z_over_sqrt_rounds():
    z, rounds = 3.0, 40
    one = analytic_gaussian_epsilon(math.sqrt(rounds) / z, DELTA)
    assert accounting.epsilon(z, 1.0, rounds, DELTA, "pld") == pytest.approx(one, rel=1e-3)
    assert accounting.epsilon(z, 1.0, rounds, DELTA, "rdp") == pytest.approx(
        accounting.epsilon(z / math.sqrt(rounds), 1.0, 1, DELTA, "rdp"), rel=1e-9)
    assert accounting.epsilon(z, 1.0, rounds, DELTA, "rdp") >= one


def test_sigma_gaussian_vector():
    import dp_accounting
    assert dp_accounting.get_sigma_gaussian(1.0, 1e-5) == pytest.approx(3.730632, abs=1e-6)


def subsampled_gaussian_rdp_int(q: float, z: float, alpha: int) -> float:
    """RDP of the Poisson-subsampled Gaussian at an integer order α (Mironov, Talwar & Zhang
    2019, Thm. 5 / the binomial expansion): (1/(α−1)) log Σ_k C(α,k)(1−q)^{α−k} q^k
    exp((k² − k)/(2z²))."""
    k = np.arange(alpha + 1)
    logc = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = logc + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * z * z)
    return float(logsumexp(terms)) / (alpha - 1)


def test_subsampled_rdp_matches_the_binomial_expansion_at_integer_orders():
    q, z = 0.1, 1.2
    orders, rdp = accounting._rdp_of_round(z, q)
    checked = 0
    for a, r in zip(orders, rdp):
        if float(a).is_integer() and 2 <= a <= 64:
            assert r == pytest.approx(subsampled_gaussian_rdp_int(q, z, int(a)), rel=1e-8)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_ledger_equals_the_accountant(accountant):
    cases = ((1.1, 0.1, 30), (2.0, 1.0, 7)) if accountant == "rdp" else ((2.0, 1.0, 7),)
    for z, q, t in cases:
        full = accounting.epsilon(z, q, t, DELTA, accountant)
        led = accounting.ledger_epsilon(((z, q, t),), DELTA, accountant)
        if accountant == "rdp":
            assert led == pytest.approx(full, rel=1e-9)
        else:   # coarser grid: a pessimistic upper bound, close
            assert full * (1 - 1e-6) <= led <= full * 1.01
    assert accounting.ledger_epsilon(((4.0, 1.0, 5), (8.0, 1.0, 45)), DELTA, "rdp") == \
        pytest.approx(4.770695, abs=2e-6)
    assert accounting.ledger_epsilon(((0.0, 1.0, 1),), DELTA) == math.inf
    assert accounting.ledger_epsilon(((1.0, 1.0, 0),), DELTA) == 0.0


@pytest.mark.parametrize("accountant,q", [("rdp", 0.2), ("rdp", 1.0)])   # PLD: see diff2 below
def test_calibration_hits_the_target_from_below(accountant, q):
    rounds, target = 30, 2.0
    z = accounting.calibrate(target, q, rounds, DELTA, accountant)
    eps = accounting.epsilon(z, q, rounds, DELTA, accountant)
    assert eps <= target and eps == pytest.approx(target, rel=5e-3)
    assert accounting.calibrate(math.inf, q, rounds, DELTA) == 0.0
    # more rounds at the same budget need more noise
    assert accounting.calibrate(target, q, 60, DELTA, accountant) > z


def test_diff2_calibration_is_the_spec_split():
    import dp_accounting
    eps, rounds, period, rho = 2.0, 50, 10, 0.5
    noise = accounting.calibrate_diff2(eps, DELTA, rounds, period, rho, "pld")
    assert (noise.r1, noise.r2) == (5, 45)
    mu_star = 1 / dp_accounting.get_sigma_gaussian(eps, DELTA)      # spec §6.2
    assert noise.z1 == pytest.approx(math.sqrt(5 / (rho * mu_star ** 2)), rel=2e-3)
    assert noise.z2 == pytest.approx(math.sqrt(45 / ((1 - rho) * mu_star ** 2)), rel=2e-3)
    spent = accounting.epsilon_diff2(noise.z1, 5, noise.z2, 45, DELTA, "pld")
    assert spent <= eps and spent == pytest.approx(eps, rel=5e-3)
    # RDP is looser: it needs more noise for the same ε, same ratio z2/z1
    loose = accounting.calibrate_diff2(eps, DELTA, rounds, period, rho, "rdp")
    assert loose.z1 > noise.z1 and loose.z2 / loose.z1 == pytest.approx(noise.z2 / noise.z1)
    assert accounting.epsilon_diff2(loose.z1, 5, loose.z2, 45, DELTA, "rdp") <= eps


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="sampling_rate"):
        accounting.epsilon(1.0, 1.5, 3, DELTA)
    with pytest.raises(ValueError, match="delta"):
        accounting.epsilon(1.0, 0.5, 3, 0.0)
    with pytest.raises(ValueError, match="restart_share"):
        accounting.calibrate_diff2(1.0, DELTA, 10, 2, 1.0)


def test_pld_ledger_never_exceeds_a_calibrated_budget():
    """The per-round ledger (epsilon_spent) composes on a coarser PLD grid than the library's
    default; calibration must use the same grid, or the last row reads above the target."""
    for eps in (1.0, 4.0):
        z = accounting.calibrate(eps, 0.1, 100, DELTA, "pld")
        assert accounting.ledger_epsilon(((z, 0.1, 100),), DELTA, "pld") <= eps
        n = accounting.calibrate_diff2(eps, DELTA, 50, 5, 0.5, "pld")
        assert accounting.ledger_epsilon(((n.z1, 1.0, n.r1), (n.z2, 1.0, n.r2)), DELTA,
                                         "pld") <= eps
