"""What the coordinator accepts from a site: every train reply is checked before any of it is used.

A reply is rejected, never repaired (no casting, no clipping, no truncation), when

- it comes from a node that was not asked this round, or the node sent more than one reply (all of
  its replies are dropped: the coordinator cannot tell which one is the site's);
- its records are not exactly the ones a fedcore site sends (``arrays``, ``metrics``, ``site``);
- its metrics lack ``num-examples``, hold more than :data:`MAX_METRICS` keys or a value that is not
  one finite number, or ``num-examples`` is outside ``1 .. MAX_NUM_EXAMPLES``;
- plaintext: the arrays are not the model's tensors (names, count, ``float32``, shapes), a payload
  is larger than that tensor's own bytes (checked before numpy reads it), a value is NaN or inf,
  or the update's L2 norm exceeds the job's ``max_update_norm``;
- HE: the payload is larger than the key set's ciphertexts can be (checked before it is parsed),
  its header disagrees with the key set (id, scheme, slots, one site) or the model (shapes), its
  weight is not in ``(0, MAX_NUM_EXAMPLES]``, or a ciphertext does not load with the coordinator's
  public context as a vector of the expected length.

Each check raises ``UpdateError`` (``KeyMismatchError`` for a foreign key set) with one line that
names the site, what was found and what was expected; the strategy records it as the reason.
An evaluate reply is held to the same sender rules and to ``metrics`` and ``site`` records of
finite numbers (``check_scores``); a bad one leaves the site out of that round's scores.
"""

from __future__ import annotations

import functools
import io
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedcore.aggregators.base import Arrays
from fedcore.errors import FedcoreError, KeyMismatchError, UpdateError
from fedcore.flower.serde import HE_STYPE
from fedcore.he import EncryptedUpdate
from fedcore.he.keys import PublicContext
from fedcore.he.update import RunningSum, check_loadable

__all__ = [
    "MAX_METRICS",
    "MAX_NUM_EXAMPLES",
    "MAX_REASON_CHARS",
    "NPY_SLACK",
    "check_encrypted",
    "check_metrics",
    "check_plain",
    "check_records",
    "check_scores",
    "ciphertext_bound",
    "clean_reason",
    "duplicates",
    "shapes_of",
]

MAX_METRICS = 64  # a fedcore site sends about ten; a plug-in's public numbers fit well within
MAX_NUM_EXAMPLES = 2**31 - 1  # no site trains on more rows; above it a weight would swamp the mean
MAX_REASON_CHARS = 1000  # a site's error text is its own: one bounded line (paths and the fix fit)
NPY_SLACK = 64  # bytes a .npy header may differ by between numpy versions (headers pad to 64)
CIPHERTEXT_SLACK = 4096  # per ciphertext, over 2 polynomials x N x data primes x 8 bytes
HEADER_SLACK = 8192  # an encrypted update's JSON header, over 64 bytes per ciphertext and dimension
REPLY_RECORDS = frozenset({"arrays", "metrics", "site"})
_FLOAT32 = np.dtype(np.float32)


