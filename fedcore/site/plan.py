"""A site's plan for one job: every release it will make, protected how, and what it costs.

The site builds the plan from the coordinator's request and its own policy, before round 1
(``build_plan``). Everything the coordinator sends is a request: mechanisms are tightened by the
site's own minimums, the site's floors apply to ``num_sites``/``min_sites``, secure aggregation and
declared standardisation constants are required where DP needs them, and the composed cost of the
whole plan (every mechanism, the dataset size, the evaluations) must fit ``max_epsilon_per_job``.
A job's epsilon is its total: the mechanism that calibrates to it (DP-SGD) is planned last, beside
every other release of the plan (``_mechanisms``), or the site refuses and shows what the rest costs.
The guard (``fedcore.site.guard``) then reserves the plan's cost and answers only inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting.dp_event import DpEvent
from numpy.typing import NDArray

from fedcore.config.job import JobRequest
from fedcore.errors import PolicyError
from fedcore.privacy.accounting import calibrate_gaussian, compose, epsilon, event_to_json, gaussian_event
from fedcore.privacy.mechanisms import (
    UNIT_ORDER,
    LocalTrainer,
    MechanismPlan,
    PlanContext,
    PrivacyUnit,
    UpdateFilter,
    get_mechanism,
    target_epsilon,
)
from fedcore.site.algorithm_plan import plan_algorithm
from fedcore.site.policy import SitePolicy

if TYPE_CHECKING:
    from fedcore.clients.secagg_site import SecAggSite

__all__ = ["EVAL_SENSITIVITY", "PublicSize", "Release", "SitePlan", "build_plan", "tightened"]

EVAL_SENSITIVITY = 3**0.5
"""L2 sensitivity of a DP evaluation: (correct count, clipped loss sum / L, row count), each <= 1."""


@dataclass(frozen=True)
class PublicSize:
    """The training-set size the site uses in public quantities, and its charge if not yet paid."""

    value: int
    event: DpEvent | None = None  # the noisy size's release, when no earlier plan has charged it
    key: str = ""  # the ledger key of a DP-released size ("" when exact)
    how: str = "exact"
    released: bool = True


@dataclass(frozen=True)
class Release:
    """One kind of release in a plan: how many, protected how, its own epsilon (None: uncharged) and
    the unit that epsilon protects (one example, one customer, or the site's whole contribution)."""

    what: str
    count: int
    protection: str
    epsilon: float | None = None
    unit: PrivacyUnit = "example"

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "count": self.count,
            "protection": self.protection,
            "epsilon": self.epsilon,
            "unit": self.unit if self.epsilon is not None else None,
        }


@dataclass(frozen=True)
class SitePlan:
    """The site's enforced plan for one job (see the module docstring)."""

    job_id: str
    digest: str
    rounds: int
    mechanisms: tuple[MechanismPlan, ...]
    evaluation: str  # "withhold" | "dp" | "clear"
    evaluation_noise: float  # Gaussian std per coordinate of a DP evaluation (0 unless "dp")
    size: PublicSize
    events: tuple[DpEvent, ...]  # this job's own releases (the size, if DP, is charged once per dataset)
    epsilon: float  # the most this plan can cost: its events and an uncharged size, composed
    delta: float
    releases: tuple[Release, ...]
    upfront: tuple[DpEvent, ...] = ()  # charged whole at the first answer (mechanisms without round_events)
    per_answer: Mapping[str, tuple[DpEvent, ...]] = field(default_factory=dict)  # kind -> one answer's
    target_epsilon: float | None = None  # the total the job names (a TargetedMechanism's); None: fixed noise
    local_steps: int = (
        0  # optimizer steps per round (the job's algorithm's, from the public size); 0: the job's
    )

    @property
    def charging(self) -> dict[str, str]:
        """How the ledger charges this plan (``PlanBook.release``): the events charged at the first
        answer (``upfront``) and those of each answer by kind, as event JSON ("" for none). ``events``
        is their whole: ``upfront`` and every kind's answer composed ``limits[kind]`` times."""

        def text(events: Sequence[DpEvent]) -> str:
            return event_to_json(compose(events)) if events else ""

        return {"upfront": text(self.upfront), **{k: text(v) for k, v in self.per_answer.items()}}

    @property
    def has_dp(self) -> bool:
        return bool(self.events)

    @property
    def unit(self) -> PrivacyUnit | None:
        """What the plan's composed epsilon protects: the smallest unit among its charged releases
        (an epsilon per customer is also one per example, not the other way round); None: no charge."""
        units = [r.unit for r in self.releases if r.epsilon is not None]
        return min(units, key=UNIT_ORDER.index) if units else None

    @property
    def limits(self) -> dict[str, int]:
        """Answers the plan allows per kind: one train and one evaluate per round."""
        return {"train": self.rounds, "evaluate": self.rounds}

    @property
    def trainer(self) -> LocalTrainer | None:
        return next((m.trainer for m in self.mechanisms if m.trainer is not None), None)

    @property
    def update_filters(self) -> tuple[UpdateFilter, ...]:
        return tuple(m.update_filter for m in self.mechanisms if m.update_filter is not None)

    @property
    def uniform_weight(self) -> bool:
        return any(m.uniform_weight for m in self.mechanisms)

    @property
    def public(self) -> dict[str, float]:
        """Public parameters of the plan's mechanisms (reported with every train reply)."""
        return {k: v for m in self.mechanisms for k, v in m.public.items()}

    def mechanics(self) -> dict[str, Any]:
        """What the site does for the job (not what it costs): must not change once admitted."""
        return {
            "public": self.public,
            "evaluation": [self.evaluation, self.evaluation_noise],
            "size": self.size.value,
            "trainer": self.trainer is not None,
            "filters": len(self.update_filters),
        }

    def summary(self) -> dict[str, Any]:
        """What the run summary lists for this site: every release, its charge, the total."""
        return {
            "job_id": self.job_id,
            "epsilon": self.epsilon,
            "target_epsilon": self.target_epsilon,
            "unit": self.unit,
            "delta": self.delta,
            "releases": [r.as_dict() for r in self.releases],
            "values": [self.size.key] if self.size.event is not None else [],
            "mechanics": self.mechanics(),
        }


