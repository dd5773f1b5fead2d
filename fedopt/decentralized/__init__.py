"""Decentralized optimization: no server; ``n`` nodes (the data set's clients) on a graph, each
with its own loss, gradient steps and pairwise communications on Poisson clocks.

* :mod:`~fedopt.decentralized.graphs` — topologies, Laplacians, χ₁/χ₂, DADAO's rate;
* :mod:`~fedopt.decentralized.events` — the keyed Poisson node/edge event stream;
"""
