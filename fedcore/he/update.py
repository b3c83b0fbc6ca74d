"""Encrypted model updates for add-only secure aggregation (TenSEAL; pure library, no Flower).

Sites call :func:`encrypt_update` (scale by weight, flatten, pack ``slots_per_ciphertext`` values
per ciphertext, encrypt), the coordinator calls :func:`sum_encrypted` with its
:class:`~fedcore.he.keys.PublicContext` (adds ciphertexts, one ciphertext index at a time,
so memory stays at the size of the inputs), and every site calls :func:`decrypt_mean`.

With the default BFV fixed-point parameters the encrypted sum is *exact*: each weighted value is
rounded to a multiple of ``2**-frac_bits`` (error <= ``2**-(frac_bits+1)``), so the decrypted mean
differs from the plaintext weighted mean by at most ``K * 2**-(frac_bits+1) / sum(weights)`` for K
sites. See ``README.md`` for parameters, sizes and the threat model.

The wire type, :class:`~fedcore.he.ciphertext.EncryptedUpdate`, is in ``ciphertext.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts
from numpy.typing import NDArray

from fedcore.aggregators.base import Arrays
from fedcore.errors import CiphertextError, KeyMismatchError, UpdateError
from fedcore.he.ciphertext import EncryptedUpdate
from fedcore.he.keys import PublicContext, SecretContext
from fedcore.he.params import Scheme

__all__ = [
    "RunningSum",
    "check_loadable",
    "decrypt_integers",
    "decrypt_mean",
    "encrypt_integers",
    "encrypt_update",
    "sum_encrypted",
]


def _flatten(arrays: Arrays, weight: float, limit: float) -> NDArray[np.float64]:
    if not math.isfinite(weight) or weight <= 0:
        raise UpdateError(f"weight must be a finite number > 0, got {weight}")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) * weight
    if not np.all(np.isfinite(flat)):
        raise UpdateError("update holds NaN or infinite values; refusing to encrypt it")
    peak = float(np.max(np.abs(flat), initial=0.0))
    if peak > limit:
        raise UpdateError(
            f"max |weight * value| is {peak:.6g}, over the key set's limit {limit:.6g} (a sum of "
            "max_sites updates would overflow); clip the update, or divide weights by a constant "
            "shared by all sites (e.g. the job's max examples per site)"
        )
    return flat


def _bfv_encrypt(ctx: ts.Context, ints: NDArray[np.int64]) -> bytes:
    """Encrypt a 1-D int64 chunk with TenSEAL's native BFVVector: the same encryption as
    ``ts.bfv_vector(ctx, list)``, without its Python detour (list -> numpy -> PlainTensor -> list),
    which took about a third of a site's encryption time at 1M parameters (he_round.json)."""
    return bytes(ts._ts_cpp.BFVVector(ctx.data, ints.tolist()).serialize())


def _encrypt_chunk(ctx: SecretContext, chunk: NDArray[np.float64]) -> bytes:
    if ctx.params.scheme is Scheme.BFV_FIXED_POINT:
        return _bfv_encrypt(ctx.tenseal, np.rint(chunk * 2.0**ctx.params.frac_bits).astype(np.int64))
    return bytes(ts.ckks_vector(ctx.tenseal, chunk.tolist()).serialize())


def encrypt_update(ctx: SecretContext, arrays: Arrays, *, weight: float) -> EncryptedUpdate:
    """Encrypt ``weight * arrays`` at a site.

    Parameters
    ----------
    ctx
        The site's secret context.
    arrays
        The update (e.g. ``local - global``), any shapes; not modified.
    weight
        This site's weight (> 0), e.g. examples used divided by a constant shared by all sites.
        ``|weight * value|`` must stay within ``ctx.params.max_abs_value``.
    """
    if not isinstance(ctx, SecretContext):
        raise KeyMismatchError(f"encrypting needs a site's SecretContext, got {type(ctx).__name__}")
    flat = _flatten(arrays, weight, ctx.params.max_abs_value)
    slots = ctx.params.slots_per_ciphertext
    cts = tuple(_encrypt_chunk(ctx, flat[i : i + slots]) for i in range(0, flat.size, slots))
    shapes = tuple(tuple(int(d) for d in np.shape(a)) for a in arrays)
    return EncryptedUpdate(ctx.keyset_id, ctx.params.scheme, shapes, float(weight), 1, slots, cts)