def tightened(request: JobRequest, policy: SitePolicy) -> dict[str, Any]:
    """Per mechanism (job's or site's), the stricter settings: what the site will enforce."""
    out = {}
    for name in sorted({*request.spec.mechanisms, *policy.mechanisms}):
        settings = get_mechanism(name).tighten(
            request.spec.mechanisms.get(name),
            policy.mechanisms.get(name),
            max_epsilon=policy.max_epsilon_per_job,
        )
        if settings is not None:
            out[name] = settings
    return out


def _unit(settings: dict[str, Any]) -> PrivacyUnit:
    """``"customer"`` when a mechanism's settings ask for customer-level DP, else ``"example"``."""
    return "customer" if any(getattr(s, "unit", None) == "customer" for s in settings.values()) else "example"


def _refusals(
    request: JobRequest,
    policy: SitePolicy,
    settings: dict[str, Any],
    undeclared: Sequence[str],
    units: NDArray[np.int64] | None,
    depends_on: Callable[..., tuple[str, ...]],
) -> list[str]:
    spec, out, dp = request.spec, [], bool(settings)
    unit = _unit(settings)
    crossing = depends_on("other_units") if unit == "customer" else depends_on("unit", "other_units")
    per_record = any(getattr(s, "unit", None) is not None for s in settings.values())  # not client-level
    if per_record and crossing:
        fix = "" if unit == "customer" else ", or use customer-level DP"
        out.append(
            f"{unit}-level DP protects one {unit} only if no other {unit}'s features depend on it, and "
            f"these features do (depends_on in the site file): {', '.join(crossing)}; train on a site "
            f"file without them ([schema] drop), or compute them from DP statistics{fix}"
        )
    if unit == "customer":
        if units is None:
            out.append(
                'the job asks for customer-level DP (unit = "customer") but the site names no customer '
                "column: its operator sets [privacy] unit_column in the site file"
            )
        if policy.evaluation == "dp":
            out.append(
                'its DP evaluations (evaluation = "dp") protect rows, not customers: under customer-level '
                'DP it needs evaluation = "withhold" or "clear"'
            )
    if policy.require_he and spec.he is None:
        out.append("it requires homomorphic encryption (require_he): set [privacy.he] enabled = true")
    floor = policy.min_sites
    if request.num_sites < floor or spec.min_sites < floor:
        out.append(
            f"it takes part only in jobs planned for >= {floor} sites (min_sites in its policy); the job "
            f"has num_sites {request.num_sites}, min_sites {spec.min_sites}"
        )
    if spec.min_sites > request.num_sites:
        out.append(
            f"the job's min_sites {spec.min_sites} exceeds the {request.num_sites} sites it was sent to"
        )
    if dp and policy.budget_epsilon is None:
        out.append("it has no privacy budget to pay for DP: set [privacy] budget_epsilon in its site file")
    if dp and undeclared:
        out.append(
            "under DP the standardisation may not come from private rows, and these numeric features "
            f"declare no public center/scale: {', '.join(undeclared)} (add them to [schema.columns])"
        )
    return out


