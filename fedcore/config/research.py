"""A job's research sections: ``[attack]`` (simulation only), and the checks that tie the job's
aggregator and ``[algorithm]`` to the rest of the job before round 1.

``[attack]`` is read here without importing ``fedcore.attacks``: a site parses every job it is sent
(this module runs at a hospital's node), and a node never loads the attacks. Its name and options
are checked against the attack registry by the simulation harness, before Flower starts
(``fedcore.harness.attacks.check_attack``); a real node refuses any job that has the section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcore.config.reader import Reader
from fedcore.config.train import TrainConfig
from fedcore.errors import FedcoreError

__all__ = ["AttackSpec", "job_problems", "read_attack"]


@dataclass(frozen=True)
class AttackSpec:
    """``[attack]``: a Byzantine behaviour (``name``, from ``fedcore.attacks``) at the simulated
    ``sites``, with its keyword ``options`` (e.g. ``factor`` for ``scaling``)."""

    name: str
    sites: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """What every output of an attacked run is stamped with."""
        return {"name": self.name, "sites": list(self.sites), "options": dict(self.options)}


def read_attack(t: Reader) -> AttackSpec:
    """``[attack] name = ..., sites = [...]`` and the attack's own options (checked by the harness)."""
    name = t.string("name", doc="a registered attack: sign_flip, scaling, gaussian, alie, ipm, label_flip")
    sites = t.strings("sites", doc="the simulated sites that attack (by site name); the others are honest")
    options = {k: v for k, v in t.table.items() if k not in ("name", "sites")}
    t.done(extra_known=options)
    if isinstance(sites, tuple) and not sites:
        t.problem("sites", 'names no site: list the simulated sites that attack, e.g. sites = ["va"]')
    if isinstance(sites, tuple) and len(set(sites)) != len(sites):
        t.problem("sites", f"names a site twice: {list(sites)}")
    return AttackSpec(str(name).strip().lower(), tuple(sites) if isinstance(sites, tuple) else (), options)


def job_problems(
    *,
    aggregator: tuple[str, Mapping[str, Any]],
    algorithm: tuple[str, Mapping[str, Any]],
    train: TrainConfig,
    min_sites: int,
    he: bool,
    secagg: bool = False,
    client_dp: bool,
) -> list[str]:
    """Why the job's aggregator or algorithm cannot run with the rest of the job, one line each: a
    robust rule too small for ``min_sites``, a rule or algorithm HE cannot carry, an algorithm with
    extras or a server part under secure aggregation (the coordinator sees only the masked sum: an
    extra sent beside it would bypass it), an algorithm whose ``[train]`` settings do not suit it.
    Names or options already refused are not checked again (an aggregator without a mean step under
    secure aggregation: ``parse_job``)."""
    from fedcore.aggregators.wrappers import build_aggregator
    from fedcore.aggregators.wrappers import job_problems as aggregator_problems
    from fedcore.algorithms import algorithm_problems, make_algorithm

    out = []
    try:
        agg = build_aggregator(*aggregator)
    except (FedcoreError, TypeError, ValueError):
        pass
    else:
        out += aggregator_problems(agg, name=aggregator[0], min_sites=min_sites, he=he, client_dp=client_dp)
    try:
        algo = make_algorithm(*algorithm)
    except (FedcoreError, TypeError, ValueError):
        return out
    return out + algorithm_problems(algo, train=train, he=he, secagg=secagg)