def _load_vector(ctx: ts.Context, scheme: Scheme, data: bytes, index: int) -> Any:
    try:
        if scheme is Scheme.BFV_FIXED_POINT:
            return ts.bfv_vector_from(ctx, data)
        return ts.ckks_vector_from(ctx, data)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CiphertextError(
            f"ciphertext {index} cannot be decoded with this key set's parameters: {err}"
        ) from err


def _check_compatible(keyset_id: str, max_sites: int, updates: Sequence[EncryptedUpdate]) -> None:
    if not updates:
        raise ValueError("sum_encrypted needs at least one update, got none")
    for u in updates:
        if u.keyset_id != keyset_id:
            raise KeyMismatchError(
                f"update encrypted under key set {u.keyset_id}, but this "
                f"coordinator holds key set {keyset_id}; redistribute keys"
            )
        if (u.shapes, u.slots, u.scheme) != (
            updates[0].shapes,
            updates[0].slots,
            updates[0].scheme,
        ):
            raise UpdateError(f"update shapes {u.shapes} differ from {updates[0].shapes}")
    total = sum(u.num_sites for u in updates)
    if total > max_sites:
        raise UpdateError(
            f"summing {total} site updates exceeds the key set's max_sites="
            f"{max_sites} headroom (the sum could wrap); create keys with more"
        )


def _load_checked(pub: PublicContext, update: EncryptedUpdate) -> list[Any]:
    vectors = []
    for i, data in enumerate(update.ciphertexts):
        vec = _load_vector(pub.tenseal, update.scheme, data, i)
        want = min(update.slots, update.num_values - i * update.slots)
        if vec.size() != want:
            raise CiphertextError(f"ciphertext {i} holds {vec.size()} values, its header says {want}")
        vectors.append(vec)
    return vectors


def check_loadable(pub: PublicContext, update: EncryptedUpdate) -> None:
    """Coordinator, before summing: every ciphertext loads with the key set's public context as a
    vector of the length the header promises (``CiphertextError`` otherwise), so one site's
    malformed bytes are rejected alone instead of failing the whole sum."""
    _load_checked(pub, update)


class RunningSum:
    """Coordinator: the encrypted sum of checked updates, one update at a time.

    :meth:`add` is :func:`check_loadable` and the addition in one pass: each ciphertext is loaded
    once (not once to check and again to sum), and an update that fails leaves the sum untouched.
    Memory: the sum and one update's vectors. :meth:`result` equals :func:`sum_encrypted` of the
    updates added.
    """

    def __init__(self, pub: PublicContext) -> None:
        self.pub = pub
        self._updates: list[EncryptedUpdate] = []
        self._acc: list[Any] = []

    def add(self, update: EncryptedUpdate) -> None:
        """Check ``update`` (``CiphertextError``, ``KeyMismatchError``, ``UpdateError``) and add it."""
        _check_compatible(self.pub.keyset_id, self.pub.params.max_sites, [*self._updates[:1], update])
        if sum(u.num_sites for u in self._updates) + update.num_sites > self.pub.params.max_sites:
            raise UpdateError(
                f"adding this update would sum more than the key set's max_sites="
                f"{self.pub.params.max_sites} updates (the sum could wrap); create keys with more"
            )
        vectors = _load_checked(self.pub, update)
        if not self._acc:
            self._acc = vectors
        else:
            for acc, vec in zip(self._acc, vectors, strict=True):
                acc += vec
        self._updates.append(update)

    def __len__(self) -> int:
        return len(self._updates)

    def result(self) -> EncryptedUpdate:
        """The sum so far (``ValueError`` when nothing was added)."""
        if not self._updates:
            raise ValueError("sum_encrypted needs at least one update, got none")
        first = self._updates[0]
        out = tuple(bytes(v.serialize()) for v in self._acc)
        weight = math.fsum(u.weight for u in self._updates)
        sites = sum(u.num_sites for u in self._updates)
        return EncryptedUpdate(first.keyset_id, first.scheme, first.shapes, weight, sites, first.slots, out)


def sum_encrypted(pub: PublicContext, updates: Sequence[EncryptedUpdate]) -> EncryptedUpdate:
    """Coordinator: add encrypted updates (and their plaintext weights) without decrypting."""
    _check_compatible(pub.keyset_id, pub.params.max_sites, updates)
    first = updates[0]
    out = []
    for i in range(first.num_ciphertexts):
        acc = _load_vector(pub.tenseal, first.scheme, first.ciphertexts[i], i)
        for u in updates[1:]:
            acc += _load_vector(pub.tenseal, first.scheme, u.ciphertexts[i], i)
        out.append(bytes(acc.serialize()))
    weight = math.fsum(u.weight for u in updates)
    sites = sum(u.num_sites for u in updates)
    return EncryptedUpdate(
        first.keyset_id, first.scheme, first.shapes, weight, sites, first.slots, tuple(out)
    )


