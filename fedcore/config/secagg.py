"""Secure aggregation in files: a job's ``[privacy.secagg]`` and a site's ``[secagg]``, strict.

Job (what the coordinator asks; the site re-parses it from the request)::

    [privacy.secagg]
    enabled = true
    modulus_bits = 32          # sums mod 2^k (k <= 32: 4 bytes a parameter; 33..62: 8 bytes)
    clipping_norm = 10.0       # L2 bound each site clips its update to (explicitly; never saturated)
    weight = "examples"        # "examples": a weighted mean, the weights masked in; "uniform": 1 each
    max_weight = 100000        # the largest weight (training rows) a site may bring; more is an error
    noise = "none"             # "none" | "ddgauss" | "skellam": each site's integer noise
    noise_multiplier = 1.0     # with noise: the summed noise's std is noise_multiplier x clipping_norm
    graph = "complete"         # "complete" | "sparse" (the coordinator proposes the site policy's degree)

Site (what the site accepts; never from the coordinator)::

    [secagg]
    identity = "keys/cleveland.ed25519"    # its Ed25519 private key, 0600 (default STATE/secagg/identity.key)
    members = { hungary = "<hex>", ... }   # the members it accepts (itself included), or:
    members_file = "members.toml"          # a file of them; default STATE/secagg/members.toml
    threshold = 3                          # least survivors whose sum it lets be unmasked
    max_corrupt_fraction = 0.34            # sites it assumes may collude with the coordinator
    max_dropout_fraction = 0.3
    trust = "own"                          # whose noise it counts: "own" | "threshold" (t honest sites')
    exact_statistics = false               # answer exact statistics (no DP) inside secure sums
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from fedcore.config.reader import Reader

__all__ = ["NoiseKind", "SecAggSpec", "SiteSecAgg", "parse_job_secagg", "read_site_secagg"]

NoiseKind = Literal["none", "ddgauss", "skellam"]
_NOISE: tuple[NoiseKind, ...] = ("none", "ddgauss", "skellam")
WeightKind = Literal["examples", "uniform"]
GraphKind = Literal["complete", "sparse"]
TrustKind = Literal["own", "threshold"]


@dataclass(frozen=True)
class SecAggSpec:
    """``[privacy.secagg]`` when enabled (see the module docstring)."""

    clipping_norm: float
    modulus_bits: int = 32
    weight: WeightKind = "examples"
    max_weight: int = 100_000
    noise: NoiseKind = "none"
    noise_multiplier: float = 0.0
    graph: GraphKind = "complete"

    @property
    def has_noise(self) -> bool:
        return self.noise != "none"


def parse_job_secagg(t: Reader) -> SecAggSpec | None:
    """Parse ``[privacy.secagg]``; ``None`` unless ``enabled = true``."""
    enabled = t.boolean("enabled", False, doc="secure aggregation: no single key holder (SecAgg+)")
    spec = SecAggSpec(
        clipping_norm=t.number("clipping_norm", 10.0, gt=0, doc="L2 bound each site clips its update to"),
        modulus_bits=t.integer("modulus_bits", 32, ge=8, doc="sums mod 2^k, k in 8..62"),
        weight=t.string("weight", "examples", choices=("examples", "uniform"), doc="mean weights"),
        max_weight=t.integer("max_weight", 100_000, ge=1, doc="the largest weight a site may bring"),
        noise=t.string("noise", "none", choices=_NOISE, doc="each site's integer noise before masking"),
        noise_multiplier=t.number("noise_multiplier", 0.0, ge=0, doc="summed noise std / clipping_norm"),
        graph=t.string("graph", "complete", choices=("complete", "sparse"), doc="who masks with whom"),
    )
    t.done()
    if isinstance(spec.modulus_bits, int) and spec.modulus_bits > 62:
        t.problem("modulus_bits", f"must be in 8..62, got {spec.modulus_bits}")
    if spec.noise != "none" and not (
        isinstance(spec.noise_multiplier, float | int) and spec.noise_multiplier > 0
    ):
        t.problem("noise_multiplier", f"noise = {spec.noise!r} needs noise_multiplier > 0")
    if spec.noise != "none" and spec.weight != "uniform":
        t.problem("weight", 'distributed DP needs weight = "uniform" (a weight would scale the sensitivity)')
    return spec if enabled else None


@dataclass(frozen=True)
class SiteSecAgg:
    """A site's ``[secagg]``: its identity, the members it accepts, its thresholds and trust."""

    identity: Path | None
    members: tuple[tuple[str, str], ...] | None  # name -> hex public key, from the site file itself
    members_file: Path | None
    threshold: int
    min_participants: int
    max_corrupt_fraction: float
    max_dropout_fraction: float
    min_honest: int
    trust: TrustKind
    exact_statistics: bool = False

    def planned_min_honest(self, num_sites: int) -> int:
        """Honest sites behind any sum of a complete-graph round of ``num_sites`` under this site's
        threshold and corruption assumption (``fedcore.secagg.policy.planned_min_honest``)."""
        from fedcore.secagg.policy import planned_min_honest

        return planned_min_honest(
            threshold=self.threshold, max_corrupt_fraction=self.max_corrupt_fraction, num_sites=num_sites
        )