def clean_reason(text: str) -> str:
    """One line of at most :data:`MAX_REASON_CHARS` characters (a site's text may be anything)."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def duplicates(replies: Iterable[Message], node: Callable[[Message], int]) -> set[int]:
    """Nodes (``node(reply)``) with more than one reply."""
    counts = Counter(node(m) for m in replies)
    return {node for node, n in counts.items() if n > 1}


def check_records(msg: Message, site: str, extras: frozenset[str] = frozenset()) -> None:
    """Exactly the records a fedcore site sends with a train reply, each of its type (``extras``: the
    ``extra-<name>`` records of the job's algorithm, ``fedcore.flower.extras``)."""
    content = msg.content
    names, expected = set(content.keys()), REPLY_RECORDS | extras
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise UpdateError(
            f"site {site!r} sent records {clean_reason(str(sorted(names)))[:200]}: missing {missing}, "
            f"unexpected {clean_reason(str(extra))[:200]}; a train reply holds exactly {sorted(expected)}"
        )
    if not all(name in content.array_records for name in extras):
        raise UpdateError(f"site {site!r} sent an algorithm extra as the wrong record type")
    if "arrays" not in content.array_records or "metrics" not in content.metric_records:
        raise UpdateError(f"site {site!r} sent 'arrays' or 'metrics' as the wrong record type")
    if "site" not in content.config_records:
        raise UpdateError(f"site {site!r} sent 'site' as the wrong record type")


def _numbers(record: MetricRecord, site: str) -> dict[str, float]:
    """Every metric as one finite number, at most :data:`MAX_METRICS` of them."""
    if len(record) > MAX_METRICS:
        raise UpdateError(f"site {site!r} sent {len(record)} metrics, more than the {MAX_METRICS} allowed")
    metrics: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UpdateError(
                f"site {site!r} sent metric {clean_reason(key)[:64]!r} = {clean_reason(repr(value))[:64]}, "
                "expected one finite number"
            )
        metrics[key] = float(value)
    return metrics


def check_metrics(record: MetricRecord, site: str) -> tuple[dict[str, float], int]:
    """The site's training metrics (finite numbers) and its weight ``num-examples``."""
    if "num-examples" not in record:
        raise UpdateError(f"site {site!r} sent no 'num-examples' metric (the update's weight)")
    metrics = _numbers(record, site)
    weight = metrics.pop("num-examples")
    if not 1 <= round(weight) <= MAX_NUM_EXAMPLES:
        raise UpdateError(
            f"site {site!r} sent num-examples {weight:.6g}, expected 1 .. {MAX_NUM_EXAMPLES} (its weight)"
        )
    return metrics, round(weight)


def check_scores(msg: Message, site: str) -> dict[str, float]:
    """An evaluate reply's scores: records ``metrics`` and ``site`` only, every score one finite number."""
    names = set(msg.content.keys())
    if names != {"metrics", "site"} or "metrics" not in msg.content.metric_records:
        raise UpdateError(
            f"site {site!r} sent records {clean_reason(str(sorted(names)))[:120]}; an evaluate reply holds "
            "a MetricRecord 'metrics' and a ConfigRecord 'site'"
        )
    return _numbers(msg.content.metric_records["metrics"], site)


@functools.lru_cache(maxsize=256)
def _npy_bytes(shape: tuple[int, ...]) -> int:
    """Bytes of a float32 array of ``shape`` as Flower sends it (a .npy file, header included)."""
    head = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(_FLOAT32), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(head, header)
    return head.tell() + _FLOAT32.itemsize * math.prod(shape)


def _plain_array(arr: Array, key: str, shape: tuple[int, ...], site: str) -> np.ndarray:
    if arr.stype != "numpy.ndarray" or arr.dtype != "float32" or tuple(arr.shape) != shape:
        raise UpdateError(
            f"site {site!r} sent tensor {key} as {arr.stype} {arr.dtype} {tuple(arr.shape)}, expected "
            f"numpy.ndarray float32 {shape}"
        )
    limit = _npy_bytes(shape) + NPY_SLACK
    if len(arr.data) > limit:
        raise UpdateError(
            f"site {site!r} sent {len(arr.data)} bytes for tensor {key} of shape {shape}, more than its "
            f"{limit} (oversized payload)"
        )
    try:
        value = arr.numpy()
    except (ValueError, TypeError, OSError, EOFError) as err:
        raise UpdateError(f"site {site!r} sent tensor {key} that numpy cannot read: {err}") from err
    if value.dtype != _FLOAT32 or value.shape != shape:
        raise UpdateError(
            f"site {site!r} sent tensor {key} holding {value.dtype} {value.shape} (its label says float32 "
            f"{shape})"
        )
    return value


def check_plain(
    record: ArrayRecord, shapes: Sequence[tuple[int, ...]], site: str, *, max_norm: float | None
) -> Arrays:
    """The update, when it is the model's tensors, finite, and within the job's norm bound."""
    expected = [str(i) for i in range(len(shapes))]
    if list(record.keys()) != expected:
        raise UpdateError(
            f"site {site!r} sent tensors {clean_reason(str(list(record.keys())))}, expected {expected}"
        )
    delta = tuple(
        _plain_array(record[k], k, s, site).astype(np.float64) for k, s in zip(expected, shapes, strict=True)
    )
    if not all(np.all(np.isfinite(d)) for d in delta):
        raise UpdateError(f"site {site!r} sent a non-finite update (NaN or inf)")
    norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta)))
    if max_norm is not None and norm > max_norm:
        raise UpdateError(f"site {site!r} sent an update of L2 norm {norm:.4g} > bound {max_norm}")
    return delta