def _decrypt_chunk(ctx: SecretContext, scheme: Scheme, data: bytes, index: int) -> Any:
    vec = _load_vector(ctx.tenseal, scheme, data, index)
    try:
        values = vec.decrypt()
    except ValueError as err:
        raise KeyMismatchError(f"cannot decrypt ciphertext {index}: {err}") from err
    if scheme is Scheme.BFV_FIXED_POINT:
        return np.asarray(values, dtype=np.int64) * 2.0**-ctx.params.frac_bits
    return np.asarray(values, dtype=np.float64)


def decrypt_mean(ctx: SecretContext, total: EncryptedUpdate) -> Arrays:
    """Site: decrypt an encrypted sum, divide by its total weight, restore the shapes."""
    if not isinstance(ctx, SecretContext):
        raise KeyMismatchError(
            f"decrypting needs a site's SecretContext (secret.ctx), got "
            f"{type(ctx).__name__}; the coordinator cannot decrypt by design"
        )
    if total.keyset_id != ctx.keyset_id:
        raise KeyMismatchError(
            f"sum encrypted under key set {total.keyset_id}, this site holds "
            f"key set {ctx.keyset_id}; use the federation's secret.ctx"
        )
    flat = np.empty(total.num_values, dtype=np.float64)
    for i, data in enumerate(total.ciphertexts):
        chunk = _decrypt_chunk(ctx, total.scheme, data, i)
        start = i * total.slots
        if chunk.size != min(total.slots, total.num_values - start):
            raise CiphertextError(
                f"ciphertext {i} holds {chunk.size} values, expected "
                f"{min(total.slots, total.num_values - start)}"
            )
        flat[start : start + chunk.size] = chunk
    flat /= total.weight
    out, start = [], 0
    for shape in total.shapes:
        size = math.prod(shape)
        arr = flat[start : start + size].reshape(shape).copy()
        arr.flags.writeable = False
        out.append(arr)
        start += size
    return tuple(out)


def encrypt_integers(ctx: SecretContext, values: Sequence[int] | NDArray[np.int64]) -> EncryptedUpdate:
    """Encrypt integers as they are (BFV; no fixed-point scaling): exact sums of counts and totals.

    Each ``|value|`` must stay within ``plain_modulus / 2 / max_sites`` so that no sum wraps.
    """
    if not isinstance(ctx, SecretContext):
        raise KeyMismatchError(f"encrypting needs a site's SecretContext, got {type(ctx).__name__}")
    if ctx.params.scheme is not Scheme.BFV_FIXED_POINT:
        raise KeyMismatchError("integer totals need a BFV key set; this federation's keys are CKKS")
    ints = np.asarray(values, dtype=np.int64).ravel()
    limit = (ctx.params.plain_modulus // 2) // ctx.params.max_sites
    peak = int(np.max(np.abs(ints), initial=0))
    if peak > limit:
        raise UpdateError(
            f"a total of {peak} exceeds the key set's limit {limit} per site (a sum of max_sites totals "
            "would wrap); create keys with a larger plain modulus or fewer max_sites"
        )
    slots = ctx.params.slots_per_ciphertext
    cts = tuple(_bfv_encrypt(ctx.tenseal, ints[i : i + slots]) for i in range(0, ints.size, slots))
    return EncryptedUpdate(ctx.keyset_id, ctx.params.scheme, ((int(ints.size),),), 1.0, 1, slots, cts)


def decrypt_integers(ctx: SecretContext, total: EncryptedUpdate) -> NDArray[np.int64]:
    """Site: decrypt a sum of ``encrypt_integers`` vectors."""
    if not isinstance(ctx, SecretContext) or total.keyset_id != ctx.keyset_id:
        raise KeyMismatchError(
            "decrypting needs this federation's SecretContext; the coordinator cannot decrypt"
        )
    if total.scheme is not Scheme.BFV_FIXED_POINT or len(total.shapes) != 1:
        raise CiphertextError("not an encrypted vector of integers")
    parts = []
    for i, data in enumerate(total.ciphertexts):
        try:
            parts.append(
                np.asarray(_load_vector(ctx.tenseal, total.scheme, data, i).decrypt(), dtype=np.int64)
            )
        except ValueError as err:
            raise KeyMismatchError(f"cannot decrypt ciphertext {i}: {err}") from err
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if out.size != total.num_values:
        raise CiphertextError(f"the sum holds {out.size} values, its header says {total.num_values}")
    return out
