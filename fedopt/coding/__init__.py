"""Gradient coding: straggler-tolerant data-parallel gradients (spec gradient_coding.md).

* :mod:`~fedopt.coding.codes` — :class:`GradientCode` (B, decoder, per-pattern cache) and the
  FRC, cyclic, uncoded and user-matrix constructions; the ignore-stragglers and least-squares
  (approximate) decoders;
* :mod:`~fedopt.coding.bursty` — the (B, W, λ)-bursty straggler model: conformity and a seeded
  generator of conforming patterns;
* :mod:`~fedopt.coding.sgc` — sequential gradient coding (SR-SGC and M-SGC): loads, per-job
  bookkeeping as replayable pure state, decode deadlines;
* :mod:`~fedopt.coding.sgc_train` — training T + 1 models concurrently through SR-SGC / M-SGC
  with real gradients;
* :mod:`~fedopt.coding.delays` — seeded delay models (Gilbert–Elliott) for runtime studies.
"""
from fedopt.coding.codes import (DEFAULT_TOL, GradientCode, NotDecodable, combine, cyclic,
                                 cyclic_generator, frc, from_matrix, ignore_stragglers_vector,
                                 least_squares, uncoded)
from fedopt.coding.bursty import conforms, generate
from fedopt.coding.sgc import GC, MSGC, SRSGC, simulate_runtime

__all__ = ["DEFAULT_TOL", "GradientCode", "NotDecodable", "combine", "cyclic",
           "cyclic_generator", "frc", "from_matrix", "ignore_stragglers_vector", "least_squares",
           "uncoded", "GC", "SRSGC", "MSGC", "simulate_runtime", "conforms", "generate"]
