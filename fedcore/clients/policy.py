"""A site's privacy policy (``[privacy]`` in site.toml) and how a job's requests are reconciled with it.

The rule everywhere: values the coordinator sends may **tighten** the site's settings, never loosen
them. A site that declares DP-SGD at epsilon 1 runs at epsilon <= 1 whatever the job asks; a job
asking for DP at a site that declares none gets the job's DP (that is a tightening too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedcore.config import SiteConfig
from fedcore.errors import ConfigError, PolicyError

__all__ = ["ClientDp", "DpSgd", "SitePolicy", "tighten_client_dp", "tighten_dpsgd"]


@dataclass(frozen=True)
class DpSgd:
    """Sample-level DP-SGD for the whole job: target (epsilon, delta), per-example clip norm."""

    epsilon: float
    delta: float
    max_grad_norm: float = 1.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, where: str) -> DpSgd | None:
        if not raw:
            return None
        try:
            out = cls(
                float(raw["epsilon"]), float(raw.get("delta", 1e-5)), float(raw.get("max_grad_norm", 1.0))
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"{where}: [privacy.dpsgd] needs epsilon (and delta, max_grad_norm): {err}"
            ) from err
        if not (out.epsilon > 0 and 0 < out.delta < 1 and out.max_grad_norm > 0):
            raise ConfigError(
                f"{where}: [privacy.dpsgd] needs epsilon > 0, 0 < delta < 1, max_grad_norm > 0; got {out}"
            )
        return out


@dataclass(frozen=True)
class ClientDp:
    """Client-level DP: clip each site's update to ``clipping_norm`` and add Gaussian noise."""

    mode: Literal["central", "distributed"]
    clipping_norm: float
    noise_multiplier: float
    clipping: Literal["fixed", "adaptive"] = "fixed"  # adaptive: Andrew et al. 2021, central only

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, where: str) -> ClientDp | None:
        if not raw:
            return None
        mode = str(raw.get("mode", "distributed"))
        if mode not in ("central", "distributed"):
            raise ConfigError(
                f"{where}: [privacy.client_dp] mode must be 'central' or 'distributed', got {mode!r}"
            )
        clipping = str(raw.get("clipping", "fixed"))
        if clipping not in ("fixed", "adaptive") or (clipping == "adaptive" and mode != "central"):
            raise ConfigError(
                f"{where}: [privacy.client_dp] clipping must be 'fixed' or 'adaptive' (adaptive with "
                f"mode = 'central' only), got clipping={clipping!r}, mode={mode!r}"
            )
        try:
            out = cls(mode, float(raw["clipping_norm"]), float(raw["noise_multiplier"]), clipping)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(
                f"{where}: [privacy.client_dp] needs clipping_norm and noise_multiplier: {err}"
            ) from err
        if not (out.clipping_norm > 0 and out.noise_multiplier > 0):
            raise ConfigError(f"{where}: clipping_norm and noise_multiplier must be > 0, got {out}")
        return out


def tighten_dpsgd(site: DpSgd | None, job: DpSgd | None, *, max_epsilon: float | None) -> DpSgd | None:
    """The strictest of the site's and the job's DP-SGD settings (smaller epsilon and delta)."""
    if site is None and job is None:
        return None
    cands = [c for c in (site, job) if c is not None]
    eps = min(c.epsilon for c in cands)
    if max_epsilon is not None:
        eps = min(eps, max_epsilon)
    return DpSgd(eps, min(c.delta for c in cands), min(c.max_grad_norm for c in cands))


def tighten_client_dp(site: ClientDp | None, job: ClientDp | None) -> ClientDp | None:
    """More noise and a smaller clip norm win; distributed beats central (nobody sees a raw update)."""
    if site is None and job is None:
        return None
    cands = [c for c in (site, job) if c is not None]
    mode = "distributed" if any(c.mode == "distributed" for c in cands) else "central"
    # adaptive clipping accounts to the same Gaussian(z) per round (Andrew et al. 2021, Sec. 3)
    clipping = "adaptive" if mode == "central" and any(c.clipping == "adaptive" for c in cands) else "fixed"
    return ClientDp(
        mode,  # type: ignore[arg-type]
        min(c.clipping_norm for c in cands),
        max(c.noise_multiplier for c in cands),
        clipping,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class SitePolicy:
    """``[privacy]`` of a site file.

    ``budget_epsilon``/``budget_delta`` is the budget of the site's dataset over all jobs;
    ``max_epsilon_per_job`` caps one job; ``dpsgd``/``client_dp`` are the site's own minimum
    protections; ``require_he`` refuses jobs whose updates would travel unencrypted.
    """

    budget_epsilon: float | None = None
    budget_delta: float = 1e-5
    max_epsilon_per_job: float | None = None
    dpsgd: DpSgd | None = None
    client_dp: ClientDp | None = None
    require_he: bool = False
    ledger: Path | None = None
    audit: Path | None = None
    he_secret_key: Path | None = None

    @classmethod
    def from_site(cls, site: SiteConfig) -> SitePolicy:
        raw = dict(site.privacy)
        where = str(site.path)

        def path(key: str) -> Path | None:
            return (site.path.parent / str(raw[key])).resolve() if key in raw else None

        budget = raw.get("budget_epsilon")
        return cls(
            budget_epsilon=None if budget is None else float(budget),
            budget_delta=float(raw.get("budget_delta", 1e-5)),
            max_epsilon_per_job=None
            if "max_epsilon_per_job" not in raw
            else float(raw["max_epsilon_per_job"]),
            dpsgd=DpSgd.parse(raw.get("dpsgd"), where),
            client_dp=ClientDp.parse(raw.get("client_dp"), where),
            require_he=bool(raw.get("require_he", False)),
            ledger=path("ledger"),
            audit=path("audit"),
            he_secret_key=path("he_secret_key"),
        )

    def check_he(self, he_on: bool, site: str) -> None:
        if self.require_he and not he_on:
            raise PolicyError(
                f"site {site!r} requires homomorphic encryption (require_he = true in its site file) "
                "but the job sends updates in the clear; switch HE on in the job: [privacy.he] enabled = true"
            )
