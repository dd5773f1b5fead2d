"""Differential privacy for federated runs (the ``privacy:`` config section).

* :mod:`fedopt.privacy.accounting`: (ε, δ) from noise multipliers, sampling rate and rounds, and
  the noise multiplier for a target ε, by the ``dp-accounting`` library (RDP or PLD);
* :mod:`fedopt.privacy.postprocess`: update postprocessors that chain in a client's
  :class:`~fedopt.engine.program.LocalProgram` (flat and per-layer L2 clipping, keyed Gaussian
  noise added by each client) and the server's keyed central noise on the aggregate;
* :mod:`fedopt.privacy.dp_fedavg`: DP-FedAvg / DP-FedSGD (McMahan et al., ICLR 2018);
* :mod:`fedopt.privacy.diff2`: DIFF2's client message (Murata & Suzuki, ICML 2023); the server
  side is the algorithm ``diff2`` (:mod:`fedopt.algorithms.diff2`);
* :mod:`fedopt.privacy.config`: the section's schema, calibration at validation, and the hook
  that makes a built algorithm private.

This package imports nothing at import time; import the submodule you need.
"""
