"""The site runtime: what a site node does for each request, independent of the transport.

The Flower ClientApp (``fedcore/flower/client_app.py``) only translates messages to these calls.
The coordinator's request is re-validated here (``JobRequest.from_wire``), turned into the site's
own plan (``fedcore.site.plan``), and every answer passes the guard (``fedcore.site.guard``)
before any work: admitted, inside the plan, charged at the first release, audited. A site's DP
randomness always comes from its CSPRNG; nothing the coordinator sends can seed it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from fedcore.aggregators.base import Arrays
from fedcore.clients.evaluation import evaluate_dp, evaluate_site
from fedcore.clients.local import SimulatedSite, TrainResult, checked_extras, local_update, round_seed
from fedcore.clients.secagg_site import secagg_site
from fedcore.clients.statistics import SiteStatistics
from fedcore.clients.sums import SiteSums
from fedcore.config.job import JobRequest, NamedSpec
from fedcore.config.site import SiteConfig, load_site
from fedcore.data import SiteData, prepare_site
from fedcore.errors import ApprovalPendingError, FedcoreError, KeyMismatchError, PolicyError, UpdateError
from fedcore.he import SecretContext, load_secret_context
from fedcore.he.params import check_max_sites
from fedcore.models import build_model, get_arrays, set_arrays
from fedcore.privacy.mechanisms import PrivacyUnit
from fedcore.privacy.rng import Source, secure_source
from fedcore.site.algorithm_state import AlgorithmStates
from fedcore.site.approval_gate import check_approval, withdraw
from fedcore.site.guard import SiteGuard
from fedcore.site.ledger import ReleaseKind
from fedcore.site.plan import SitePlan, build_plan
from fedcore.site.replies import ReplyStore, StoredReply

__all__ = ["SiteRuntime", "TrainResult", "round_seed", "schema_fingerprint"]


def schema_fingerprint(site: SiteConfig) -> str:
    """Short hash of what must agree across sites (label, feature columns, types, levels)."""
    blob = json.dumps(site.schema_signature(), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _parse_request(wire: str) -> JobRequest:
    return JobRequest.from_wire(wire)  # immutable; errors are raised, never cached


class SiteRuntime:
    """One site's data, guard and model operations. Build with ``SiteRuntime.load(site_file)``."""

    _cache: ClassVar[dict[tuple[Path, Path | None], SiteRuntime]] = {}

    def __init__(self, site: SiteConfig, state_dir: Path | None = None) -> None:
        torch.set_num_threads(1)  # tiny models: threads cost more than they give
        self.site = site
        self.guard = SiteGuard(site, state_dir)
        self.replies = ReplyStore(self.guard.paths.folder)
        self.algorithm_states = AlgorithmStates(self.guard.paths.folder)  # a job's algorithm state per round
        self.simulation: SimulatedSite | None = None  # set by the simulation engine only, never on a node
        self.data: SiteData = prepare_site(site)
        self.source: Source = secure_source()
        self._plans: dict[tuple[str, str], SitePlan] = {}
        self._models: dict[str, torch.nn.Module] = {}  # model spec -> an idle model (see ``_model``)

    @classmethod
    def load(cls, site_file: Path | str, state_dir: Path | None = None) -> SiteRuntime:
        """Load (once per process) the runtime for ``site_file``; its state lives in ``state_dir``."""
        key = (Path(site_file).resolve(), state_dir)
        if key not in cls._cache:
            cls._cache[key] = cls(load_site(key[0]), state_dir)
        return cls._cache[key]

    @property
    def name(self) -> str:
        return self.site.name

    def describe(self) -> dict[str, str | int | float]:
        """What a coordinator may know before a job: the site's name and public schema."""
        return {
            "site": self.name,
            "schema": schema_fingerprint(self.site),
            "features": ",".join(self.data.features),
        }

    # --- the plan -----------------------------------------------------------------------------

    def request(self, wire: str, *, actor: str = "coordinator") -> JobRequest:
        """Parse a coordinator's job request as strictly as a job file; a malformed one is audited.

        A text parsed before in this process is not parsed again (every message of a job, to every
        site a worker serves, carries the same text); a refusal is audited by each site it reaches.
        """
        try:
            request = _parse_request(wire)
        except FedcoreError as err:
            self.guard.record("refuse", "(unparsed)", f"malformed job request refused: {err}", actor=actor)
            raise
        return request

    def plan(self, request: JobRequest) -> SitePlan:
        """This site's plan for ``request``; an admitted job's plan must not have changed since."""
        key = (request.job_id, request.digest)
        if key not in self._plans:
            plan = build_plan(
                request,
                self.site.policy,
                site=self.name,
                undeclared_scaling=self.site.undeclared_scaling,
                public_size=lambda dp, unit: self.guard.public_size(
                    self._count(unit), dp=dp, source=self.source, unit=unit, job_id=request.job_id
                ),
                units=self.data.units_train,
                depends_on=self.site.features_depending_on,
                secagg=secagg_site(self),
            )
            admitted = self.guard.plans.plan(request.job_id)
            mechanics = json.loads(json.dumps(plan.mechanics()))
            if (
                admitted is not None
                and admitted.digest == request.digest
                and admitted.summary.get("mechanics") != mechanics
            ):
                raise PolicyError(
                    f"site {self.name!r}: its policy changed since job {request.job_id!r} was admitted; "
                    "the job must be submitted again"
                )
            self._plans[key] = plan
        return self._plans[key]

    def _count(self, unit: PrivacyUnit) -> int:
        """Training rows, or under customer-level DP the training set's customers."""
        units = self.data.units_train
        if unit == "customer" and units is not None:
            return int(units.max()) + 1 if len(units) else 0
        return len(self.data.y_train)

    def admit(self, request: JobRequest, *, actor: str = "coordinator") -> SitePlan:
        """Plan, approve (``check_approval``), check and reserve the job; refusals are audited and raised."""
        try:
            if request.spec.attack is not None and self.simulation is None:
                raise PolicyError(
                    f"site {self.name!r} refuses job {request.job_id!r}: it asks for a simulated attack "
                    "([attack]); attacks run only in `fedcore run` simulations, never at a real site"
                )
            if request.spec.he is not None:
                self.check_he_capacity(request.num_sites)
            plan = self.plan(request)
            check_approval(self.guard, request, plan, actor=actor)
            self.guard.admit(request, plan, actor=actor)
        except FedcoreError as err:
            if isinstance(err, ApprovalPendingError):  # not a refusal: audited once, as a request
                raise
            self.guard.record("refuse", request.job_id, f"admission refused: {err}", actor=actor)
            raise
        return plan

    def cancel(self, job_id: str, *, actor: str = "coordinator") -> str | None:
        """Drop a reservation that released nothing, or a pending approval; returns the job's status."""
        waiting, status = withdraw(self.guard, job_id, actor=actor), self.guard.cancel(job_id, actor=actor)
        return status if status is not None or waiting is None else waiting.status

    def authorize(self, request: JobRequest, kind: ReleaseKind, server_round: int, *, actor: str) -> SitePlan:
        """The plan, once this answer is allowed and (at the first answer) charged."""
        plan = self.plan(request)
        self.guard.release(request, kind, server_round, actor=actor)
        return plan

    # --- work ---------------------------------------------------------------------------------

    @contextmanager
    def _model(self, spec: NamedSpec, arrays: Arrays) -> Iterator[torch.nn.Module]:
        """A model of ``spec`` holding ``arrays``: one per site and spec, reused across messages.

        Rebuilding it for every message cost ~7% of a medical site's work. A reused model is handed
        out in the state a fresh build leaves (every tensor of its ``state_dict`` set, no gradients,
        training mode, torch's CPU generator seeded as ``build_model`` seeds it) and taken out of the
        cache while in use: a concurrent message builds its own, and one whose work fails is dropped.
        """
        key = json.dumps(spec.as_table(), sort_keys=True, default=str)
        model = self._models.pop(key, None)
        if model is None:
            model = build_model(spec.as_table(), len(self.data.features), seed=0)
        else:
            torch.default_generator.manual_seed(0)
            model.zero_grad(set_to_none=True)
            model.train()
        self._check_arrays(model, arrays)
        set_arrays(model, arrays)
        yield model
        self._models = {key: model}  # the latest spec only: a site serves one job at a time

    def _check_arrays(self, model: torch.nn.Module, arrays: Arrays) -> None:
        expected = [a.shape for a in get_arrays(model)]
        got = [np.shape(a) for a in arrays]
        if expected != got:
            raise UpdateError(
                f"site {self.name!r}: the global model has tensor shapes {got} but this "
                f"site's schema gives {expected}; the sites' schemas differ"
            )
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise UpdateError(f"site {self.name!r}: the global model sent holds NaN or inf values")

    def replay(
        self, request: JobRequest, kind: ReleaseKind, server_round: int, *, actor: str
    ) -> StoredReply | None:
        """The reply this site already released for this job, kind and round (a resumed job asks
        again for the round its coordinator died in), audited; ``None`` when it released none.

        Never recomputed: a second computation would be a second release (under DP, fresh noise)
        that the plan did not charge. See ``fedcore.site.replies``.
        """
        stored = self.replies.load(request.job_id, request.digest, kind, server_round)
        if stored is None:  # the usual case, known without a ledger query
            return None
        admitted = self.guard.plans.plan(request.job_id)
        if admitted is None or admitted.digest != request.digest or admitted.status != "released":
            return None
        if stored.refusal:
            text = f"{kind} round {server_round} refused again as before (not recomputed): {stored.refusal}"
            self.guard.record("replay", request.job_id, text, actor=actor)
            raise PolicyError(stored.refusal)
        text = f"{kind} round {server_round} answered again with the reply released before (not recomputed)"
        self.guard.record("replay", request.job_id, text, actor=actor)
        return stored

    @contextmanager
    def answering(self, request: JobRequest, kind: ReleaseKind, server_round: int) -> Iterator[None]:
        """One request of ``kind`` at a time per job, from release to stored reply: a concurrent
        second one is refused (it could otherwise compute the same round twice)."""
        with self.replies.claim(request.job_id, kind) as mine:
            if not mine:
                raise PolicyError(
                    f"site {self.name!r} refuses {kind} round {server_round} of job {request.job_id!r}: "
                    f"another {kind} request of this job is being answered"
                )
            yield

    @contextmanager
    def computing(self, request: JobRequest, kind: ReleaseKind, server_round: int) -> Iterator[None]:
        """The work of an answer already charged (``authorize``): a computed round is a charged round.

        If the work fails, its outcome is a refusal stored in place of the reply (a re-ask is
        refused the same way, never computed again: under DP that would be fresh noise the plan did
        not charge), audited, and sent without any value of the work (it may hold DP-noised private
        data); the full error goes to the site's own ``node.log`` (chained). Only a site that stopped
        in the middle of the work stored nothing, and sent nothing (``authorize_once``)."""
        try:
            yield
        except Exception as err:
            refusal = (
                f"site {self.name!r}: {kind} round {server_round} of job {request.job_id!r} failed after "
                f"its release was charged ({type(err).__name__}); it is not computed again (details in "
                "the site's node.log)"
            )
            self.replies.save(
                request.job_id, request.digest, kind, server_round, StoredReply((), {}, refusal=refusal)
            )
            self.guard.record("refuse", request.job_id, refusal, actor="site")
            raise PolicyError(refusal) from err

    def authorize_once(
        self, request: JobRequest, kind: ReleaseKind, server_round: int, *, actor: str
    ) -> SitePlan:
        """``authorize``; or, for a round whose release was recorded (and charged) but whose outcome
        was never stored, the plan: the site stopped while computing it (a failure that raised stores
        its refusal, see ``computing``), and as an outcome is stored before anything is sent, nothing
        of that computation left the process; the recorded release covers the one computed now. (A
        round whose reply a later round's replaced was sent: refused by ``authorize``.) Call inside
        ``answering``."""
        last = self.replies.last_round(request.job_id, kind)
        if (
            last is not None
            and last < server_round
            and self.guard.plans.answered(request.job_id, kind, server_round)  # usually False: no more query
            and (admitted := self.guard.plans.plan(request.job_id)) is not None
            and (admitted.digest, admitted.status) == (request.digest, "released")
        ):
            text = (
                f"{kind} round {server_round}: the site stopped while computing it (nothing was sent or "
                "stored); computed now, under the charge recorded then"
            )
            self.guard.record("release", request.job_id, text, actor=actor)
            return self.plan(request)
        return self.authorize(request, kind, server_round, actor=actor)

    def check_global(self, spec: NamedSpec, arrays: Arrays) -> None:
        """The coordinator's model fits this site's schema and is finite (before any charge)."""
        with self._model(spec, arrays):
            pass

    def train(
        self,
        request: JobRequest,
        *,
        server_round: int,
        global_arrays: Arrays,
        actor: str = "coordinator",
        received: Mapping[str, Arrays] | None = None,
    ) -> TrainResult:
        """Answer a train request: authorize, then ``local_update``; a released round is replayed.
        ``received``: the extras the coordinator sent for the job's algorithm (checked first)."""
        with self.answering(request, "train", server_round):
            stored = self.replay(request, "train", server_round, actor=actor)
            if stored is not None:
                return TrainResult(stored.arrays, stored.weight, stored.metrics, stored.extras)
            self.check_global(request.spec.model, global_arrays)
            extras = checked_extras(request, received or {}, global_arrays)
            plan = self.authorize_once(request, "train", server_round, actor=actor)
            with self.computing(request, "train", server_round):
                result = self.local_update(
                    request, plan, server_round=server_round, global_arrays=global_arrays, received=extras
                )
                reply = StoredReply(result.delta, result.metrics, result.weight, extras=result.extras)
                self.replies.save(request.job_id, request.digest, "train", server_round, reply)
            return result

    def local_update(
        self,
        request: JobRequest,
        plan: SitePlan,
        *,
        server_round: int,
        global_arrays: Arrays,
        received: Mapping[str, Arrays] | None = None,
    ) -> TrainResult:
        """Train from ``global_arrays`` as the plan and the job's algorithm say; the update is
        ``local - global``, protected (``fedcore.clients.local``)."""
        return local_update(
            self, request, plan, server_round=server_round, global_arrays=global_arrays,
            received=received or {}, model_for=self._model,
        )  # fmt: skip

    def evaluate(
        self, request: JobRequest, *, server_round: int, arrays: Arrays, actor: str = "coordinator"
    ) -> dict[str, float]:
        """Answer an evaluate request: authorize, then ``scores``; a released round is replayed."""
        with self.answering(request, "evaluate", server_round):
            stored = self.replay(request, "evaluate", server_round, actor=actor)
            if stored is not None:
                return stored.metrics
            self.check_global(request.spec.model, arrays)
            plan = self.authorize_once(request, "evaluate", server_round, actor=actor)
            with self.computing(request, "evaluate", server_round):
                scores = self.scores(request, plan, arrays)
                reply = StoredReply((), scores)
                self.replies.save(request.job_id, request.digest, "evaluate", server_round, reply)
            return scores

    def scores(self, request: JobRequest, plan: SitePlan, arrays: Arrays) -> dict[str, float]:
        """What the plan lets the site say about ``arrays`` on its test rows."""
        if plan.evaluation == "withhold":
            return {"withheld": 1.0}
        with self._model(request.spec.model, arrays) as model:
            if plan.evaluation == "dp":
                return evaluate_dp(model, self.data, noise_std=plan.evaluation_noise, source=self.source)
            return evaluate_site(model, self.data, request.spec.evaluate)

    def he_secret(self) -> SecretContext:
        """The federation's HE secret key, which this site holds (the coordinator never does)."""
        path = self.guard.paths.he_secret_key
        if not path.is_file():
            raise KeyMismatchError(
                f"site {self.name!r} has no HE secret key at {path} but the job uses HE; run `fedcore keys "
                f"init` once per federation and set [privacy] he_secret_key in {self.site.path}"
            )
        return load_secret_context(path)

    def check_he_capacity(self, num_sites: int) -> None:
        """Refuse (at admission, before any work) an HE job sent to more sites than this site's own
        key set sums exactly: the site decides from its secret.ctx, not from the coordinator's key.
        (A site with no key yet is refused at its first HE answer, as before, by ``he_secret``.)"""
        if not self.guard.paths.he_secret_key.is_file():
            return
        secret = self.he_secret()
        check_max_sites(secret.params, num_sites, keyset_id=secret.keyset_id, who=f"site {self.name!r}")

    @functools.cached_property
    def sums(self) -> SiteSums:
        """The sums this site agrees to open, and its confirmations (``fedcore.clients.sums``)."""
        return SiteSums(self)

    @functools.cached_property
    def statistics(self) -> SiteStatistics:
        """This site's statistics: requests, plans, answers, decryptions (``fedcore.clients.statistics``)."""
        return SiteStatistics(self)