def _members(t: Reader) -> tuple[tuple[str, str], ...] | None:
    raw = t.value("members", None, kind="table", doc="member name -> Ed25519 public key (64 hex characters)")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        t.problem("members", f"must be a table of name = hex key, got {raw!r:.60}")
        return None
    bad = [n for n, k in raw.items() if not isinstance(k, str) or len(k) != 64 or not _is_hex(k)]
    if bad:
        t.problem("members", f"these members' keys are not 64 hex characters: {', '.join(map(str, bad))}")
    return tuple(sorted((str(n), str(k).lower()) for n, k in raw.items()))


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdefABCDEF" for ch in text)


def read_site_secagg(top: Reader, base: Path) -> SiteSecAgg | None:
    """Parse a site file's ``[secagg]`` (``None`` when absent: the site refuses secagg jobs)."""
    if "secagg" not in top:
        return None
    t = top.sub("secagg", doc="secure aggregation: who this site is and which members it accepts")

    def path(key: str, doc: str) -> Path | None:
        value = t.string(key, None, doc=doc)
        return None if value is None else (base / str(value)).resolve()

    threshold = t.integer("threshold", 3, ge=2, doc="least survivors whose sum this site lets be unmasked")
    out = SiteSecAgg(
        identity=path("identity", "its Ed25519 private key file, mode 0600 (`fedcore secagg keygen`)"),
        members=_members(t),
        members_file=path("members_file", "a TOML file of [members] name = hex key"),
        threshold=threshold,
        min_participants=t.integer("min_participants", 3, ge=3, doc="the least sites in a round"),
        max_corrupt_fraction=t.number(
            "max_corrupt_fraction",
            1 / 3,
            ge=0,
            lt=0.5,
            doc="the share of sites it assumes may collude with the coordinator",
        ),
        max_dropout_fraction=t.number(
            "max_dropout_fraction",
            0.3,
            ge=0,
            lt=0.5,
            doc="the share of random dropouts a sparse graph is sized for",
        ),
        min_honest=t.integer("min_honest", 5, ge=2, doc="sparse graph: honest sites behind any sum"),
        trust=cast(
            TrustKind,
            t.string("trust", "own", choices=("own", "threshold"), doc="whose distributed noise it counts"),
        ),
        exact_statistics=t.boolean(
            "exact_statistics", False, doc="answer exact statistics (counts, no DP) inside secure sums"
        ),
    )
    if out.members is not None and out.members_file is not None:
        t.problem("members_file", "give members or members_file, not both")
    t.done()
    return out
