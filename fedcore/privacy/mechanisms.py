"""Noise and clipping math: numpy only, randomness always an argument.

Secure randomness
-----------------
numpy's bit generators (PCG64, Philox, ...) are statistical PRNGs, not cryptographic ones: their
state can be recovered from enough outputs (Bouillaguet et al. 2020 for PCG64), so seeding one
from ``os.urandom`` does not make it secure. ``secure_rng()`` therefore returns a
``numpy.random.Generator`` over ``UrandomBitGenerator``, a bit generator whose every 64-bit word
comes from the operating system's CSPRNG (``os.urandom``, i.e. ``getrandom(2)`` on Linux).
numpy's own samplers (ziggurat normal, etc.) turn those bits into noise. It plays the role of
Opacus' ``secure_mode`` (which used torchcsprng, now archived). Cost: about 1 microsecond per
64-bit word, i.e. ~1 s per million noised parameters (4 s with the floating-point mitigation below).

With a secure generator, ``gaussian_noise`` also applies Opacus' floating-point mitigation: the sum
of four draws with std ``std`` divided by 2 (Holohan & Braghin 2021, "Secure Random Sampling in
Differential Privacy", Sec. 5), against attacks on the low bits of floating-point noise
(Mironov 2012).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import PrivacyError

__all__ = [
    "PrivacyWarning",
    "UrandomBitGenerator",
    "check_rng_request",
    "clip_to_norm",
    "gaussian_noise",
    "is_secure",
    "l2_norm",
    "make_rng",
    "secure_rng",
]

Arrays = tuple[NDArray[np.float64], ...]


class PrivacyWarning(UserWarning):
    """A privacy guarantee is weakened on purpose (e.g. reproducible, non-secure noise)."""


_U64 = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
_U32 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p)
_DBL = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p)


class _BitgenT(ctypes.Structure):
    """numpy's ``bitgen_t`` (numpy/random/bitgen.h): state pointer and four callbacks."""

    _fields_ = [
        ("state", ctypes.c_void_p),
        ("next_uint64", _U64),
        ("next_uint32", _U32),
        ("next_double", _DBL),
        ("next_raw", _U64),
    ]


class UrandomBitGenerator:
    """A numpy bit generator whose words come from ``os.urandom`` (buffered 64 KiB at a time).

    Implements the ``capsule``/``lock`` interface ``numpy.random.Generator`` reads (the same
    interface numpy documents for ctypes/numba bit generators). Not seedable, not picklable.
    """

    _WORDS = 8192

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._words: list[int] = []
        self._callbacks = (
            _U64(lambda _: self._next()),
            _U32(lambda _: self._next() >> 32),
            _DBL(lambda _: (self._next() >> 11) * 2.0**-53),
        )
        u64, u32, dbl = self._callbacks
        self._struct = _BitgenT(None, u64, u32, dbl, u64)
        self._name = b"BitGenerator"
        new_capsule = ctypes.pythonapi.PyCapsule_New
        new_capsule.restype = ctypes.py_object
        new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        self.capsule = new_capsule(ctypes.addressof(self._struct), self._name, None)

    def _next(self) -> int:
        # An exception cannot cross the C callback (ctypes would print it and return 0), so it
        # is stored and ``check`` raises it after the draw: never silently zero bits.
        try:
            if not self._words:
                self._words = np.frombuffer(os.urandom(8 * self._WORDS), dtype=np.uint64).tolist()
            return self._words.pop()
        except BaseException as err:
            self.error = err
            return 0

    def check(self) -> None:
        """Raise ``PrivacyError`` if reading the OS CSPRNG ever failed in this generator."""
        if self.error is not None:
            raise PrivacyError(f"the OS random source failed: {self.error!r}") from self.error

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a secure random generator cannot be pickled; create one per process")


def secure_rng() -> np.random.Generator:
    """A generator backed by the OS CSPRNG; use it for every production noise draw."""
    return np.random.Generator(UrandomBitGenerator())  # type: ignore[arg-type]


def is_secure(rng: np.random.Generator) -> bool:
    """Whether ``rng`` draws its bits from the OS CSPRNG."""
    return isinstance(rng.bit_generator, UrandomBitGenerator)


def check_rng_request(seed: int | None, *, secure: bool, what: str, stacklevel: int = 2) -> None:
    """The one rule for DP randomness: a secure source refuses a seed; a non-secure one warns.

    ``what`` names the noise (e.g. "DP noise", "DP-SGD sampling and noise") in the messages.
    """
    if secure:
        if seed is not None:
            raise PrivacyError(
                f"{what}: a secure rng cannot be seeded, got seed={seed}; pass seed=None, or "
                "secure=False for reproducible (non-production) experiments"
            )
        return
    how = f"seeded with {seed}: REPRODUCIBLE" if seed is not None else "not a CSPRNG"
    warnings.warn(
        f"{what} uses a non-secure rng ({how}); anyone who knows the seed or the rng state can "
        "remove the noise. Fine for experiments and tests, NOT for production: use secure=True.",
        PrivacyWarning,
        stacklevel=stacklevel + 1,
    )


def make_rng(seed: int | None, *, secure: bool) -> np.random.Generator:
    """The rng a DP plug-in should use.

    ``secure=True`` (production) returns ``secure_rng()`` and refuses a seed. ``secure=False``
    returns numpy's PCG64 (seeded, or from OS entropy when ``seed`` is None) and emits a
    ``PrivacyWarning``: such noise is not cryptographically secure and, when seeded, reproducible.
    """
    check_rng_request(seed, secure=secure, what="DP noise", stacklevel=2)
    if secure:
        return secure_rng()
    return np.random.default_rng(seed)


def gaussian_noise(
    shape: int | Sequence[int], *, std: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Draw N(0, std^2) noise of ``shape`` from ``rng`` (std 0 gives zeros).

    With a secure ``rng`` the draw is (z1 + z2 + z3 + z4) / 2 with z_i ~ N(0, std^2), which has
    the same distribution (Holohan & Braghin 2021, Sec. 5; as Opacus' ``secure_mode``).
    """
    if not (math.isfinite(std) and std >= 0):
        raise PrivacyError(f"noise std must be finite and >= 0, got {std}")
    if std == 0:
        return np.zeros(shape, dtype=np.float64)
    if not is_secure(rng):
        return rng.normal(0.0, std, size=shape)
    total = rng.normal(0.0, std, size=shape)
    for _ in range(3):
        total += rng.normal(0.0, std, size=shape)
    rng.bit_generator.check()  # type: ignore[attr-defined]
    return total / 2.0


def l2_norm(arrays: Sequence[NDArray[np.float64]]) -> float:
    """The L2 norm of all ``arrays`` flattened together (the norm DP clipping bounds)."""
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def clip_to_norm(arrays: Sequence[NDArray[np.float64]], *, clipping_norm: float) -> Arrays:
    """Scale ``arrays`` jointly by ``min(1, C / ||arrays||_2)`` (Abadi et al. 2016, Eq. 4).

    Returns new arrays; inputs are never modified. A zero-norm input is returned unchanged (copied)
    instead of dividing by zero.
    """
    if not (math.isfinite(clipping_norm) and clipping_norm > 0):
        raise PrivacyError(f"clipping_norm must be finite and > 0, got {clipping_norm}")
    norm = l2_norm(arrays)
    if not math.isfinite(norm):
        raise PrivacyError(f"cannot clip an update with a non-finite norm ({norm})")
    factor = 1.0 if norm <= clipping_norm else clipping_norm / norm
    return tuple(np.asarray(a, dtype=np.float64) * factor for a in arrays)