def ciphertext_bound(pub: PublicContext) -> int:
    """Largest serialized ciphertext of the key set: 2 polynomials of N coefficients per data prime,
    8 bytes each, plus :data:`CIPHERTEXT_SLACK` (measured: 56 KB of 64 KB at the default N=4096,
    [48, 48]; 235 KB of 256 KB for CKKS N=8192, [60, 40, 40])."""
    p = pub.params
    return 2 * p.poly_modulus_degree * (len(p.coeff_mod_bit_sizes) - 1) * 8 + CIPHERTEXT_SLACK


def check_encrypted(
    record: ArrayRecord,
    pub: PublicContext,
    shapes: Sequence[tuple[int, ...]],
    site: str,
    *,
    into: RunningSum | None = None,
) -> EncryptedUpdate:
    """The encrypted update, when its size, header and ciphertexts fit the key set and the model.
    With ``into``, the ciphertexts are checked by adding them to that sum (each loaded once)."""
    arr = record.get("he", None)
    if list(record.keys()) != ["he"] or arr is None or arr.stype != HE_STYPE or arr.dtype != "bytes":
        raise UpdateError(
            f"site {site!r} sent arrays {clean_reason(str(list(record.keys())))[:120]} but an HE job's "
            f"reply holds one ciphertext blob 'he' (stype {HE_STYPE})"
        )
    values = sum(math.prod(s) for s in shapes)
    count = math.ceil(values / pub.params.slots_per_ciphertext)
    per_ct = ciphertext_bound(pub)
    limit = count * (per_ct + 64) + 64 * sum(len(s) for s in shapes) + HEADER_SLACK
    if len(arr.data) > limit:
        raise UpdateError(
            f"site {site!r} sent {len(arr.data)} bytes of ciphertext, more than the {limit} that {count} "
            f"ciphertexts of key set {pub.keyset_id} can take (oversized payload)"
        )
    try:
        update = EncryptedUpdate.from_bytes(bytes(arr.data))
    except FedcoreError as err:
        raise UpdateError(f"site {site!r} sent a malformed encrypted update: {err}") from err
    if update.keyset_id != pub.keyset_id:
        raise KeyMismatchError(
            f"site {site!r} encrypted with key set {clean_reason(update.keyset_id)[:80]}, the coordinator "
            f"holds {pub.keyset_id}; give every site the secret.ctx of one key ceremony"
        )
    _check_header(update, pub, shapes, site, per_ct)
    try:
        check_loadable(pub, update) if into is None else into.add(update)
    except FedcoreError as err:
        raise UpdateError(f"site {site!r} sent a ciphertext the key set cannot use: {err}") from err
    return update


def _check_header(
    update: EncryptedUpdate, pub: PublicContext, shapes: Sequence[tuple[int, ...]], site: str, per_ct: int
) -> None:
    p = pub.params
    found = (update.scheme, update.slots, update.num_sites, [tuple(s) for s in update.shapes])
    wanted = (p.scheme, p.slots_per_ciphertext, 1, [tuple(s) for s in shapes])
    if found != wanted:
        raise UpdateError(
            f"site {site!r} sent an encrypted update of (scheme, slots, sites, shapes) "
            f"{clean_reason(str(found))[:200]}, expected {wanted}"
        )
    if not (math.isfinite(update.weight) and 0 < update.weight <= MAX_NUM_EXAMPLES):
        raise UpdateError(
            f"site {site!r} sent weight {update.weight:.6g}, expected 0 < weight <= {MAX_NUM_EXAMPLES}"
        )
    big = max((len(c) for c in update.ciphertexts), default=0)
    if big > per_ct:
        raise UpdateError(f"site {site!r} sent a ciphertext of {big} bytes, over the key set's {per_ct}")


def shapes_of(record: ArrayRecord) -> list[tuple[int, ...]]:
    """The model's tensor shapes from a plaintext model record, or from an encrypted sum's header."""
    he = record.get("he", None)
    if he is not None and he.stype == HE_STYPE:
        return [tuple(s) for s in EncryptedUpdate.from_bytes(bytes(he.data)).shapes]
    return [tuple(int(d) for d in a.shape) for a in record.values()]