def build_plan(
    request: JobRequest,
    policy: SitePolicy,
    *,
    site: str,
    undeclared_scaling: Sequence[str],
    public_size: Callable[[bool, PrivacyUnit], PublicSize],
    units: NDArray[np.int64] | None = None,
    depends_on: Callable[..., tuple[str, ...]] = lambda *scopes: (),
    secagg: SecAggSite | None = None,
) -> SitePlan:
    """The site's plan for ``request``; ``PolicyError`` naming every reason when it refuses.

    ``public_size(has_dp, unit)`` gives the training-set size to use in public quantities (a
    DP-released size, charged once, under DP unless the policy declares sizes public), counted in
    customers when ``unit`` is ``"customer"``. ``units``: each training row's customer code (from the
    site's ``[privacy] unit_column``; None without one), for customer-level DP-SGD. ``depends_on(*scopes)``:
    the features computed from rows in those scopes (``SiteConfig.features_depending_on``).
    """
    who = f"site {site!r} refuses job {request.job_id!r}"
    try:
        settings = tightened(request, policy)
    except PolicyError as err:
        raise PolicyError(f"{who}: {err}") from err
    noisy = request.spec.secagg is not None and request.spec.secagg.has_noise
    reasons = _refusals(request, policy, {**settings, **({"secagg": None} if noisy else {})},
                        undeclared_scaling, units, depends_on)  # fmt: skip
    if reasons:
        raise PolicyError(f"{who}: " + "; ".join(reasons))
    spec, delta, unit = request.spec, policy.budget_delta, _unit(settings)
    size = public_size(bool(settings) or noisy, unit)
    batch = spec.train.batch_size
    if size.key and size.value < batch:  # a small site's noisy size may fall below one batch
        size = replace(  # post-processing of the release: the sampling rate is capped at 1
            size, value=batch, how=f"{size.how}; below the batch size, planned as {batch} (sampling rate 1)"
        )
    evaluation = policy.evaluation if settings or noisy else "clear"
    eval_events, eval_noise, eval_answer = _evaluation(evaluation, policy, spec.rounds)
    algorithm = plan_algorithm(request, size.value)
    ctx = PlanContext(
        size.value,
        batch,
        spec.rounds,
        algorithm.steps,
        # a round's sum holds the sampled sites' updates: noise shares split over those (a coordinator
        # that samples more adds more noise; each site charges only its own share)
        min(request.num_sites, spec.sites_per_round or request.num_sites),
        spec.he is not None,
        units if unit == "customer" else None,
        delta=delta,
    )
    paid = {"evaluation metrics": eval_events, "training-set size": [size.event] if size.event else []}
    try:  # secure aggregation: the site's own check (members, thresholds) and its noise, if any
        masking = None if request.spec.secagg is None else _secagg(secagg, request, spec.rounds, delta)
        paid["secure-aggregation noise"] = list(masking.events) if masking else []
        mechanisms, target = _mechanisms(settings, ctx, paid, delta=delta)
        mechanisms = (*mechanisms, *([masking] if masking else []))
    except PolicyError as err:
        raise PolicyError(f"{who}: {err}") from err
    if sum(m.trainer is not None for m in mechanisms) > 1:
        raise PolicyError(f"{who}: two mechanisms replace local training")
    if problems := algorithm.problems(mechanisms):
        raise PolicyError(f"{who}: " + "; ".join(problems))
    if any(m.uniform_weight for m in mechanisms) and not any(m.trainer for m in mechanisms):
        size = PublicSize(
            size.value, how="not released: every update weighs 1, no step uses it", released=False
        )
    events = [e for m in mechanisms for e in m.events] + eval_events
    everything = events + ([size.event] if size.event else [])
    total = epsilon(everything, delta=delta) if everything else 0.0
    releases = _releases(
        mechanisms, size, evaluation, spec.rounds, eval_events, delta, bool(settings) or noisy, unit,
        spec.secagg is not None,
    )  # fmt: skip
    releases += tuple(Release(*r) for r in algorithm.releases(spec.rounds))
    cap = policy.max_epsilon_per_job
    if cap is not None and total > cap + 1e-9:
        parts = ", ".join(f"{r.what} {r.epsilon:.3g}" for r in releases if r.epsilon)
        raise PolicyError(
            f"site {site!r} refuses job {request.job_id!r}: its whole plan costs epsilon {total:.4g} "
            f"({parts}, composed) > max_epsilon_per_job {cap:g}; ask for less"
        )
    per_round = [m for m in mechanisms if m.events and m.round_events is not None]
    upfront = tuple(e for m in mechanisms if m.round_events is None for e in m.events)
    per_answer = {
        "train": tuple(e for m in per_round for e in m.round_events or ()),
        "evaluate": eval_answer,
    }
    return SitePlan(
        request.job_id, request.digest, spec.rounds, mechanisms, evaluation, eval_noise, size,
        tuple(events), total, delta, releases, upfront, per_answer, target, algorithm.steps,
    )  # fmt: skip


