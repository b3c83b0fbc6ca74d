"""A job file, parsed once into a typed, frozen ``JobSpec``; what the coordinator sends is a ``JobRequest``.

Strict: an unknown section or key is an error with a suggestion, every value is checked at load
(before Flower starts), and all problems are reported at once. The same parser runs at each site on
the coordinator's request, so a site never reads a job value that was not validated.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcore.config.named import NamedSpec, named_spec, options_problems
from fedcore.config.reader import Reader, raise_problems, read_toml
from fedcore.config.research import AttackSpec, job_problems, read_attack
from fedcore.config.secagg import SecAggSpec, parse_job_secagg
from fedcore.config.task import check_task, read_task, with_outputs
from fedcore.config.train import TrainConfig
from fedcore.errors import ConfigError, FedcoreError
from fedcore.tasks import Task

__all__ = [
    "ADMISSION_WAIT",
    "ADMISSION_WAIT_DOC",
    "AttackSpec",
    "BaselineSpec",
    "CardPrecision",
    "EvaluateSpec",
    "HeSpec",
    "JobRequest",
    "JobSpec",
    "NamedSpec",
    "apply_overrides",
    "load_job",
    "parse_job",
]


ADMISSION_WAIT = 300.0
ADMISSION_WAIT_DOC = (
    "seconds the coordinator waits for sites whose operator approves each job by hand ([node] approval = "
    '"manual"), asking them again every 10 s; a site still undecided then counts as refusing and is told '
    "to cancel (charged nothing)"
)


@dataclass(frozen=True)
class CardPrecision:
    """``[evaluate] card_precision``: cards checked per day, and the card and day columns."""

    k: int = 100
    card: str = "customer_id"
    day: str = "tx_time_days"


METRICS = ("accuracy", "auc", "auprc", "cost", "card_precision_top_k")  # what [evaluate] metric may name


@dataclass(frozen=True)
class EvaluateSpec:
    """``[evaluate]``: extra scores (a cost matrix, card precision@k) and the job's main metric (the
    one its report plots per round and names first)."""

    cost: Mapping[str, float] | None = None
    card_precision: CardPrecision | None = None
    metric: str = "accuracy"


@dataclass(frozen=True)
class HeSpec:
    """``[privacy.he]`` when enabled: the weight scale and, for deployment, the public key."""

    weight_scale: float = 1000.0
    public_key: str | None = None


@dataclass(frozen=True)
class BaselineSpec:
    """``[baselines]`` (simulation only): how the local-only and pooled references train."""

    train: TrainConfig
    epochs: int = 10
    drop: tuple[str, ...] = ()  # feature columns the references leave out (a site alone lacks them)
    steps: int | None = None  # instead of epochs: each site-alone model's steps (pooled: x sites)


@dataclass(frozen=True)
class JobSpec:
    """A validated job. ``table`` is the canonical form it was parsed from (what travels)."""

    name: str
    rounds: int
    seed: int
    min_sites: int
    max_update_norm: float | None
    model: NamedSpec
    train: TrainConfig
    local_steps: int
    aggregator: NamedSpec
    evaluate: EvaluateSpec
    mechanisms: Mapping[str, Any]
    he: HeSpec | None
    baselines: BaselineSpec
    table: Mapping[str, Any]
    prepare_statistics: str | None = None
    prepare_sites: str | None = None
    prepare_data: str | None = None
    sites_per_round: int | None = None  # None: every admitted site, every round
    admission_wait: float = ADMISSION_WAIT  # seconds the coordinator waits for sites' operators
    secagg: SecAggSpec | None = None  # [privacy.secagg] enabled: pairwise masking (fedcore.secagg)
    algorithm: NamedSpec = field(default_factory=lambda: NamedSpec("plain"))  # [algorithm]
    attack: AttackSpec | None = None  # [attack]: simulation only
    max_norm_ratio: float | None = None  # scale updates above this x the round's median norm down to it
    reproducible: bool = False  # seeded DP noise: the in-process engine only (fedcore.harness.sweep)

    @property
    def has_dp(self) -> bool:
        """Whether the job requests any DP mechanism (sites may add their own)."""
        return bool(self.mechanisms)

    @property
    def task(self) -> Task:
        """What the model learns (``[task]``; the binary task without one): ``train.task``."""
        return self.train.task

    @property
    def main_metric(self) -> str:
        """What progress lines, the report and its plot lead with: ``[evaluate] metric`` for a binary
        task (accuracy unless set), the task's own headline otherwise (survival: c_index)."""
        return self.evaluate.metric if self.task.headline == "accuracy" else self.task.headline


