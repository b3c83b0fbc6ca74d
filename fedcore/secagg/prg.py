"""Masks: full-length seeds expanded by AES-256-CTR into words mod 2^k (Bonawitz et al. 2017, Sec. 4).

A 32-byte seed is the AES-256 key; the counter starts at zero (each seed expands exactly one mask,
so no key/counter pair is ever reused). The keystream is read as little-endian ``uint32`` words
(``modulus_bits`` <= 32) or ``uint64`` words (33..62 bits); arithmetic wraps in the word and the
result is reduced mod 2^k at the end (2^k divides the word size, so the reduction commutes).
The seed is never folded into a smaller integer (Flower's legacy SecAgg+ reduced it to a 32-bit
numpy ``RandomState`` seed, which can be brute-forced).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from fedcore.errors import ConfigError, SecAggError

__all__ = ["MAX_BITS", "apply_masks", "expand", "reduce_", "word_dtype"]

MAX_BITS = 62
_ZERO_IV = bytes(16)


def word_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """``uint32`` for k <= 32, ``uint64`` for 32 < k <= 62; other k raise ``ConfigError``."""
    if not 1 <= modulus_bits <= MAX_BITS:
        raise ConfigError(f"modulus_bits must be in 1..{MAX_BITS}, got {modulus_bits}")
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


_zeros = memoryview(b"")


def _zero_bytes(n: int) -> memoryview:
    """``n`` zero bytes (a slice of one cached buffer; AES-CTR of zeros is the keystream)."""
    global _zeros
    if len(_zeros) < n:
        _zeros = memoryview(bytes(n))
    return _zeros[:n]


def _scratch(length: int, dtype: np.dtype[np.unsignedinteger]) -> NDArray[np.unsignedinteger]:
    """A word buffer with the 16 spare bytes ``update_into`` wants after the data."""
    return np.empty(length + 16 // dtype.itemsize, dtype=dtype)


def _fill(seed: bytes, buf: NDArray[np.unsignedinteger], length: int) -> NDArray[np.unsignedinteger]:
    if len(seed) != 32:
        raise SecAggError(f"a mask seed must be 32 bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    nbytes = length * buf.dtype.itemsize
    written = enc.update_into(_zero_bytes(nbytes), memoryview(buf).cast("B"))  # type: ignore[arg-type]
    if written != nbytes:  # never expected in CTR mode; never hand out unwritten words
        raise SecAggError(f"AES-CTR returned {written} of {nbytes} keystream bytes")
    return buf[:length]


def expand(seed: bytes, length: int, modulus_bits: int) -> NDArray[np.unsignedinteger]:
    """``length`` words of the AES-256-CTR keystream under ``seed`` (32 bytes), not yet reduced."""
    dtype = word_dtype(modulus_bits)
    return _fill(seed, _scratch(length, dtype), length)


def reduce_(words: NDArray[np.unsignedinteger], modulus_bits: int) -> NDArray[np.unsignedinteger]:
    """Reduce ``words`` mod 2^k in place and return them."""
    if modulus_bits < words.dtype.itemsize * 8:
        words &= words.dtype.type((1 << modulus_bits) - 1)
    return words


_PARALLEL_FROM = 64
"""From this many masks on, ``apply_masks`` spreads them over threads (AES-CTR and numpy's adds
release the GIL): the coordinator's removal of a dropped site's pairwise masks, O(dropped x
survivors) expansions, is the protocol's one large cost."""


def apply_masks(
    values: NDArray[np.unsignedinteger],
    *,
    seeds: Sequence[tuple[bytes, int]],
    modulus_bits: int,
) -> NDArray[np.unsignedinteger]:
    """``values + sum(sign * PRG(seed))`` mod 2^k, in a new array (one keystream buffer reused).

    ``seeds`` holds ``(seed, sign)`` with sign +1 or -1: a site adds its self-mask, the lower-named
    site of a pair adds the pair's mask and the other subtracts it (so it cancels in the sum); the
    coordinator removes masks with the opposite signs. Many masks are expanded on several threads,
    each into its own partial sum (addition mod 2^k commutes: the result is the same).
    """
    workers = min(os.cpu_count() or 1, len(seeds) // (_PARALLEL_FROM // 2))
    if workers > 1:
        parts = [seeds[i::workers] for i in range(workers)]
        zero = np.zeros_like(values, dtype=word_dtype(modulus_bits))
        with ThreadPoolExecutor(workers) as pool:
            partial = list(pool.map(lambda p: _apply(zero, p, modulus_bits), parts))
        out = np.array(values, dtype=word_dtype(modulus_bits), copy=True)
        for p in partial:
            out += p
        return reduce_(out, modulus_bits)
    return _apply(values, seeds, modulus_bits)


def _apply(
    values: NDArray[np.unsignedinteger], seeds: Sequence[tuple[bytes, int]], modulus_bits: int
) -> NDArray[np.unsignedinteger]:
    dtype = word_dtype(modulus_bits)
    out = np.array(values, dtype=dtype, copy=True)
    buf = _scratch(out.size, dtype)
    for seed, sign in seeds:
        if sign not in (1, -1):
            raise SecAggError(f"a mask sign must be +1 or -1, got {sign}")
        mask = _fill(seed, buf, out.size)
        if sign == 1:
            out += mask
        else:
            out -= mask
    return reduce_(out, modulus_bits)
