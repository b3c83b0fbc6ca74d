"""Which sums a site agrees to open (``fedcore.site.sums``): its floor and ceiling on a sum's
contributors, its one confirmation per job, kind and round, and the tags it confirms with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedcore.analytics.query import QueryRequest
from fedcore.config.job import JobRequest
from fedcore.errors import FedcoreError, PolicyError
from fedcore.he.markers import KeyHolderAttestor
from fedcore.he.site import SumCheck
from fedcore.site.records import ReleaseKind
from fedcore.site.sums import SumClaim

if TYPE_CHECKING:
    from fedcore.clients.runtime import SiteRuntime

__all__ = ["SiteSums"]


class SiteSums:
    """The sums side of one site's runtime (under HE: the federation's shared key makes the tags)."""

    def __init__(self, runtime: SiteRuntime) -> None:
        self.runtime = runtime
        self._attestor: tuple[str, KeyHolderAttestor] | None = None  # (key set id, its attestor)

    def attestor(self) -> KeyHolderAttestor:
        """The tags with which this site confirms a sum and checks the others' confirmations."""
        secret = self.runtime.he_secret()
        if self._attestor is None or self._attestor[0] != secret.keyset_id:
            self._attestor = (secret.keyset_id, KeyHolderAttestor(secret))
        return self._attestor[1]

    def check(self, request: JobRequest | QueryRequest) -> SumCheck:
        """What this site requires of a sum of ``request`` before it opens it (``fedcore.site.sums``):
        at least its floor of contributors (its own ``min_sites``, or the job's if higher), at most the
        sites the job was sent to, each confirmed."""
        job_floor = request.job.min_sites if isinstance(request, QueryRequest) else request.spec.min_sites
        floor = max(self.runtime.site.policy.min_sites, job_floor)
        return SumCheck(
            request.job_id, floor, request.num_sites, self.attestor(), f"site {self.runtime.name!r}"
        )

    def confirm(self, request: JobRequest | QueryRequest, claim: SumClaim, *, actor: str) -> str:
        """Confirm the one sum this site's answer of ``claim.round`` may be opened in, and return its
        tag; refused (and audited) when the claim is not for this job, does not name this site, has
        too few or too many contributors, or another claim of that round was confirmed before."""
        kind: ReleaseKind = "query" if isinstance(request, QueryRequest) else "train"
        check = self.check(request)
        sums = len(request.job.queries) if isinstance(request, QueryRequest) else 1
        problems = []
        if (claim.job_id, claim.kind, len(claim.digests)) != (request.job_id, kind, sums):
            problems.append(f"it is not a claim of this job's {kind} sums")
        if kind == "query" and claim.round != 1:
            problems.append("a statistics batch has one round of answers")
        if self.runtime.name not in claim.contributors:
            problems.append("it does not name this site among the contributors")
        if not check.floor <= len(claim.contributors) <= check.ceiling:
            problems.append(
                f"it holds {len(claim.contributors)} sites' answers; this site's answers go only into sums "
                f"of {check.floor} to {check.ceiling} sites"
            )
        try:
            if problems:
                raise PolicyError(
                    f"site {self.runtime.name!r} does not confirm the sum: " + "; ".join(problems)
                )
            new = self.runtime.guard.plans.confirm(
                request.job_id, digest=request.digest, kind=kind, round=claim.round, claim=claim.digest
            )
        except FedcoreError as err:
            self.runtime.guard.record(
                "refuse", request.job_id, f"sum confirmation refused: {err}", actor=actor
            )
            raise
        if new:
            text = (
                f"confirmed the {kind} sum of round {claim.round} over {len(claim.contributors)} sites "
                f"({', '.join(claim.contributors)}; claim {claim.digest[:16]}): its answer opens in no other"
            )
            self.runtime.guard.record("confirm", request.job_id, text, actor=actor)
        return self.attestor().tag(self.runtime.name, claim.message())
