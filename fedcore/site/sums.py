"""Which sum a site agrees to open: one sum per round (or statistics batch), confirmed by every site
in it, the same for every site that opens it.

The coordinator adds what it cannot read (HE ciphertexts, or masked inputs under secure
aggregation) and hands the sum to sites to open. It is the adversary: given the freedom, it would
hand site 1 the sum of all answers and site k the sum of all but one, and the differences are every
site's own answer. So a site opens only a sum that carries a :class:`SumClaim` (job, round, the
contributors, the digest of the sum's bytes) **confirmed by every contributor**, and each site
confirms at most one claim per job, kind and round (``PlanBook.confirm``, a row in its ledger). Two
different claims of one round then have no contributor in common: each site's answer can be opened
in exactly one sum, whoever opens it, and no difference of sums isolates it. A sum also has at least
the site's floor of contributors (``min_sites``).

How a contributor's confirmation is checked is the :class:`Attestor`'s business: under HE, an HMAC
only the federation's key holders can compute (``fedcore.he.markers.KeyHolderAttestor``); under
secure aggregation, each member's signature (its public key from the site's own member list).
What the claim cannot tell, whether the sum really holds one answer of each contributor, the opening
checks: the markers in an HE sum, the masks under secure aggregation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fedcore.errors import PolicyError

__all__ = [
    "Attestor",
    "SumClaim",
    "SumKind",
    "check_claim",
    "claim_for",
    "tags_from_wire",
    "tags_to_wire",
]

SumKind = Literal["train", "query"]


@dataclass(frozen=True)
class SumClaim:
    """The coordinator's statement of one sum: job, kind, round (statistics: 1), the contributors
    (sorted, distinct) and the SHA-256 of each summed object's bytes (training: one; statistics: one
    per statistic). A site confirms it, or opens the sums it names, on its own checks only."""

    job_id: str
    kind: SumKind
    round: int
    contributors: tuple[str, ...]
    digests: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.contributors)
        if list(names) != sorted(set(names)) or not all(isinstance(n, str) and n for n in names):
            raise PolicyError(
                f"a sum's contributors must be distinct names in sorted order, got {list(names)}"
            )
        if self.kind not in ("train", "query") or self.round < 1 or not self.digests:
            raise PolicyError(
                f"malformed sum claim ({self.kind!r}, round {self.round}, {len(self.digests)} sums)"
            )
        object.__setattr__(self, "contributors", names)
        object.__setattr__(self, "digests", tuple(str(d) for d in self.digests))

    def message(self) -> bytes:
        """The canonical bytes a confirmation tags."""
        body = [self.job_id, self.kind, self.round, list(self.contributors), list(self.digests)]
        return json.dumps(body, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`message`: what a site's ledger records as the claim it confirmed."""
        return hashlib.sha256(self.message()).hexdigest()

    def to_wire(self) -> str:
        return self.message().decode()

    @classmethod
    def from_wire(cls, text: str) -> SumClaim:
        """Parse :meth:`to_wire`'s text strictly (``PolicyError`` on anything else)."""
        try:
            job_id, kind, rnd, contributors, digests = json.loads(text)
            claim = cls(str(job_id), kind, int(rnd), tuple(contributors), tuple(digests))
        except (ValueError, TypeError) as err:
            raise PolicyError(f"malformed sum claim: {err}") from err
        if claim.to_wire() != text:
            raise PolicyError("malformed sum claim: not in canonical form")
        return claim


class Attestor(Protocol):
    """Makes and checks a site's confirmation of a message (see the module docstring)."""

    def tag(self, site: str, message: bytes) -> str: ...

    def verify(self, site: str, message: bytes, tag: str) -> bool: ...


def check_claim(
    claim: SumClaim, tags: Mapping[str, str], *, attestor: Attestor, floor: int, ceiling: int, who: str
) -> None:
    """Refuse (``PolicyError``, naming every reason) a claim with fewer than ``floor`` or more than
    ``ceiling`` contributors, or without a valid confirmation from each of them."""
    reasons = []
    n = len(claim.contributors)
    if not floor <= n <= ceiling:
        reasons.append(f"it holds {n} sites' answers; {who} opens only sums of {floor} to {ceiling} sites")
    missing = [s for s in claim.contributors if s not in tags]
    forged = [s for s in claim.contributors if s in tags and not attestor.verify(s, claim.message(), tags[s])]
    if missing:
        reasons.append(f"no confirmation from {', '.join(missing)}")
    if forged:
        reasons.append(f"invalid confirmation for {', '.join(forged)}")
    if reasons:
        raise PolicyError(
            f"{who} refuses to open the {claim.kind} sum of round {claim.round} of job {claim.job_id!r}: "
            + "; ".join(reasons)
        )


def tags_to_wire(tags: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":"))


def tags_from_wire(text: str) -> dict[str, str]:
    try:
        tags = json.loads(text)
    except ValueError as err:
        raise PolicyError(f"malformed sum confirmations: {err}") from err
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise PolicyError("malformed sum confirmations: not a map of site to tag")
    return tags


def claim_for(
    job_id: str, kind: SumKind, round: int, contributors: Sequence[str], digests: Sequence[str]
) -> SumClaim:
    """The claim of sums with ``digests`` over ``contributors`` (the coordinator's side)."""
    return SumClaim(job_id, kind, round, tuple(sorted(contributors)), tuple(digests))