def _secagg(site: SecAggSite | None, request: JobRequest, rounds: int, delta: float) -> MechanismPlan | None:
    if site is None:
        raise PolicyError("it runs no secure aggregation here (no [secagg] site support in this runtime)")
    return site.mechanism(request, rounds=rounds, delta=delta)


def _mechanisms(
    settings: Mapping[str, Any], ctx: PlanContext, paid: Mapping[str, Sequence[DpEvent]], *, delta: float
) -> tuple[tuple[MechanismPlan, ...], float | None]:
    """Every mechanism's plan, and the job's total epsilon if one is named: the mechanisms with a
    fixed noise first, then the one that calibrates to that total (``TargetedMechanism``), with every
    other release's events in ``ctx.others`` (theirs and ``paid``: what the plan releases besides
    its mechanisms). ``PolicyError`` when the other releases alone reach the total."""
    targets = {n: t for n, st in settings.items() if (t := target_epsilon(get_mechanism(n), st)) is not None}
    if len(targets) > 1:
        raise PolicyError(
            f"{' and '.join(targets)} each calibrate to the job's total epsilon, and a job names one "
            "total: ask for one of them"
        )
    fixed = tuple(get_mechanism(n).plan(st, ctx) for n, st in settings.items() if n not in targets)
    if not targets:
        return fixed, None
    ((name, target),) = targets.items()
    parts = {**{m.name: list(m.events) for m in fixed}, **paid}
    others = tuple(e for evts in parts.values() for e in evts)
    spent = epsilon(others, delta=delta, accountant=ctx.accountant) if others else 0.0
    if spent >= target:
        each = ", ".join(
            f"{what} {epsilon(evts, delta=delta, accountant=ctx.accountant):.3g}"
            for what, evts in parts.items()
            if evts
        )
        raise PolicyError(
            f"the job names epsilon {target:g} in total ([privacy.{name}]), but its other releases "
            f"already spend {spent:.4g} ({each}; composed at delta {delta:g}), leaving nothing for {name}: "
            f"name a total above {spent:.3g}, or spend less on the rest (the site's evaluation_epsilon, "
            'dataset_size = "public" or a larger dataset_size_noise; a mechanism\'s noise_multiplier)'
        )
    return (*fixed, get_mechanism(name).plan(settings[name], replace(ctx, others=others))), target


def _evaluation(
    mode: str, policy: SitePolicy, rounds: int
) -> tuple[list[DpEvent], float, tuple[DpEvent, ...]]:
    """DP evaluations: Gaussian noise calibrated so ``rounds`` of them spend ``evaluation_epsilon``
    (their events, the noise std, one evaluation's event)."""
    if mode != "dp":
        return [], 0.0, ()
    z = calibrate_gaussian(target_epsilon=policy.evaluation_epsilon, delta=policy.budget_delta, count=rounds)
    return (
        [gaussian_event(noise_multiplier=z, count=rounds)],
        z * EVAL_SENSITIVITY,
        (gaussian_event(noise_multiplier=z),),
    )


def _releases(
    mechanisms: Sequence[MechanismPlan],
    size: PublicSize,
    evaluation: str,
    rounds: int,
    eval_events: Sequence[DpEvent],
    delta: float,
    dp: bool,
    unit: PrivacyUnit,
    masked: bool = False,
) -> tuple[Release, ...]:
    def eps(evts: Sequence[DpEvent]) -> float | None:
        return epsilon(evts, delta=delta) if evts else None

    if not dp:
        how = "; secure-aggregated: only each round's sum over its survivors is unmasked" if masked else ""
        updates = Release("model updates", rounds, "none: this job has no DP (exact updates)" + how)
    else:
        text = "; ".join(m.release for m in mechanisms)
        charged = [e for m in mechanisms for e in m.events]
        units = [m.unit for m in mechanisms if m.events]
        weakest: PrivacyUnit = min(units, key=UNIT_ORDER.index) if units else "example"
        updates = Release("model updates", rounds, text, eps(charged), weakest)
    evaluations = {
        "withhold": Release("evaluation metrics", 0, "withheld (site policy evaluation = 'withhold')"),
        "dp": Release(
            "evaluation metrics", rounds, "noisy correct count, clipped loss and row count", eps(eval_events)
        ),
        "clear": Release(
            "evaluation metrics",
            rounds,
            "in the clear" + (" (site policy evaluation = 'clear')" if dp else ""),
        ),
    }
    sized = Release(
        "training-set size" + (" (customers)" if unit == "customer" else ""),
        int(size.released),
        size.how,
        eps([size.event]) if size.event else None,
        unit,
    )
    return (updates, evaluations[evaluation], sized)
