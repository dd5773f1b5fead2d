"""The torch copies of the keyed draws (used on a GPU) equal the numpy ones they copy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedopt.rng import (keyed_bits, keyed_bits_torch, keyed_normal, keyed_normal_torch,
                        keyed_rademacher_torch, keyed_uniform, shr_logical)

seeds = st.integers(0, 2**64 - 1)
coords = st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, a=coords, b=st.integers(-2**63, 2**63 - 1), stream=st.integers(0, 2**16))
def test_keyed_bits_torch_is_bit_for_bit_numpy(seed, a, b, stream):
    arr = np.asarray(a, dtype=np.int64)
    ref = keyed_bits(seed, stream, arr[:, None], b, np.arange(3)[None, :])
    got = keyed_bits_torch(seed, stream, torch.from_numpy(arr)[:, None], b, torch.arange(3)[None, :])
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), ref.view(np.int64))


def test_logical_shift_on_negative_patterns():
    z = torch.tensor([-1, -2**63, 5, -12345], dtype=torch.int64)
    ref = z.numpy().view(np.uint64)
    for s in (1, 11, 32, 63):
        np.testing.assert_array_equal(shr_logical(z, s).numpy().view(np.uint64),
                                      ref >> np.uint64(s))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, a=coords)
def test_rademacher_and_normal_copies(seed, a):
    arr = np.asarray(a, dtype=np.int64)
    rad = np.where(keyed_uniform(seed, 3, arr, 9) < 0.5, -1.0, 1.0)
    np.testing.assert_array_equal(keyed_rademacher_torch(seed, 3, torch.from_numpy(arr), 9).numpy(),
                                  rad)
    # same uniforms bit for bit; torch's log1p/cos may differ from numpy's by an ulp or two
    np.testing.assert_allclose(keyed_normal_torch(seed, 3, torch.from_numpy(arr), 9).numpy(),
                               keyed_normal(seed, 3, arr, 9), rtol=1e-14, atol=1e-14)


def test_floating_coordinates_are_refused():
    with pytest.raises(ValueError, match="integer coordinates"):
        keyed_bits_torch(0, torch.ones(3))


def test_int_coordinates_wrap_to_64_bits_as_numpy_does():
    for c in (2**63, 2**64 - 1, -2**63, -1):
        np.testing.assert_array_equal(keyed_bits_torch(5, c, torch.arange(3)).numpy(),
                                      keyed_bits(5, c, np.arange(3)).view(np.int64))
