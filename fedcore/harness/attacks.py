"""A job's ``[attack]`` in a simulation: checked before Flower starts, applied, stamped on the outputs.

Simulation only: ``fedcore node`` never imports this module or ``fedcore.attacks``
(``tests/test_layout.py``), and a real site refuses a job with ``[attack]``. In a simulation:

- an **update attack** (``fedcore.attacks.Attack``: sign flip, scaling, Gaussian, ALIE, IPM) is
  applied by the coordinator (``UpdateAttacks``, the strategy's ``tamper``) to the attacking sites'
  honestly trained updates, after the round's replies are checked and before the norm screen and
  the aggregator: an omniscient attacker, which sees the round's honest updates (ALIE, IPM);
- a **data attack** (``DataAttack``: label flip) changes the attacking sites' training labels
  (``PoisonedLabels``, the ClientApp's ``simulation`` hook); they then train and reply honestly.

Randomness: ``numpy`` generators seeded from the job's seed, the round and the site (reproducible;
not a secure source: nothing here is a privacy mechanism). Every output of an attacked run says so:
``metrics.json`` and ``summary.json`` carry ``attack``, ``report.md`` a section (``stamp``).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedcore.aggregators.base import ClientUpdate
from fedcore.attacks import Attack, DataAttack, attack_factory, make_attack
from fedcore.config.job import AttackSpec, JobRequest, JobSpec
from fedcore.errors import ConfigError, FedcoreError
from fedcore.tasks import Task
from fedcore.tasks.classification import MultiClass

__all__ = ["PoisonedLabels", "UpdateAttacks", "attack_hooks", "build_attack", "check_attack", "stamp"]


def build_attack(spec: AttackSpec, task: Task | None = None) -> Attack | DataAttack:
    """The attack ``spec`` names, with its options; an attack taking ``f`` (ALIE: the number of
    attackers) gets ``len(spec.sites)``, and one taking ``num_classes`` (label flip) the job's
    multi-class task's class count, unless the job sets them."""
    options: dict[str, Any] = dict(spec.options)
    params = inspect.signature(attack_factory(spec.name)).parameters
    if "f" in params:
        options.setdefault("f", len(spec.sites))
    if "num_classes" in params and isinstance(task, MultiClass):
        options.setdefault("num_classes", task.classes)
    return make_attack(spec.name, **options)


def _key(*parts: object) -> list[int]:
    """A numpy seed sequence from ``parts`` (a site name is text: hashed, stable across processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def check_attack(spec: JobSpec, sites: Sequence[str], where: str) -> None:
    """Refuse (``ConfigError``, one line per problem) an ``[attack]`` that names an unknown attack or
    site, options the attack rejects, no honest site, or an update attack under HE or secure
    aggregation."""
    attack = spec.attack
    if attack is None:
        return
    problems = []
    try:
        built = build_attack(attack, spec.task)
    except (FedcoreError, TypeError, ValueError) as err:
        problems.append(str(err))
        built = None
    unknown = [s for s in attack.sites if s not in sites]
    if unknown:
        problems.append(f"sites {unknown} are not sites of this simulation; its sites: {list(sites)}")
    if set(attack.sites) >= set(sites):
        problems.append("every site attacks: leave at least one honest site")
    if (spec.he is not None or spec.secagg is not None) and isinstance(built, Attack):
        mode, section = (
            ("HE", "[privacy.he]") if spec.he is not None else ("secure aggregation", "[privacy.secagg]")
        )
        problems.append(
            f"{attack.name!r} replaces plaintext updates at the coordinator, which under {mode} sees only "
            f"their sum; run it without {section} (label_flip, at the sites, runs under {mode})"
        )
    if isinstance(built, DataAttack) and spec.task.name not in ("binary", "multiclass"):  # fedcore.tasks
        problems.append(f"{attack.name!r} changes class labels; the job's task {spec.task.name!r} has none")
    if problems:
        raise ConfigError(f"{where} [attack]: " + "; ".join(problems))


@dataclass(frozen=True)
class UpdateAttacks:
    """The coordinator's ``tamper``: the attacking sites' updates of a round replaced by the attack's."""

    attack: AttackSpec
    seed: int

    def __call__(self, updates: list[ClientUpdate], server_round: int) -> list[ClientUpdate]:
        built = build_attack(self.attack)
        if not isinstance(built, Attack):
            return updates  # a data attack acts at the sites
        bad = set(self.attack.sites)
        honest = [u for u in updates if u.site not in bad]
        view = honest or [u for u in updates if u.site in bad]  # no honest reply: its own updates
        out = []
        for u in updates:
            if u.site in bad:
                rng = np.random.default_rng(_key(self.seed, server_round, u.site))
                sent = built.corrupt(u, honest=view, rng=rng)
                u = replace(
                    sent, delta=tuple(np.asarray(a, np.float32).astype(np.float64) for a in sent.delta)
                )
            out.append(u)
        return out


@dataclass(frozen=True)
class PoisonedLabels:
    """The ClientApp's ``simulation`` hook: an attacking site's training labels under a data attack
    (the same rows flipped every round: drawn from the job's seed and the site)."""

    def train_labels(self, request: JobRequest, site: str, y: NDArray[np.float32]) -> NDArray[np.float32]:
        attack = request.spec.attack
        if attack is None or site not in attack.sites:
            return y
        built = build_attack(attack, request.spec.task)
        if not isinstance(built, DataAttack):
            return y
        rng = np.random.default_rng(_key(request.spec.seed, site))
        return np.asarray(built.corrupt_labels(y, rng=rng), dtype=y.dtype)


def stamp(summary: dict[str, Any], spec: JobSpec) -> None:
    """Mark a run's summary (and so its report) as run under ``spec``'s attack, if it has one."""
    attack = spec.attack
    if attack is None:
        return
    summary["attack"] = {**attack.as_dict(), "simulation_only": True}
    options = ", ".join(f"{k}={v}" for k, v in attack.options.items())
    summary.setdefault("report_sections", []).insert(
        0,
        f"## Simulated attack\n\nThis run was attacked (simulation only): `{attack.name}`"
        f"{f' ({options})' if options else ''} at {', '.join(attack.sites)}. Every figure above is under "
        "that attack; the rejected replies are what the coordinator's checks caught.",
    )


def attack_hooks(spec: JobSpec) -> dict[str, Any]:
    """``simulate``'s ``tamper`` and ``simulation`` for ``spec`` (none without ``[attack]``)."""
    if spec.attack is None:
        return {}
    return {"tamper": UpdateAttacks(spec.attack, spec.seed), "simulation": PoisonedLabels()}
