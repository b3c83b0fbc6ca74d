"""A site's side of a secure-aggregation job: its identity, its members, its rounds on disk.

Every step of a round (``fedcore.secagg.client``) runs here against the site's own ``[secagg]``
(members, thresholds: never the coordinator's), after the job's own checks: the round request
names this job (``JOB_ID/ATTEMPT``: a coordinator that restarts a round starts a new attempt with
fresh keys), a round of the plan, the job's modulus and the site's vector length. Each round's
client state is kept in the site's state folder (``secagg/``, 0600, written durably) and read back
at the next step, so a restarted node refuses a second start, signature or reveal of an attempt.

The survivor set a site signs is its one confirmed claim for the round (``PlanBook.confirm``, kind
``"train"``): across attempts, it signs one set per round ever, so no two sums of its (stored,
never recomputed) input over different sets exist. A sum needs at least the site's ``min_sites``
floor of survivors. Every refusal is audited.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from dp_accounting.dp_event import SelfComposedDpEvent

from fedcore.config.job import JobRequest
from fedcore.config.secagg import SiteSecAgg
from fedcore.durable import write_durably
from fedcore.errors import ConfigError, FedcoreError, PolicyError, SecAggError
from fedcore.models import build_model, get_arrays
from fedcore.privacy.mechanisms import MechanismPlan
from fedcore.secagg import client
from fedcore.secagg.client import ClientState
from fedcore.secagg.dp import Trust
from fedcore.secagg.job import Encoder, encoder, noise_events
from fedcore.secagg.keyfile import load_identity, load_members
from fedcore.secagg.keys import Identity
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
from fedcore.secagg.policy import RoundParams, SecAggPolicy, round_params
from fedcore.site.sums import claim_for

if TYPE_CHECKING:
    from fedcore.clients.runtime import SiteRuntime

__all__ = ["SecAggSite", "secagg_site"]

T = TypeVar("T")
_ATTEMPT = re.compile(r"[0-9a-f]{8,32}")


class SecAggSite:
    """Secure aggregation at one site (``SiteRuntime.secagg``); see the module docstring."""

    def __init__(
        self, name: str, folder: Path, cfg: SiteSecAgg | None, record: Callable[..., object], *,
        min_sites: int, features: int,
    ) -> None:  # fmt: skip
        self.name, self.folder, self.cfg, self._record = name, folder, cfg, record
        self.min_sites, self.features = min_sites, features

    def config(self) -> SiteSecAgg:
        if self.cfg is None:
            raise PolicyError(
                f"site {self.name!r} takes no secure-aggregation job: its site file has no [secagg] "
                "section (its identity and the members it accepts)"
            )
        return self.cfg

    @functools.cached_property
    def policy(self) -> SecAggPolicy:
        cfg = self.config()
        members = load_members(cfg.members, cfg.members_file or self.folder / "secagg" / "members.toml")
        return SecAggPolicy(
            members, cfg.threshold, max(3, cfg.threshold, cfg.min_participants), cfg.max_corrupt_fraction,
            cfg.max_dropout_fraction, cfg.min_honest,
        )  # fmt: skip

    @functools.cached_property
    def identity(self) -> Identity:
        ident = load_identity(self.config().identity or self.folder / "secagg" / "identity.key", self.name)
        known = dict(self.policy.members.keys).get(self.name)
        if known != ident.public_key:
            raise ConfigError(
                f"site {self.name!r}: its identity's public key {ident.public_key.hex()[:16]}... is not the "
                "one its member list gives for it; fix [secagg] identity or the member list"
            )
        return ident

    def trust(self) -> Trust:
        return Trust.THRESHOLD if self.config().trust == "threshold" else Trust.OWN

    def check_honest(self, params: RoundParams, num_sites: int, *, noisy: bool, where: str) -> None:
        """A site charged for the threshold's noise (``trust = "threshold"``) refuses a round with
        fewer honest sites behind a sum than its plan counted (training and statistics alike)."""
        if not noisy or self.trust() is not Trust.THRESHOLD:
            return
        floor = self.config().planned_min_honest(num_sites)
        if params.min_honest < floor:
            raise SecAggError(
                f"{where}: {params.min_honest} honest sites behind a sum, the plan counted {floor}"
            )

    def check_job(self, request: JobRequest) -> None:
        """At admission: the site can take part (section, members, identity, thresholds)."""
        _ = self.identity
        cfg = self.config()
        if request.num_sites < max(3, cfg.threshold):
            raise PolicyError(
                f"site {self.name!r} lets a sum be unmasked only over >= {cfg.threshold} survivors (and a "
                f"round needs 3 sites); the job was sent to {request.num_sites}"
            )

    def encoder(self, request: JobRequest) -> Encoder:
        assert request.spec.secagg is not None
        return encoder(request.spec.secagg, request.num_sites)

    def num_params(self, request: JobRequest) -> int:
        return _num_params(_model_key(request), self.features)

    def mechanism(self, request: JobRequest, *, rounds: int, delta: float) -> MechanismPlan | None:
        """The plan's part for the job's distributed noise (``None`` without noise); refuses (at
        admission) a site that cannot take part."""
        self.check_job(request)
        spec = request.spec.secagg
        assert spec is not None
        enc = self.encoder(request)
        trust, honest = self.trust(), self.config().planned_min_honest(request.num_sites)
        events = noise_events(
            enc, dim=enc.length(self.num_params(request)), rounds=rounds, trust=trust,
            min_honest=honest, delta=delta,
        )  # fmt: skip
        if not events:
            return None
        whose = "its own noise only" if trust is Trust.OWN else f"the noise of {honest} honest sites"
        return MechanismPlan(
            name="secagg",
            events=(SelfComposedDpEvent(events[0], rounds),),
            release=(
                f"{rounds} model updates clipped to L2 norm {spec.clipping_norm:g}, each with this site's "
                f"{spec.noise} noise (summed std {spec.noise_multiplier:g} x clip over {request.num_sites} "
                f"sites), secure-aggregated; charged for {whose} (zCDP, composed by RDP)"
            ),
            public={"clipping_norm": spec.clipping_norm, "noise_multiplier": spec.noise_multiplier},
            uniform_weight=True,
            unit="site",
            round_events=events,
        )

    # --- state ---------------------------------------------------------------------------------

    def _path(self, session: str, round_: int) -> Path:
        name = hashlib.sha256(session.encode()).hexdigest()[:24]
        return self.folder / "secagg" / f"{name}-r{round_}.state"

    def _load(self, session: str, round_: int) -> ClientState:
        path = self._path(session, round_)
        if not path.is_file():
            raise SecAggError(f"round {round_} of {session!r} was not started here; refused")
        return ClientState.from_bytes(path.read_bytes())

    def _save(self, state: ClientState) -> None:
        data = state.to_bytes()
        write_durably(
            self._path(state.request.job_id, state.request.round), lambda fh: fh.write(data), private=True
        )

    def load_state(self, session: str, round_: int) -> ClientState:
        """The client state of ``round_`` of attempt ``session`` (``SecAggError`` if never started)."""
        return self._load(session, round_)

    def save_state(self, state: ClientState) -> None:
        """Keep a round's client state durably (0600) before its message leaves the site."""
        self._save(state)

    def _audited(self, request: JobRequest, step: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FedcoreError as err:
            self._record("refuse", request.job_id, f"secure aggregation, {step}: {err}", actor="coordinator")
            raise

    # --- the steps -----------------------------------------------------------------------------

    def _check_request(self, request: JobRequest, rr: RoundRequest) -> None:
        spec, problems = request.spec, []
        assert spec.secagg is not None
        prefix, _, attempt = rr.job_id.rpartition("/")
        if prefix != request.job_id or not _ATTEMPT.fullmatch(attempt):
            problems.append(f"round id {rr.job_id!r} is not this job's ({request.job_id}/ATTEMPT)")
        if not 1 <= rr.round <= spec.rounds:
            problems.append(f"round {rr.round} is not a round of the job (1..{spec.rounds})")
        length = self.encoder(request).length(self.num_params(request))
        if (rr.modulus_bits, rr.length) != (spec.secagg.modulus_bits, length):
            problems.append(f"modulus {rr.modulus_bits} bits / length {rr.length}: the job's are "
                            f"{spec.secagg.modulus_bits} / {length}")  # fmt: skip
        if len(rr.participants) > request.num_sites:
            problems.append(f"{len(rr.participants)} participants, the job was sent to {request.num_sites}")
        if problems:
            raise SecAggError(f"round {rr.round} refused: " + "; ".join(problems))
        params = round_params(self.policy, self.name, rr)
        self.check_honest(params, request.num_sites, noisy=spec.secagg.has_noise, where=f"round {rr.round}")

    def start(self, request: JobRequest, rr: RoundRequest) -> KeyAdvertisement:
        def run() -> KeyAdvertisement:
            self._check_request(request, rr)
            path = self._path(rr.job_id, rr.round)
            existing = ClientState.from_bytes(path.read_bytes()) if path.is_file() else None
            state, ad = client.start_round(self.policy, self.identity, rr, existing=existing)
            self._save(state)
            return ad

        return self._audited(request, "start", run)

    def share(self, request: JobRequest, key_list: KeyList) -> ShareBundle:
        def run() -> ShareBundle:
            state, bundle = client.share_keys(
                self.policy, self.identity, self._mine(request, key_list.job_id, key_list.round), key_list
            )
            self._save(state)
            return bundle

        return self._audited(request, "shares", run)

    def _mine(self, request: JobRequest, session: str, round_: int) -> ClientState:
        if session.rpartition("/")[0] != request.job_id:
            raise SecAggError(f"{session!r} is not a round of job {request.job_id!r}; refused")
        return self._load(session, round_)

    def ready(self, request: JobRequest, delivery: ShareDelivery) -> None:
        """Before the round is charged: this site shared keys in this attempt and awaits its input."""

        def run() -> None:
            state = self._mine(request, delivery.job_id, delivery.round)
            if state.stage != "shared" or delivery.receiver != self.name:
                raise SecAggError(
                    f"a share delivery at step {state.stage!r} for {delivery.receiver!r}; refused"
                )

        self._audited(request, "masked input", run)

    def masked(self, request: JobRequest, delivery: ShareDelivery, ints: object) -> MaskedInput:
        import numpy as np

        def run() -> MaskedInput:
            state = self._mine(request, delivery.job_id, delivery.round)
            words = self.encoder(request).words(np.asarray(ints, dtype=np.int64))
            new, masked = client.mask_input(state, delivery, words)
            self._save(new)
            return masked

        return self._audited(request, "masked input", run)

    def sign(
        self, request: JobRequest, sreq: SurvivorRequest, *, confirm: Callable[[str], object]
    ) -> SurvivorSignature:
        def run() -> SurvivorSignature:
            state = self._mine(request, sreq.job_id, sreq.round)
            floor = max(request.spec.min_sites, self.policy.threshold, self.min_sites)
            if len(sreq.survivors) < floor:
                raise SecAggError(
                    f"{len(sreq.survivors)} survivors; this site opens sums of >= {floor} sites"
                )
            claim = claim_for(request.job_id, "train", sreq.round, sreq.survivors, ["secagg"])
            confirm(claim.digest)  # its one survivor set of the round, ever (refused if another)
            new, sig = client.sign_survivors(self.identity, state, sreq)
            self._save(new)
            return sig

        return self._audited(request, "survivor set", run)

    def reveal(self, request: JobRequest, ureq: UnmaskRequest) -> UnmaskReply:
        def run() -> UnmaskReply:
            state = self._mine(request, ureq.job_id, ureq.round)
            new, reply = client.reveal_shares(self.policy, state, ureq)
            self._save(new)
            return reply

        return self._audited(request, "unmask", run)


def _model_key(request: JobRequest) -> str:
    return json.dumps(request.spec.model.as_table(), sort_keys=True)


@functools.lru_cache(maxsize=8)
def _num_params(model: str, features: int) -> int:
    return sum(int(a.size) for a in get_arrays(build_model(json.loads(model), features, seed=0)))


@functools.lru_cache(maxsize=64)
def _site(runtime: SiteRuntime) -> SecAggSite:
    return SecAggSite(
        runtime.name, runtime.guard.paths.folder, runtime.site.secagg, runtime.guard.record,
        min_sites=runtime.site.policy.min_sites, features=len(runtime.data.features),
    )  # fmt: skip


def secagg_site(runtime: SiteRuntime) -> SecAggSite:
    """The secure aggregation of ``runtime``'s site (one object per runtime: its keys are read once)."""
    return _site(runtime)
