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
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
from numpy.typing import NDArray

from fedcore.aggregators.base import Arrays
from fedcore.errors import CiphertextError, KeyMismatchError, UpdateError
from fedcore.he.ciphertext import EncryptedUpdate
from fedcore.he.keys import PublicContext, SecretContext
from fedcore.he.params import HEParams, Scheme

__all__ = [
    "INTEGRITY_BITS",
    "OpenedSum",
    "RunningSum",
    "check_loadable",
    "decrypt_integers",
    "decrypt_mean",
    "decrypt_slots",
    "encrypt_integers",
    "encrypt_update",
    "open_sum",
    "site_int_limit",
    "site_limit",
    "sum_encrypted",
]


INTEGRITY_BITS = 4
"""Headroom between what one honest site encrypts and what the key set sums without wrapping: a
site encrypts values within ``1 / 2**INTEGRITY_BITS`` of its share of the plain modulus
(:func:`site_limit`), so a decrypted sum of ``k`` updates lies within ``k`` times that, and one
beyond it (a site's out-of-range values, or a sum that wrapped around the modulus) is refused."""


def site_limit(params: HEParams) -> float:
    """The largest ``|weight * value|`` (and weight) one honest site encrypts."""
    return params.max_abs_value / 2.0**INTEGRITY_BITS


