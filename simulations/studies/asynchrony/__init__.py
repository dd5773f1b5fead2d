"""Stragglers and asynchrony: FedAvg vs FedFix vs FedBuff vs asynchronous FedAvg on the virtual
clock (``python -m fedopt.simulations.studies.asynchrony.run --out DIR [--quick]``)."""