@dataclass(frozen=True)
class JobRequest:
    """What the coordinator asks of a site: the job, its id and how many sites it was sent to."""

    job_id: str
    num_sites: int
    spec: JobSpec

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of everything the site plans with; a changed setting is a different job."""
        return hashlib.sha256(self.to_wire().encode()).hexdigest()

    def to_wire(self) -> str:
        return self._wire

    @functools.cached_property
    def _wire(self) -> str:  # computed once: a site checks the digest several times per message
        body = {"job_id": self.job_id, "num_sites": self.num_sites, "job": self.spec.table}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_wire(cls, text: str) -> JobRequest:
        """Parse (strictly, like a job file) what a coordinator sent; ``ConfigError`` if invalid."""
        try:
            body = json.loads(text)
            job_id, num_sites, table = body["job_id"], body["num_sites"], body["job"]
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"the coordinator's job request is malformed ({err!r})") from err
        problems = []
        if not isinstance(job_id, str) or not job_id or len(job_id) > 200:
            problems.append(f"job_id must be a non-empty string, got {job_id!r}")
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
            problems.append(f"num_sites must be an integer >= 1, got {num_sites!r}")
        raise_problems(problems, "the coordinator's job request is invalid")
        spec = parse_job(table, "the coordinator's job request")
        if spec.reproducible:
            raise ConfigError(
                "the job asks for reproducible (seeded) DP noise ([job] reproducible = true), which only the "
                "in-process simulation engine draws (fedcore sweep); a site's DP draws are always secure"
            )
        return cls(job_id, num_sites, spec)


_SECTIONS = (
    "job", "model", "train", "aggregator", "evaluate", "privacy", "baselines", "prepare",
    "algorithm", "attack",
)  # fmt: skip


def _model(t: Reader, trials: list[Callable[[], None]]) -> NamedSpec:
    from fedcore.models import build_model, model_builder, model_names

    build = lambda n, o: build_model({"name": n, **o}, 3, seed=0)  # noqa: E731
    return named_spec(t, "model", model_names(), build, model_builder, trials)


def _aggregator(t: Reader, trials: list[Callable[[], None]]) -> NamedSpec:
    from fedcore.aggregators import aggregator_factory, aggregator_names
    from fedcore.aggregators.wrappers import WRAPPER_KEYS, build_aggregator

    wrappers = {k: t.table[k] for k in WRAPPER_KEYS if k in t}  # pre = "nnm", clipping = "adaptive"
    rule = Reader({k: v for k, v in t.table.items() if k not in wrappers}, t.source, t.problems, t.section)
    build = lambda n, o: build_aggregator(n, {**o, **wrappers})  # noqa: E731
    spec = named_spec(rule, "aggregator", aggregator_names(), build, aggregator_factory, trials)
    return NamedSpec(spec.name.strip().lower(), {**spec.options, **wrappers})


def _algorithm(t: Reader, trials: list[Callable[[], None]]) -> NamedSpec:
    from fedcore.algorithms import algorithm_factory, algorithm_names, make_algorithm

    spec = named_spec(t, "algorithm", algorithm_names(), make_algorithm, algorithm_factory, trials)
    return NamedSpec(spec.name.strip().lower(), spec.options)


def _evaluate(t: Reader) -> EvaluateSpec:
    cost = t.parse("cost", _cost)
    card = t.parse("card_precision", _card_precision)
    metric = t.string("metric", "accuracy", choices=METRICS, doc="the main metric: plotted per round")
    needs = {"cost": ("cost", cost), "card_precision_top_k": ("card_precision", card)}
    if metric in needs and needs[metric][1] is None:
        t.problem("metric", f"{metric!r} needs [evaluate.{needs[metric][0]}]")
    t.done()
    return EvaluateSpec(cost, card, metric)


def _cost(t: Reader) -> dict[str, float]:
    out = {"fp": t.number("fp", ge=0), "fn": t.number("fn", ge=0)}
    t.done()
    return out


def _card_precision(t: Reader) -> CardPrecision:
    out = CardPrecision(
        t.integer("k", 100, ge=1), t.string("card", "customer_id"), t.string("day", "tx_time_days")
    )
    t.done()
    return out


def _privacy(t: Reader) -> tuple[dict[str, Any], HeSpec | None, SecAggSpec | None]:
    if not t.table:  # no [privacy]: dp_accounting and torch need not load to read the job
        t.done()
        return {}, None, None
    from fedcore.privacy.mechanisms import get_mechanism, mechanism_names

    he = None
    if "he" in t:
        h = t.sub("he")
        enabled = h.boolean("enabled", False)
        spec = HeSpec(h.number("weight_scale", 1000.0, gt=0), h.string("public_key", None))
        h.done()
        he = spec if enabled else None
    secagg = parse_job_secagg(t.sub("secagg")) if "secagg" in t else None
    if he is not None and secagg is not None:
        t.problem(
            "secagg", "HE and secure aggregation are exclusive: enable one of [privacy.he], [privacy.secagg]"
        )
    if "secure_noise" in t:
        t.problem(
            "secure_noise",
            "was removed: a site always draws DP noise from its CSPRNG and a job cannot change that",
        )
    mechanisms = {}
    for name in mechanism_names():
        if name in t:
            mechanism = get_mechanism(name)
            mechanisms[name] = mechanism.parse(t.sub(name))
            if getattr(mechanism, "requires_he", False) and he is None:
                t.problem(name, "needs secure aggregation: set [privacy.he] enabled = true")
    t.done(extra_known=("secagg",))
    return mechanisms, he, secagg


def _has_mean_step(spec: NamedSpec) -> bool:
    from fedcore.aggregators.wrappers import build_aggregator  # with its wrappers (pre, clipping)

    try:
        return hasattr(build_aggregator(spec.name, spec.options), "apply_mean")
    except (FedcoreError, TypeError, ValueError):
        return True  # its own problem is reported by [aggregator]


def parse_job(raw: Mapping[str, Any], source: str, *, default_name: str = "job", note: str = "") -> JobSpec:
    """Validate a job table (a parsed job file, or a coordinator's request) into a ``JobSpec``.

    ``source`` names where the table came from in messages; ``note`` is added to the title.
    """
    problems: list[str] = []
    top = Reader(raw, source, problems)
    job = top.sub("job")
    name = job.string("name", default_name)
    rounds, seed = job.integer("rounds", ge=1), job.integer("seed", 0)
    min_sites = job.integer("min_sites", 1, ge=1)
    max_norm = job.number("max_update_norm", None, gt=0)
    max_ratio = job.number(
        "max_norm_ratio", None, gt=1,
        doc="bounded influence: an update whose L2 norm exceeds this many times the median norm of its "
        "round's updates is scaled down to that (a bound that follows the honest norms as they shrink; "
        "max_update_norm is absolute and rejects)",
    )  # fmt: skip
    per_round = job.integer(
        "sites_per_round", None, ge=1,
        doc="sites sampled (uniformly, at the coordinator) for each round's training and, separately, its "
        "evaluation; default: every admitted site. Must be >= min_sites. A site charges only the rounds "
        "it takes part in (no amplification by sampling is claimed: a site cannot check the sampling)",
    )  # fmt: skip
    if isinstance(per_round, int) and isinstance(min_sites, int) and per_round < min_sites:
        job.problem(
            "sites_per_round",
            f"must be >= min_sites ({min_sites}), got {per_round}: every round needs min_sites replies",
        )
    admission_wait = job.number("admission_wait", ADMISSION_WAIT, ge=0, doc=ADMISSION_WAIT_DOC)
    reproducible = job.boolean(
        "reproducible", False,
        doc="simulation only (fedcore sweep --reproducible): the simulated sites draw DP noise from a "
        "seeded, non-cryptographic generator, so a rerun repeats; a site served through Flower refuses it",
    )  # fmt: skip
    job.done()
    trials: list[Callable[[], None]] = []  # trial builds, after the cheap checks: torch loads late
    task = read_task(top.sub("task", doc="what the model learns: fedcore.tasks"), options_problems)
    model = with_outputs(_model(top.sub("model"), trials), task, top)
    aggregator = _aggregator(top.sub("aggregator"), trials)
    tr = top.sub("train")
    train = TrainConfig.read(tr, proximal_mu=0.01 if aggregator.name == "fedprox" else 0.0, task=task)
    local_steps = tr.integer("local_steps", ge=1)
    tr.done()
    evaluate = _evaluate(top.sub("evaluate"))
    mechanisms, he, secagg = _privacy(top.sub("privacy"))
    if secagg is not None and not _has_mean_step(aggregator):  # the coordinator sees only a sum
        problems.append(
            f"{source} [aggregator]: {aggregator.name!r} needs single updates; under secure aggregation "
            "use one with a mean step (fedavg, fedprox, fedadam, fedyogi, fedadagrad)"
        )
    algorithm = _algorithm(top.sub("algorithm"), trials) if "algorithm" in top else NamedSpec("plain")
    attack = top.parse("attack", read_attack)
    if max_ratio is not None and (he is not None or secagg is not None):
        job.problem("max_norm_ratio", "needs the updates' norms, which under HE or secure aggregation the "
                    "coordinator never sees")  # fmt: skip
    trials.append(lambda: problems.extend(f"{source}: {p}" for p in job_problems(  # imports torch
        aggregator=(aggregator.name, aggregator.options), algorithm=(algorithm.name, algorithm.options),
        train=train, min_sites=min_sites if isinstance(min_sites, int) else 1, he=he is not None,
        secagg=secagg is not None, client_dp="client_dp" in mechanisms,
    )))  # fmt: skip
    if "baselines" in top:
        b = top.sub("baselines")
        baselines = BaselineSpec(
            TrainConfig.read(b, task=task),
            b.integer("epochs", 10, ge=1),
            b.strings(
                "drop", (),
                doc="feature columns the baselines (each site alone, pooled) leave out: what a site would "
                "not have without the federation, e.g. a consortium statistic's features",
            ),
            b.integer(
                "steps", None, ge=1,
                doc="optimizer steps of each site-alone model, instead of epochs (pooled: sites x steps)",
            ),
        )  # fmt: skip
        if "steps" in b and "epochs" in b:
            b.problem("steps", "give epochs or steps, not both")
        b.done()
    else:
        baselines = BaselineSpec(train, 10)
    prep = top.sub("prepare", doc="simulation only: what runs before the sites load their data (fedcore run)")
    prepare_statistics = prep.string(
        "statistics", None,
        doc="a statistics file (relative to the job file) run through Flower first, on the same site "
        "ledgers; the app's prepare hook gets its statistics.json (e.g. to build a consortium feature)",
    )  # fmt: skip
    prepare_sites = prep.string(
        "sites", None,
        doc="a folder of site files (relative to the job file) to simulate instead of the app's: the same "
        "sites with another schema (e.g. other features of the same rows; same names, same ledgers)",
    )  # fmt: skip
    prepare_data = prep.string(
        "data", None,
        doc="a name the app's prepare hook knows (which data set to write for this job); passed as "
        "`data=NAME` to a hook with a `data` parameter",
    )  # fmt: skip
    prep.done()
    check_task(
        task, top, dpsgd="dpsgd" in mechanisms,
        binary_scores=evaluate.cost is not None or evaluate.card_precision is not None,
    )  # fmt: skip
    top.done(extra_known=(*_SECTIONS, "task"))
    if not problems:  # a job with a typo is refused before torch loads
        for trial in trials:
            trial()
    raise_problems(problems, f"invalid job{note}")
    table = copy.deepcopy(dict(raw))
    table.setdefault("job", {})["name"] = name
    return JobSpec(
        name=name, rounds=rounds, seed=seed, min_sites=min_sites, max_update_norm=max_norm,
        model=model, train=train, local_steps=local_steps, aggregator=aggregator,
        evaluate=evaluate, mechanisms=mechanisms, he=he, baselines=baselines, table=table,
        prepare_statistics=prepare_statistics, prepare_sites=prepare_sites, prepare_data=prepare_data,
        sites_per_round=per_round, admission_wait=admission_wait, secagg=secagg, algorithm=algorithm,
        attack=attack, max_norm_ratio=max_ratio, reproducible=reproducible,
    )  # fmt: skip


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested: ``privacy.dpsgd.epsilon=3``); values are
    parsed as TOML, else kept as strings. ``raw`` is not modified."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        path = [p.strip() for p in key.split(".")]
        if not sep or len(path) < 2 or not all(path):
            raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. job.rounds=5")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = parsed
    return out


def load_job(path: Path | str, overrides: Sequence[str] = ()) -> JobSpec:
    """Parse a job file, apply ``--set`` overrides, and validate the result strictly."""
    path = Path(path)
    raw = apply_overrides(read_toml(path), overrides)
    note = f" (after --set {' '.join(overrides)})" if overrides else ""
    return parse_job(raw, str(path), default_name=path.stem, note=note)