def site_int_limit(params: HEParams) -> int:
    """The largest ``|integer|`` one honest site encrypts with :func:`encrypt_integers`."""
    return ((params.plain_modulus // 2) // params.max_sites) >> INTEGRITY_BITS


def _flatten(arrays: Arrays, weight: float, limit: float) -> NDArray[np.float64]:
    """The weighted, flattened update; errors name no value of it (they may travel to the
    coordinator, and the update may be DP-noised private data)."""
    if not math.isfinite(weight) or weight <= 0:
        raise UpdateError(f"weight must be a finite number > 0, got {weight}")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) * weight
    if not np.all(np.isfinite(flat)):
        raise UpdateError("update holds NaN or infinite values; refusing to encrypt it")
    if float(np.max(np.abs(flat), initial=0.0)) > limit:
        raise UpdateError(
            f"|weight * value| exceeds the key set's limit {limit:.6g} per site (a sum of max_sites "
            "updates would overflow, or be refused as out of range); clip the update, or divide weights "
            "by a constant shared by all sites ([privacy.he] weight_scale)"
        )
    return flat


def _bfv_encrypt(ctx: ts.Context, ints: NDArray[np.int64]) -> bytes:
    """Encrypt a 1-D int64 chunk with TenSEAL's native BFVVector: the same encryption as
    ``ts.bfv_vector(ctx, list)``, without its Python detour (list -> numpy -> PlainTensor -> list),
    which took about a third of a site's encryption time at 1M parameters (he_round.json)."""
    return bytes(ts._ts_cpp.BFVVector(ctx.data, ints.tolist()).serialize())


def _encrypt_slots(ctx: SecretContext, slots_: NDArray[np.int64] | NDArray[np.float64]) -> tuple[bytes, ...]:
    """Encrypt encoded slots (BFV: integers; CKKS: floats), ``slots_per_ciphertext`` per ciphertext."""
    n = ctx.params.slots_per_ciphertext
    if ctx.params.scheme is Scheme.BFV_FIXED_POINT:
        ints = slots_.astype(np.int64, copy=False)
        return tuple(_bfv_encrypt(ctx.tenseal, ints[i : i + n]) for i in range(0, ints.size, n))
    return tuple(
        bytes(ts.ckks_vector(ctx.tenseal, slots_[i : i + n].tolist()).serialize())
        for i in range(0, slots_.size, n)
    )


def encrypt_update(
    ctx: SecretContext, arrays: Arrays, *, weight: float, marker: int | None = None
) -> EncryptedUpdate:
    """Encrypt ``weight * arrays`` at a site.

    Parameters
    ----------
    ctx
        The site's secret context.
    arrays
        The update (e.g. ``local - global``), any shapes; not modified.
    weight
        This site's weight (> 0), e.g. examples used divided by a constant shared by all sites,
        within the key set's ``max_abs_value``; every ``|weight * value|`` within :func:`site_limit`.
    marker
        The site's marker for this sum (``fedcore.he.markers``): with one, the weight and the
        marker are encrypted after the values (``trailer`` 2), so that a decrypting site reads the
        total weight and the markers' sum from the sum itself, not from its header.
    """
    if not isinstance(ctx, SecretContext):
        raise KeyMismatchError(f"encrypting needs a site's SecretContext, got {type(ctx).__name__}")
    flat = _flatten(arrays, weight, site_limit(ctx.params))
    if weight > ctx.params.max_abs_value:
        raise UpdateError(
            f"weight {weight:g} is over the key set's limit {ctx.params.max_abs_value:.6g} per site; raise "
            "[privacy.he] weight_scale (weights are examples / weight_scale)"
        )
    trailer = () if marker is None else (weight, marker)
    if ctx.params.scheme is Scheme.BFV_FIXED_POINT:
        scale = 2.0**ctx.params.frac_bits
        tail = [] if marker is None else [round(weight * scale), int(marker)]
        encoded: NDArray[np.int64] | NDArray[np.float64] = np.concatenate(
            [np.rint(flat * scale).astype(np.int64), np.asarray(tail, dtype=np.int64)]
        )
    else:
        encoded = np.concatenate([flat, np.asarray(trailer, dtype=np.float64)])
    shapes = tuple(tuple(int(d) for d in np.shape(a)) for a in arrays)
    cts = _encrypt_slots(ctx, encoded)
    slots = ctx.params.slots_per_ciphertext
    return EncryptedUpdate(
        ctx.keyset_id, ctx.params.scheme, shapes, float(weight), 1, slots, cts, len(trailer)
    )


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
        if (u.shapes, u.slots, u.scheme, u.trailer) != (
            updates[0].shapes,
            updates[0].slots,
            updates[0].scheme,
            updates[0].trailer,
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
        want = min(update.slots, update.num_slots - i * update.slots)
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
        return EncryptedUpdate(
            first.keyset_id, first.scheme, first.shapes, weight, sites, first.slots, out, first.trailer
        )


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
        first.keyset_id, first.scheme, first.shapes, weight, sites, first.slots, tuple(out), first.trailer
    )


def _check_decryptable(ctx: SecretContext, total: EncryptedUpdate) -> None:
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


def decrypt_slots(ctx: SecretContext, total: EncryptedUpdate) -> NDArray[np.float64]:
    """Site: every slot of ``total`` (values, then trailer) as decoded by the scheme: BFV's centred
    integers (exact in float64 up to 2**53), CKKS's approximate reals."""
    _check_decryptable(ctx, total)
    parts = []
    for i, data in enumerate(total.ciphertexts):
        vec = _load_vector(ctx.tenseal, total.scheme, data, i)
        try:
            parts.append(np.asarray(vec.decrypt(), dtype=np.float64))
        except ValueError as err:
            raise KeyMismatchError(f"cannot decrypt ciphertext {i}: {err}") from err
    out = np.concatenate(parts) if parts else np.zeros(0)
    if out.size != total.num_slots:
        raise CiphertextError(f"the sum holds {out.size} values, its header says {total.num_slots}")
    return out


def _shaped(flat: NDArray[np.float64], shapes: Sequence[tuple[int, ...]]) -> Arrays:
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        arr = flat[start : start + size].reshape(shape).copy()
        arr.flags.writeable = False
        out.append(arr)
        start += size
    return tuple(out)


def decrypt_mean(ctx: SecretContext, total: EncryptedUpdate) -> Arrays:
    """Decrypt an encrypted sum and divide by the total weight its header states (the cost
    calibration and tests; a site decrypting the federation's sums uses :func:`open_sum`)."""
    flat = decrypt_slots(ctx, total)[: total.num_values]
    if total.scheme is Scheme.BFV_FIXED_POINT:
        flat = flat * 2.0**-ctx.params.frac_bits
    return _shaped(flat / total.weight, total.shapes)


@dataclass(frozen=True)
class OpenedSum:
    """A decrypted sum of training updates: the mean, and the trailer's total weight and markers."""

    mean: Arrays
    weight: float
    marker: int


def open_sum(ctx: SecretContext, total: EncryptedUpdate, *, contributors: int) -> OpenedSum:
    """Site: decrypt a sum of ``contributors`` updates encrypted with a marker, and refuse
    (``UpdateError``) one whose values or weight lie outside what that many honest sites encrypt
    (:func:`site_limit` each): a site's out-of-range values, or a sum that wrapped around."""
    if total.trailer != 2:
        raise CiphertextError("not a sum of marked training updates (its trailer is not weight, marker)")
    slots = decrypt_slots(ctx, total)
    bfv = total.scheme is Scheme.BFV_FIXED_POINT
    scale = 2.0**-ctx.params.frac_bits if bfv else 1.0
    values, weight = slots[: total.num_values] * scale, float(slots[total.num_values]) * scale
    slack = 1.0 if bfv else 1.0 + 1e-6  # CKKS decrypts approximately
    bound, heaviest = contributors * site_limit(ctx.params) * slack, contributors * ctx.params.max_abs_value
    if not 0 < weight <= heaviest * slack or float(np.max(np.abs(values), initial=0.0)) > bound:
        raise UpdateError(
            f"the decrypted sum is out of range: {contributors} sites encrypt values within "
            f"{site_limit(ctx.params):.6g} and weights within {ctx.params.max_abs_value:.6g} each, and this "
            f"sum holds a value beyond {bound:.6g} or a weight outside (0, {heaviest:.6g}] (a site sent "
            "out-of-range values, or the sum wrapped around the key's modulus); it is not used"
        )
    marker = round(float(slots[total.num_values + 1]))
    return OpenedSum(_shaped(values / weight, total.shapes), weight, marker)


def encrypt_integers(
    ctx: SecretContext, values: Sequence[int] | NDArray[np.int64], *, marker: int | None = None
) -> EncryptedUpdate:
    """Encrypt integers as they are (BFV; no fixed-point scaling): exact sums of counts and totals.

    Each ``|value|`` must stay within :func:`site_int_limit`; ``marker`` (see ``fedcore.he.markers``)
    is encrypted after them (``trailer`` 1).
    """
    if not isinstance(ctx, SecretContext):
        raise KeyMismatchError(f"encrypting needs a site's SecretContext, got {type(ctx).__name__}")
    if ctx.params.scheme is not Scheme.BFV_FIXED_POINT:
        raise KeyMismatchError("integer totals need a BFV key set; this federation's keys are CKKS")
    ints = np.asarray(values, dtype=np.int64).ravel()
    limit = site_int_limit(ctx.params)
    if int(np.max(np.abs(ints), initial=0)) > limit:
        raise UpdateError(
            f"a total exceeds the key set's limit {limit} per site (a sum of max_sites totals could wrap, "
            "or be refused as out of range); create keys with a larger plain modulus or fewer max_sites"
        )
    tail = np.asarray([] if marker is None else [marker], dtype=np.int64)
    cts = _encrypt_slots(ctx, np.concatenate([ints, tail]))
    slots = ctx.params.slots_per_ciphertext
    return EncryptedUpdate(
        ctx.keyset_id, ctx.params.scheme, ((int(ints.size),),), 1.0, 1, slots, cts, int(tail.size)
    )


def decrypt_integers(
    ctx: SecretContext, total: EncryptedUpdate, *, contributors: int | None = None
) -> NDArray[np.int64]:
    """Site: decrypt a sum of ``encrypt_integers`` vectors, trailer included. With
    ``contributors``, a value beyond what that many honest sites encrypt is refused (``UpdateError``)."""
    if total.scheme is not Scheme.BFV_FIXED_POINT or len(total.shapes) != 1:
        raise CiphertextError("not an encrypted vector of integers")
    out = decrypt_slots(ctx, total).astype(np.int64)
    if contributors is not None:
        bound = contributors * site_int_limit(ctx.params)
        if int(np.max(np.abs(out[: total.num_values]), initial=0)) > bound:
            raise UpdateError(
                f"the decrypted sum is out of range: {contributors} sites encrypt integers within "
                f"{site_int_limit(ctx.params)} each, and this sum holds one beyond {bound} (a site sent "
                "out-of-range values, or the sum wrapped around the key's modulus); it is not used"
            )
    return out
