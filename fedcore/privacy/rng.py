"""The one cryptographically secure random source for DP noise and sampling, and its test stand-in.

Secure (``secure_source()``): bits are the AES-256-CTR keystream under a key and counter from
``os.urandom`` (the generate step of NIST SP 800-90A CTR_DRBG; rekeyed from the OS every GiB), about
40x faster than ``os.urandom`` itself. numpy's and torch's bit generators are statistical PRNGs: their
state can be recovered from their outputs (Bouillaguet et al. 2020 for PCG64), so seeding one from
the OS does not make it secure. Bits become uniforms (53 bits) and Gaussians by Box-Muller in float64,
vectorised, with Opacus' floating-point mitigation (the sum of four draws / 2; Holohan & Braghin 2021,
Sec. 5) against attacks on the low bits of floating-point noise (Mironov 2012).

Seeded (``seeded_source(seed)``): a torch ``Generator``, for reproducible experiments and tests.
It warns ``PrivacyWarning``. A site node never uses it: a site's DP draws are always secure,
whatever the coordinator asks (``fedcore.clients.site``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from fedcore.errors import PrivacyError

__all__ = ["AesCtrStream", "PrivacyWarning", "Source", "check_rng_request", "secure_source", "seeded_source"]


class PrivacyWarning(UserWarning):
    """A privacy guarantee is weakened on purpose (e.g. reproducible, non-secure noise)."""


def check_rng_request(seed: int | None, *, secure: bool, what: str, stacklevel: int = 2) -> None:
    """The one rule for DP randomness: a secure source refuses a seed; a non-secure one warns.

    ``what`` names the noise (e.g. "DP noise", "DP-SGD sampling and noise") in the messages.
    """
    if secure:
        if seed is not None:
            raise PrivacyError(
                f"{what}: a secure source cannot be seeded, got seed={seed}; pass seed=None, or "
                "secure=False for reproducible (non-production) experiments"
            )
        return
    how = f"seeded with {seed}: REPRODUCIBLE" if seed is not None else "not a CSPRNG"
    warnings.warn(
        f"{what} uses a non-secure generator ({how}); anyone who knows the seed or the generator "
        "state can remove the noise. Fine for experiments and tests, NOT for production.",
        PrivacyWarning,
        stacklevel=stacklevel + 1,
    )


def secure_source() -> Source:
    """The CSPRNG source: use it for every production noise draw and sample."""
    return Source(secure=True, seed=None)


def seeded_source(seed: int | None, *, what: str = "DP noise") -> Source:
    """A reproducible (``seed``) or OS-seeded torch-generator source; warns ``PrivacyWarning``."""
    check_rng_request(seed, secure=False, what=what, stacklevel=2)
    return Source(secure=False, seed=seed)


# --- randomness -----------------------------------------------------------------------------


class AesCtrStream:
    """Random bytes: the AES-256-CTR keystream under a key and counter drawn from ``os.urandom``.

    A block cipher in counter mode keyed from the OS CSPRNG is a CSPRNG (it is the generate step of
    NIST SP 800-90A's CTR_DRBG), and with AES-NI it produces bytes ~40x faster than ``os.urandom``.
    The key is replaced with fresh OS bytes every ``REKEY_BYTES`` (2^26 blocks: the PRP/PRF
    distinguishing advantage stays below 2^-76). Never seeded; one key per ``Source``.
    """

    REKEY_BYTES = 1 << 30
    _PIECE = 1 << 22

    def __init__(self) -> None:
        self._zeros = bytes(self._PIECE)
        self._rekey()

    def _rekey(self) -> None:
        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._enc = cipher.encryptor()
        self._left = self.REKEY_BYTES

    def words(self, n: int) -> NDArray[np.uint64]:
        """``n`` uniformly random 64-bit words."""
        nbytes = 8 * n
        buf = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants len(data) + 15 of room
        view, pos = memoryview(buf), 0  # type: ignore[arg-type]
        while pos < nbytes:
            if self._left <= 0:
                self._rekey()
            k = min(nbytes - pos, self._PIECE, self._left)
            written = self._enc.update_into(self._zeros[:k], view[pos : pos + k + 15])
            if written != k:  # never expected in CTR mode; never hand out unwritten bytes
                raise PrivacyError(f"AES-CTR keystream returned {written} of {k} bytes")
            pos, self._left = pos + k, self._left - k
        return buf[:nbytes].view(np.uint64)


class Source:
    """Uniforms, standard normals (float64) and Poisson samples: the CSPRNG, or a torch ``Generator``.

    Build with ``secure_source()`` (production: every DP draw on a site) or ``seeded_source(seed)``
    (experiments and tests only; warns ``PrivacyWarning``). Not picklable.
    """

    _BLOCK = 1 << 16  # normals per vectorised block (bounds temporaries to a few MiB)

    def __init__(self, *, secure: bool, seed: int | None) -> None:
        self.secure = secure
        self.gen = None if secure else torch.Generator()
        if self.gen is not None:
            self.gen.manual_seed(seed) if seed is not None else self.gen.seed()
        self.stream = AesCtrStream() if secure else None

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` uniforms in (0, 1] (53 random bits each)."""
        if self.stream is None:
            assert self.gen is not None
            return 1.0 - torch.rand(n, generator=self.gen, dtype=torch.float64)
        words = self.stream.words(n)
        words >>= np.uint64(11)
        words += np.uint64(1)
        return torch.from_numpy(words.astype(np.float64)).mul_(2.0**-53)

    def normal(self, n: int) -> torch.Tensor:
        """``n`` N(0, 1) draws; secure: Box-Muller, and (z1 + z2 + z3 + z4) / 2 against FP attacks."""
        if self.gen is not None:
            return torch.randn(n, generator=self.gen, dtype=torch.float64)
        out = torch.empty(n, dtype=torch.float64)
        for start in range(0, n, self._BLOCK):
            k = min(self._BLOCK, n - start)
            u = self.uniform(4 * k)  # 2k (u1, u2) pairs -> 4k normals -> k sums of four
            r = u[: 2 * k].log_().mul_(-2.0).sqrt_()
            theta = u[2 * k :].mul_(2.0 * math.pi)
            z = (r * torch.cos(theta)).view(2, k).sum(0)
            z += (r.mul_(torch.sin(theta))).view(2, k).sum(0)
            out[start : start + k] = z.mul_(0.5)
        return out

    def normal_array(self, shape: int | Sequence[int], *, std: float) -> NDArray[np.float64]:
        """N(0, std^2) noise of ``shape`` as a numpy array (std 0 gives zeros)."""
        if not (math.isfinite(std) and std >= 0):
            raise PrivacyError(f"noise std must be finite and >= 0, got {std}")
        size = math.prod((shape,) if isinstance(shape, int) else shape)
        if std == 0:
            return np.zeros(shape, dtype=np.float64)
        return self.normal(size).mul_(std).numpy().reshape(shape)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a random source cannot be pickled; create one per process")

    def noise_(self, out: torch.Tensor, std: float) -> torch.Tensor:
        """Fill ``out`` (any float dtype) with N(0, std^2), drawn in float64, block by block."""
        flat = out.view(-1)
        for start in range(0, flat.numel(), self._BLOCK):
            k = min(self._BLOCK, flat.numel() - start)
            flat[start : start + k] = self.normal(k).mul_(std)
        return out

    def poisson_batch(self, n: int, q: float) -> torch.Tensor:
        """Sorted indices of a Poisson sample: each of ``n`` rows independently with prob. ``q``."""
        return self.poisson_batches(n, q, 1)[0]

    def poisson_batches(self, n: int, q: float, steps: int) -> list[torch.Tensor]:
        """``steps`` independent Poisson samples of ``range(n)`` (sorted indices), drawn at once.

        The ``steps * n`` (step, row) inclusions are i.i.d. Bernoulli(q); the gaps between included
        positions of the flattened sequence are i.i.d. Geometric(q), drawn by inversion, so this
        costs O(q n steps) draws instead of the O(n steps) of Bernoulli masks (same distribution).
        """
        if q >= 1.0:
            return [torch.arange(n) for _ in range(steps)]
        total, log1mq = n * steps, math.log1p(-q)
        parts: list[torch.Tensor] = []
        pos = -1
        while pos < total:
            k = int(q * total + 4 * math.sqrt(q * total) + 8)
            gaps = torch.floor(torch.log(self.uniform(k)) / log1mq).to(torch.int64) + 1
            idx = pos + torch.cumsum(gaps, 0)
            parts.append(idx)
            pos = int(idx[-1])
        flat = torch.cat(parts)
        flat = flat[flat < total]
        counts = torch.bincount(flat // n, minlength=steps).tolist()
        return list(torch.split(flat % n, counts))
