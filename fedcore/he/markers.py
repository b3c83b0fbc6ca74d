"""What only the federation's key holders can compute: the markers that make an encrypted sum
countable, and the tags with which the sites that contributed to a sum confirm it.

A **marker** is a pseudo-random integer per (purpose, job, round or statistic, site), keyed by the
federation's secret key. Each site encrypts its marker with its values (the update's trailer), so
the decrypted trailer of a sum over sites ``T`` must equal the sum of ``T``'s markers: a sum that
holds a site twice, misses one, or holds an update the coordinator encrypted itself does not match
(it cannot compute markers). A **tag** is an HMAC under a key derived from the same secret: the
:class:`~fedcore.site.sums.Attestor` of HE sums, with which each contributor confirms the one sum it
agreed to (``fedcore.site.sums``). Both rest on the coordinator not holding the secret key; a site
colluding with it could compute both (the threat model's stated limit of one shared key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Literal

from fedcore.he.keys import SecretContext

__all__ = ["MARKER_BITS", "KeyHolderAttestor", "MarkerPurpose", "marker", "marker_sum"]

MARKER_BITS = 28
"""At most: the markers of up to ``max_sites`` sites must add up within the plain modulus."""

MarkerPurpose = Literal["statistics", "train"]
_KEYS = {"statistics": "statistics-marker", "train": "training-marker"}


def marker(secret: SecretContext, purpose: MarkerPurpose, job_id: str, index: int, site: str) -> int:
    """Site ``site``'s marker for statistic (or training round) ``index`` of job ``job_id``."""
    key = secret.derived_key(_KEYS[purpose])
    digest = hmac.new(key, f"{job_id}/{index}/{site}".encode(), hashlib.sha256).digest()
    per_site = (secret.params.plain_modulus // 2) // secret.params.max_sites  # compared exactly: the
    bits = min(MARKER_BITS, per_site.bit_length() - 1)  # site's whole share of the modulus, no headroom
    return int.from_bytes(digest[:8], "big") >> (64 - bits)


def marker_sum(
    secret: SecretContext, purpose: MarkerPurpose, job_id: str, index: int, sites: Sequence[str]
) -> int:
    """What the trailer of a sum holding exactly one answer of each of ``sites`` decrypts to."""
    return sum(marker(secret, purpose, job_id, index, s) for s in sites)


class KeyHolderAttestor:
    """Tags only the federation's key holders can make and check (HMAC-SHA256 under a key derived
    from the secret key), naming the site that made each: the sites' confirmations of HE sums."""

    def __init__(self, secret: SecretContext) -> None:
        self._key = secret.derived_key("sum-confirmation")

    def tag(self, site: str, message: bytes) -> str:
        return hmac.new(self._key, site.encode() + b"\x00" + message, hashlib.sha256).hexdigest()

    def verify(self, site: str, message: bytes, tag: str) -> bool:
        return hmac.compare_digest(self.tag(site, message), str(tag))
