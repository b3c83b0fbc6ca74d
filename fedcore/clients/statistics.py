"""A site's statistics: the coordinator's request parsed strictly, the site's plan for the batch,
its answers (charged once) and, under HE, its decryptions of the batch's one confirmed sum.

Every step is the site's (``SiteRuntime``: its policy, guard and keys); the analytics themselves are
in ``fedcore.analytics.site``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from fedcore.analytics.noisy import plan_secure
from fedcore.analytics.query import QueryRequest
from fedcore.analytics.site import StatisticsPlan, answer_statistics, decrypt_totals, plan_statistics
from fedcore.data import load_table
from fedcore.errors import ApprovalPendingError, FedcoreError, PolicyError
from fedcore.site.approval_gate import check_approval
from fedcore.site.sums import SumClaim

if TYPE_CHECKING:
    from fedcore.clients.runtime import SiteRuntime

__all__ = ["SiteStatistics"]


class SiteStatistics:
    """The statistics side of one site's runtime."""

    def __init__(self, runtime: SiteRuntime) -> None:
        self.runtime = runtime
        self._table: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def table(self) -> pd.DataFrame:
        """The site's whole typed table (statistics are over all its rows, not a training split)."""
        if self._table is None:
            self._table = load_table(self.runtime.site)
        return self._table

    def request(self, wire: str, *, actor: str = "coordinator") -> QueryRequest:
        """Parse a statistics request as strictly as a statistics file; a malformed one is audited."""
        try:
            return QueryRequest.from_wire(wire)
        except FedcoreError as err:
            self.runtime.guard.record(
                "refuse", "(unparsed)", f"malformed statistics request refused: {err}", actor=actor
            )
            raise

    def plan(self, request: QueryRequest) -> StatisticsPlan:
        """This site's plan for ``request`` (recomputed: it depends only on the request and the policy)."""
        if request.job.secagg:  # exact or noisy sums under secure aggregation
            plan = plan_secure(request, self.runtime.site)
        else:
            plan = plan_statistics(request, self.runtime.site)
        admitted = self.runtime.guard.plans.plan(request.job_id)
        if (
            admitted is not None
            and admitted.digest == request.digest
            and dict(admitted.summary) != plan.summary()
        ):
            raise PolicyError(
                f"site {self.runtime.name!r}: its policy changed since statistics {request.job_id!r} were "
                "admitted; the batch must be submitted again"
            )
        return plan

    def admit(self, request: QueryRequest, *, actor: str = "coordinator") -> StatisticsPlan:
        """Plan, check and reserve the batch (nothing charged yet); refusals are audited and raised."""
        try:
            plan = self.plan(request)
            if plan.he:
                self.runtime.check_he_capacity(request.num_sites)
            check_approval(self.runtime.guard, request, plan, actor=actor)
            text = plan.text(request.job.queries)
            self.runtime.guard.reserve(
                request.job_id, plan.digest, plan.events, plan.limits, plan.summary(), text, actor=actor
            )
        except ApprovalPendingError:  # not a refusal: audited once, as a request
            raise
        except FedcoreError as err:
            self.runtime.guard.record("refuse", request.job_id, f"statistics refused: {err}", actor=actor)
            raise
        return plan

    def answer(
        self, request: QueryRequest, *, actor: str = "coordinator"
    ) -> tuple[list[dict[str, object]], list[bytes]]:
        """Answer every statistic of an admitted batch, once (charged at this answer)."""
        plan = self.plan(request)
        if plan.secagg:
            text = "exact statistics are answered only masked, under secure aggregation; refused"
            self.runtime.guard.record("refuse", request.job_id, text, actor=actor)
            raise PolicyError(text)
        self.runtime.guard.release(request, "query", 1, actor=actor)
        secret = self.runtime.he_secret() if plan.he else None
        return answer_statistics(
            plan, request, self.runtime.site, self.table, source=self.runtime.source, secret=secret
        )

    def decrypt(
        self,
        request: QueryRequest,
        index: int,
        total: bytes,
        claim: SumClaim,
        tags: dict[str, str],
        *,
        actor: str = "coordinator",
    ) -> dict[str, object]:
        """Open the sum of statistic ``index``, at most once per statistic, when it is the batch's
        one confirmed sum (``fedcore.site.sums``); a refusal is audited."""
        self.plan(request)

        in_guard = False  # the guard audits its own refusals

        def authorize() -> None:
            nonlocal in_guard
            in_guard = True
            self.runtime.guard.release(request, "query", 2 + index, actor=actor)
            in_guard = False

        try:
            return decrypt_totals(
                request, index, self.runtime.site, total, claim, tags, secret=self.runtime.he_secret(),
                check=self.runtime.sums.check(request), authorize=authorize,
            )  # fmt: skip
        except FedcoreError as err:
            if not in_guard:
                text = f"decryption of statistic {index} refused: {err}"
                self.runtime.guard.record("refuse", request.job_id, text, actor=actor)
            raise
