"""A site's privacy policy: the ``[privacy]`` table of its site file, typed and validated at load.

Values the coordinator sends may only tighten this policy, never loosen it. Keys (all optional)::

    [privacy]
    budget_epsilon = 10.0        # the dataset's budget over all jobs (PLD-composed); none: no DP job
    budget_delta = 1e-5
    max_epsilon_per_job = 8.0    # caps the composed cost of one job, every mechanism included
    require_he = false           # refuse jobs whose updates travel unencrypted
    min_sites = 2                # refuse jobs planned for fewer sites (num_sites or min_sites)
    dataset_size = "dp"          # under DP: "dp" releases a noisy training-set size once (charged),
    dataset_size_noise = 10.0    #   std of its Gaussian noise; "public" releases the exact size
    evaluation = "withhold"      # under DP: "withhold" | "dp" (noisy, charged) | "clear" (uncharged)
    evaluation_epsilon = 0.5     # the whole job's evaluations when evaluation = "dp"
    reservation_hours = 24.0     # an admitted job that released nothing stops holding budget after
    min_cell_size = 10           # statistics: groups with a noisy count below this are suppressed
    max_epsilon_per_query = 1.0  # statistics: caps one query (max_epsilon_per_job caps a batch)
    site_statistics = "publish"  # statistics: "publish" its own noisy answers | "withhold": only under HE
    he_noise_share = "full"      # statistics under HE: "full" noise from this site | "split" (1/min_sites)
    unit_column = "customer_id"  # the column naming a customer: the privacy unit of customer-level DP-SGD
    ledger = "..."               # where the ledger / audit log / HE secret key live
    audit = "..."
    he_secret_key = "..."

    [privacy.dpsgd]              # the site's own minimum for a mechanism (any registered name)
    epsilon = 1.0
    unit = "customer"            # dpsgd: this site requires customer-level DP-SGD (refuses "example" jobs)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedcore.config.reader import Reader

__all__ = ["EvaluationRelease", "SitePolicy", "SizeRelease"]

EvaluationRelease = Literal["withhold", "dp", "clear"]
SizeRelease = Literal["public", "dp"]
SiteStatistics = Literal["publish", "withhold"]
_SITE_STATS: tuple[SiteStatistics, ...] = ("publish", "withhold")
NoiseShare = Literal["full", "split"]
_NOISE_SHARE: tuple[NoiseShare, ...] = ("full", "split")
_EVALUATION: tuple[EvaluationRelease, ...] = ("withhold", "dp", "clear")
_SIZE: tuple[SizeRelease, ...] = ("public", "dp")


@dataclass(frozen=True)
class SitePolicy:
    """The site's own rules; see the module docstring for the keys and their meaning."""

    budget_epsilon: float | None = None
    budget_delta: float = 1e-5
    max_epsilon_per_job: float | None = None
    require_he: bool = False
    min_sites: int = 2
    dataset_size: SizeRelease = "dp"
    dataset_size_noise: float = 10.0
    evaluation: EvaluationRelease = "withhold"
    evaluation_epsilon: float = 0.5
    reservation_hours: float = 24.0
    min_cell_size: int = 10
    max_epsilon_per_query: float | None = None
    site_statistics: SiteStatistics = "publish"
    he_noise_share: NoiseShare = "full"
    unit_column: str | None = None
    mechanisms: Mapping[str, Any] = field(default_factory=dict)
    ledger: Path | None = None
    audit: Path | None = None
    he_secret_key: Path | None = None

    @classmethod
    def read(cls, t: Reader, base: Path) -> SitePolicy:
        """Parse ``[privacy]``; paths are relative to ``base`` (the site file's folder)."""

        def path(key: str, doc: str) -> Path | None:
            value = t.string(key, None, doc=doc)
            return None if value is None else (base / value).resolve()

        mechanisms = {}
        if any(isinstance(v, Mapping) for v in t.table.values()):  # [privacy.<mechanism>] tables: the
            from fedcore.privacy.mechanisms import get_mechanism, mechanism_names  # registry loads torch

            mechanisms = {
                n: get_mechanism(n).parse(t.sub(n, doc=f"the site's own minimum for `[privacy.{n}]` jobs"))
                for n in mechanism_names()
                if n in t
            }
        policy = cls(
            budget_epsilon=t.number("budget_epsilon", None, gt=0, doc="the dataset's budget over all jobs"),
            budget_delta=t.number("budget_delta", 1e-5, gt=0, lt=1, doc="the delta the budget is kept at"),
            max_epsilon_per_job=t.number(
                "max_epsilon_per_job", None, gt=0, doc="caps one job's whole plan, every release composed"
            ),
            require_he=t.boolean("require_he", False, doc="refuse jobs whose updates travel unencrypted"),
            min_sites=t.integer("min_sites", 2, ge=1, doc="refuse jobs planned for fewer sites"),
            dataset_size=t.string(
                "dataset_size",
                "dp",
                choices=_SIZE,
                doc="under DP: release the training-set size noised, or exact",
            ),
            dataset_size_noise=t.number(
                "dataset_size_noise", 10.0, gt=0, doc="std of the Gaussian noise on a DP-released size"
            ),
            evaluation=t.string(
                "evaluation", "withhold", choices=_EVALUATION, doc="under DP: what happens to test metrics"
            ),
            evaluation_epsilon=t.number(
                "evaluation_epsilon", 0.5, gt=0, doc='a job\'s evaluations together, when evaluation = "dp"'
            ),
            reservation_hours=t.number(
                "reservation_hours",
                24.0,
                gt=0,
                doc="an admitted job that released nothing holds budget this long",
            ),
            min_cell_size=t.integer(
                "min_cell_size",
                10,
                ge=1,
                doc="statistics: a group with a (noisy) count below this is suppressed",
            ),
            max_epsilon_per_query=t.number("max_epsilon_per_query", None, gt=0, doc="caps one statistic"),
            site_statistics=t.string(
                "site_statistics",
                "publish",
                choices=_SITE_STATS,
                doc="statistics: send its own noisy answers (publish) or answer only under HE (withhold)",
            ),
            he_noise_share=t.string(
                "he_noise_share",
                "full",
                choices=_NOISE_SHARE,
                doc=(
                    "statistics under HE: add full noise (safe alone) or a 1/min_sites share (central "
                    "accuracy; trusts the other sites and the coordinator's count of sums)"
                ),
            ),
            unit_column=t.string(
                "unit_column",
                None,
                doc=(
                    "the column whose value names one customer (tag it identifier): the privacy unit of "
                    'customer-level DP-SGD ([privacy.dpsgd] unit = "customer"); the site decides it'
                ),
            ),
            mechanisms=mechanisms,
            ledger=path("ledger", "the ledger file (default: STATE/<site>/ledger.db)"),
            audit=path("audit", "the audit log (default: STATE/<site>/audit.db)"),
            he_secret_key=path("he_secret_key", "the HE secret key (default: STATE/<site>/he_secret.ctx)"),
        )
        t.done()
        return policy
