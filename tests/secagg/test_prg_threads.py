"""Many masks are expanded on several threads: the result is bit-for-bit the one-thread result."""

from __future__ import annotations

import os

import numpy as np

from fedcore.secagg import prg


def test_threaded_masks_equal_a_naive_loop() -> None:
    values = np.arange(5000, dtype=np.uint32)
    seeds = [(os.urandom(32), 1 if k % 3 else -1) for k in range(3 * prg._PARALLEL_FROM)]
    naive = values.astype(np.int64)
    for seed, sign in seeds:
        naive = (naive + sign * prg.expand(seed, 5000, 32).astype(np.int64)) % (1 << 32)
    expect = naive.astype(np.uint32)
    assert np.array_equal(prg.apply_masks(values, seeds=seeds, modulus_bits=32), expect)
    assert np.array_equal(
        prg.apply_masks(values, seeds=seeds[:5], modulus_bits=32), prg._apply(values, seeds[:5], 32)
    )
