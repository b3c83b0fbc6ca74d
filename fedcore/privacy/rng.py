"""The one cryptographically secure random source for DP noise and sampling, and its test stand-in.

Secure (``secure_source()``): bits are the AES-256-CTR keystream under a key and counter from
``os.urandom`` (the generate step of NIST SP 800-90A CTR_DRBG; rekeyed from the OS every GiB), about
40x faster than ``os.urandom`` itself. numpy's and torch's bit generators are statistical PRNGs:
their state can be recovered from their outputs (Bouillaguet et al. 2020 for PCG64), so seeding one
from the OS does not make it secure. Bits become uniforms (53 bits) and Gaussians by Marsaglia's
polar method in float64 (52-bit coordinates; no sine or cosine), vectorised, with Opacus'
floating-point mitigation (the sum of four draws / 2; Holohan & Braghin 2021, Sec. 5) against
attacks on the low bits of floating-point noise (Mironov 2012): each released value is a sum of four
independent draws, so the set of reachable outputs is dense rather than a sparse set of floats that
depends on the input. A float32 destination (DP-SGD's gradients) gets the same sum of four computed
in float32 (23-bit coordinates, one keystream word per polar try: ~2.5x faster); everything else is
float64. The polar method's float64 draws are bounded by about 12 (the smallest kept s is 2^-104),
float32 ones by 7.8 (2^-44), as Box-Muller's by 8.6 (53-bit uniforms): sums of four by 24 and 15.6,
far beyond any tail that matters for delta.

Seeded (``seeded_source(seed)``): a torch ``Generator``, for reproducible experiments and tests.
It warns ``PrivacyWarning``. A site node never uses it: a site's DP draws are always secure,
whatever the coordinator asks (``fedcore.clients.runtime``).
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
        self._zeros = memoryview(bytes(self._PIECE))  # slices of a memoryview are not copies
        self._rekey()

    def _rekey(self) -> None:
        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._enc = cipher.encryptor()
        self._left = self.REKEY_BYTES

    def words(self, n: int, buf: NDArray[np.uint64] | None = None) -> NDArray[np.uint64]:
        """``n`` uniformly random 64-bit words: the first ``n`` of ``buf`` when given (it needs
        ``n + 2`` words, C-contiguous; reusing one saves the page faults of a fresh array), else new."""
        buf = np.empty(n + 2, dtype=np.uint64) if buf is None else buf
        if buf.size < n + 2 or not buf.flags.c_contiguous:
            raise ValueError(f"buf needs {n + 2} contiguous words, got {buf.size}")
        view, pos, nbytes = memoryview(buf).cast("B"), 0, 8 * n  # type: ignore[arg-type]
        while pos < nbytes:
            if self._left <= 0:
                self._rekey()
            k = min(nbytes - pos, self._PIECE, self._left)
            # update_into wants len(data) + 15 bytes of room: the two spare words give it
            written = self._enc.update_into(self._zeros[:k], view[pos : pos + k + 15])
            if written != k:  # never expected in CTR mode; never hand out unwritten bytes
                raise PrivacyError(f"AES-CTR keystream returned {written} of {k} bytes")
            pos, self._left = pos + k, self._left - k
        return buf[:n]


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
        self._scratch = np.empty(0, dtype=np.uint64)  # keystream words, reused block to block
        self._f32 = np.empty((2, 0), dtype=np.float32)  # _sum_of_four32's work arrays
        self._keep = np.empty(0, dtype=np.bool_)

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
        """``n`` N(0, 1) draws; secure: Marsaglia's polar method, and (z1 + z2 + z3 + z4) / 2."""
        if self.gen is not None:
            return torch.randn(n, generator=self.gen, dtype=torch.float64)
        out = np.empty(n, dtype=np.float64)
        for start in range(0, n, self._BLOCK):
            self._sum_of_four(out[start : start + self._BLOCK], 1.0)
        return torch.from_numpy(out)

    def _sum_of_four(self, out: NDArray[np.floating], std: float) -> None:
        """Fill ``out`` with ``std (z1 + z2 + z3 + z4) / 2``, the z's i.i.d. N(0, 1) by the polar
        method (Marsaglia & Bray 1964), in float64, rounded once to ``out``'s dtype.

        A point (u, v) uniform on the square [-1, 1)^2 (52 random bits each, from the keystream) is
        kept when ``0 < s = u^2 + v^2 < 1`` (probability pi / 4); then ``(u, v) sqrt(-2 ln s / s)``
        are two independent N(0, 1) (no sine or cosine, unlike Box-Muller), and a kept point adds
        ``(u + v) sqrt(-2 ln s / s)`` (its two normals) to the sum. Kept points are used in keystream
        order, so the rejections do not bias the output.
        """
        assert self.stream is not None
        pairs = 2 * len(out)
        parts: list[NDArray[np.float64]] = []
        got = 0
        while got < pairs:
            want = pairs - got
            m = int(want * (4 / math.pi) + 4 * math.sqrt(want) + 16)  # rarely short: loop then
            if self._scratch.size < 2 * m + 2:
                self._scratch = np.empty(2 * m + 2, dtype=np.uint64)
            w = self.stream.words(2 * m, self._scratch)
            w >>= np.uint64(12)  # 52 bits as the mantissa of a double in [2, 4)
            w |= np.uint64(0x4000000000000000)
            uv = w.view(np.float64)
            uv -= 3.0  # [-1, 1), exact
            u, v = uv[0::2], uv[1::2]
            s = u * u
            s += v * v
            keep = s < 1.0
            keep &= s > 0.0
            kept = np.flatnonzero(keep)  # then take: faster than compress or a boolean mask
            s, t = s.take(kept), (u + v).take(kept)
            factor = np.log(s)
            factor *= -2.0
            factor /= s
            t *= np.sqrt(factor, out=factor)
            parts.append(t)
            got += len(t)
        both = parts[0] if len(parts) == 1 else np.concatenate(parts)
        np.add(both[0:pairs:2], both[1:pairs:2], out=both[: pairs // 2])
        np.multiply(both[: pairs // 2], 0.5 * std, out=out, casting="same_kind")

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

    def _sum_of_four32(self, out: NDArray[np.float32], std: float) -> None:
        """``_sum_of_four`` in float32, for values that are float32 anyway (DP-SGD's gradients).

        One keystream word per polar try: 32-bit halves give (u, v), 23 random bits each ([-1, 1)
        as float32; u from the first half of the block's words, v from the second, so every pass
        is contiguous). Draws are bounded by about 7.8 (the smallest kept s is 2^-44), the sum of
        four by 15.6; float32 rounding changes probabilities by ~1e-7 relative. The defence is the
        same: four independent draws per value, so every float32 output value is reachable.

        Speed: ``(u + v) sqrt(-2 ln s / s)`` is computed for every try and the kept ones are then
        taken in one ``np.compress`` (the rejected ones' values, NaN or not, are discarded), and
        kept point ``j`` is paired with kept point ``j + len(out)``: one selection pass instead of
        three, and no strided passes. Which points are kept and how they are paired depends only
        on their positions, never on the values kept, so the kept points are i.i.d. as before.
        """
        assert self.stream is not None
        pairs = 2 * len(out)
        parts: list[NDArray[np.float32]] = []
        got = 0
        while got < pairs:
            want = pairs - got
            m = int(want * (4 / math.pi) + 4 * math.sqrt(want) + 16)
            if self._scratch.size < m + 2:
                self._scratch = np.empty(m + 2, dtype=np.uint64)
            if self._f32.shape[1] < m:  # s and a temporary; the kept mask (reused: no page faults)
                self._f32, self._keep = np.empty((2, m), dtype=np.float32), np.empty(m, dtype=np.bool_)
            w = self.stream.words(m, self._scratch).view(np.uint32)  # 2m halves
            w >>= np.uint32(9)  # 23 bits as the mantissa of a float in [2, 4)
            w |= np.uint32(0x40000000)
            uv = w.view(np.float32)
            uv -= np.float32(3.0)  # [-1, 1), exact
            u, v = uv[:m], uv[m : 2 * m]
            s, tmp, keep = self._f32[0, :m], self._f32[1, :m], self._keep[:m]
            np.multiply(u, u, out=s)
            s += np.multiply(v, v, out=tmp)
            np.less(s, 1.0, out=keep)
            keep &= s > 0.0
            with np.errstate(divide="ignore", invalid="ignore"):  # rejected tries: discarded below
                factor = np.log(s, out=tmp)
                factor *= np.float32(-2.0)
                factor /= s
                np.sqrt(factor, out=factor)
                u += v
                u *= factor
            t = np.compress(keep, u)
            parts.append(t)
            got += len(t)
        both = parts[0] if len(parts) == 1 else np.concatenate(parts)
        half = pairs // 2
        np.add(both[:half], both[half:pairs], out=out)
        out *= np.float32(0.5 * std)

    def noise_(self, out: torch.Tensor, std: float) -> torch.Tensor:
        """Fill ``out`` (any float dtype) with N(0, std^2), block by block: drawn in float32 for a
        float32 ``out`` (``_sum_of_four32``), else in float64."""
        flat = out.view(-1)
        if self.gen is None and flat.dtype in (torch.float32, torch.float64) and flat.is_contiguous():
            dest = flat.numpy()  # shares memory: each block is written in place
            fill = self._sum_of_four32 if dest.dtype == np.float32 else self._sum_of_four
            for start in range(0, len(dest), self._BLOCK):
                fill(dest[start : start + self._BLOCK], std)
            return out
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
        flat, counts = self.poisson_flat(n, q, steps)
        return list(torch.split(flat, counts))

    def poisson_flat(self, n: int, q: float, steps: int) -> tuple[torch.Tensor, list[int]]:
        """``poisson_batches`` concatenated: all the steps' indices in one tensor, and each step's
        count (so a caller can gather the rows of all the steps at once and split them)."""
        if q >= 1.0:
            return torch.arange(n).repeat(steps), [n] * steps
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
        return flat % n, counts
