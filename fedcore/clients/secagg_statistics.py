"""A site's side of statistics under secure aggregation, exact or noisy: one SecAgg+ round per batch.

The batch (``[job] secagg = true``) was admitted as any statistics batch (its plan:
``fedcore.analytics.noisy.plan_secure``: exact, or with distributed noise and charged). Then one
round, numbered 1, of the protocol
(``fedcore.secagg.client``) against the site's own ``[secagg]`` (members, thresholds, identity):
``start`` checks the round request names this batch (``JOB_ID/ATTEMPT``), the exact layout's length
and modulus (for a noisy batch a site that trusts the threshold also checks the round keeps the
honest sites its plan counted); ``answer`` computes the integer answer once, noise included (the
guard's once-only answer, where a noisy batch is charged: a re-asked batch is refused, so no
second masked copy of the same counts exists) and returns it masked;
``sign`` signs one survivor set for the batch, ever (its one confirmed claim, kind ``"query"``), of
at least its ``min_sites`` floor (and the job's and its threshold); ``reveal`` gives the shares.
Every refusal is audited.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fedcore.analytics.exact import MODULUS_BITS, width
from fedcore.analytics.noisy import secure_answer, secure_point
from fedcore.analytics.query import QueryRequest
from fedcore.analytics.rows import group_labels
from fedcore.errors import FedcoreError, SecAggError
from fedcore.secagg import client
from fedcore.secagg.messages import (
    KeyAdvertisement,
    KeyList,
    MaskedInput,
    RoundRequest,
    ShareBundle,
    ShareDelivery,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.policy import round_params
from fedcore.site.sums import claim_for

if TYPE_CHECKING:
    from fedcore.clients.runtime import SiteRuntime

__all__ = ["SecAggStatistics", "exact_length"]

T = TypeVar("T")
_ATTEMPT = re.compile(r"[0-9a-f]{8,32}")


def exact_length(request: QueryRequest, site: SiteRuntime) -> int:
    """Integers in a site's answer to ``request`` (public: the queries and the schema)."""
    return sum(width(q, site.site) * len(group_labels(q, site.site)) for q in request.job.queries)


class SecAggStatistics:
    """Exact statistics under secure aggregation at one site (see the module docstring)."""

    def __init__(self, runtime: SiteRuntime) -> None:
        from fedcore.clients.secagg_site import secagg_site

        self.runtime, self.sa = runtime, secagg_site(runtime)

    def _audited(self, request: QueryRequest, step: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FedcoreError as err:
            text = f"exact statistics under secure aggregation, {step}: {err}"
            self.runtime.guard.record("refuse", request.job_id, text, actor="coordinator")
            raise

    def _mine(self, request: QueryRequest, session: str, round_: int) -> client.ClientState:
        if session.rpartition("/")[0] != request.job_id or round_ != 1:
            raise SecAggError(f"{session!r} round {round_} is not the round of batch {request.job_id!r}")
        return self.sa.load_state(session, round_)

    def start(self, request: QueryRequest, rr: RoundRequest) -> KeyAdvertisement:
        def run() -> KeyAdvertisement:
            prefix, _, attempt = rr.job_id.rpartition("/")
            length, problems = exact_length(request, self.runtime), []
            if prefix != request.job_id or not _ATTEMPT.fullmatch(attempt):
                problems.append(f"round id {rr.job_id!r} is not this batch's ({request.job_id}/ATTEMPT)")
            if rr.round != 1:
                problems.append(f"round {rr.round}: a batch has one round (1)")
            if (rr.modulus_bits, rr.length) != (MODULUS_BITS, length):
                problems.append(f"modulus {rr.modulus_bits} bits / length {rr.length}: the batch's are "
                                f"{MODULUS_BITS} / {length}")  # fmt: skip
            if len(rr.participants) > request.num_sites:
                problems.append(f"{len(rr.participants)} participants, the batch went to {request.num_sites}")
            if problems:
                raise SecAggError("round refused: " + "; ".join(problems))
            params = round_params(self.sa.policy, self.sa.name, rr)
            self.sa.check_honest(params, request.num_sites, noisy=request.job.noisy, where="round refused")
            path_state = None
            with contextlib.suppress(SecAggError):  # not started before: the usual case
                path_state = self.sa.load_state(rr.job_id, rr.round)
            state, ad = client.start_round(self.sa.policy, self.sa.identity, rr, existing=path_state)
            self.sa.save_state(state)
            return ad

        return self._audited(request, "start", run)

    def share(self, request: QueryRequest, key_list: KeyList) -> ShareBundle:
        def run() -> ShareBundle:
            state = self._mine(request, key_list.job_id, key_list.round)
            new, bundle = client.share_keys(self.sa.policy, self.sa.identity, state, key_list)
            self.sa.save_state(new)
            return bundle

        return self._audited(request, "shares", run)

    def answer(self, request: QueryRequest, delivery: ShareDelivery) -> MaskedInput:
        """The batch's answer (exact, or with this site's noise), masked: computed once (the guard's
        once-only answer, which charges a noisy batch)."""

        def run() -> MaskedInput:
            state = self._mine(request, delivery.job_id, delivery.round)
            if state.stage != "shared" or delivery.receiver != self.sa.name:
                raise SecAggError(f"a share delivery at step {state.stage!r} for {delivery.receiver!r}")
            stats = self.runtime.statistics
            stats.plan(request)
            self.runtime.guard.release(request, "query", 1, actor="coordinator")
            ints = secure_answer(request, self.runtime.site, stats.table, source=self.runtime.source)
            words = secure_point(request).to_words(ints, max_sites=request.num_sites)
            new, masked = client.mask_input(state, delivery, words)
            self.sa.save_state(new)
            return masked

        return self._audited(request, "masked answer", run)

    def sign(self, request: QueryRequest, sreq: SurvivorRequest) -> SurvivorSignature:
        def run() -> SurvivorSignature:
            state = self._mine(request, sreq.job_id, sreq.round)
            floor = max(request.job.min_sites, self.sa.policy.threshold, self.sa.min_sites)
            if len(sreq.survivors) < floor:
                raise SecAggError(f"{len(sreq.survivors)} survivors; this site opens sums of >= {floor}")
            claim = claim_for(request.job_id, "query", 1, sreq.survivors, ["secagg"])
            self.runtime.guard.plans.confirm(
                request.job_id, digest=request.digest, kind="query", round=1, claim=claim.digest
            )  # its one survivor set of the batch, ever (refused if another)
            new, sig = client.sign_survivors(self.sa.identity, state, sreq)
            self.sa.save_state(new)
            return sig

        return self._audited(request, "survivor set", run)

    def reveal(self, request: QueryRequest, ureq: UnmaskRequest) -> UnmaskReply:
        def run() -> UnmaskReply:
            state = self._mine(request, ureq.job_id, ureq.round)
            new, reply = client.reveal_shares(self.sa.policy, state, ureq)
            self.sa.save_state(new)
            return reply

        return self._audited(request, "unmask", run)
