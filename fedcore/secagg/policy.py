"""A site's secure-aggregation policy and the thresholds it derives for one round (README.md).

Nothing here comes from the coordinator: the member list, the least number of survivors, the
assumed fraction of corrupt sites and the graph's security level are the site's. From them and the
coordinator's ``RoundRequest`` the site derives, by itself, the round's ``RoundParams``:

- ``quorum`` q = max(threshold, floor((n + floor(gamma n)) / 2) + 1): how many survivors must sign
  the same survivor set before this site reveals anything. An honest site signs one set per round;
  two different sets each signed by q sites would need 2q - n <= gamma n sites signing both, so at
  most one set can ever reach the quorum, and every unmasked sum covers at least q sites.
- ``share_threshold`` t: the Shamir threshold of this site's secrets among its neighbours. Complete
  graph: t = q - 1 over the n - 1 others (t > gamma n, so the corrupt sites alone hold too few
  shares). Sparse graph: t = c* + g - 1, c* the most corrupt neighbours a site has except with
  probability 2^-security_bits, g the least number of honest sites behind any sum (README.md).
- ``min_honest``: honest sites' inputs (and their noise) inside any sum the coordinator can learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcore.errors import ConfigError, SecAggError
from fedcore.secagg.graph import is_complete, smallest_degree, sparse_threshold
from fedcore.secagg.keys import Members
from fedcore.secagg.messages import RoundRequest
from fedcore.secagg.prg import MAX_BITS

__all__ = ["RoundParams", "SecAggPolicy", "planned_min_honest", "proposed_degree", "round_params"]


@dataclass(frozen=True)
class SecAggPolicy:
    """What one site accepts. Values from the coordinator may only meet it, never loosen it.

    Parameters
    ----------
    members
        The federation's members and their Ed25519 public keys, from the site's own file.
    threshold
        The least number of survivors whose sum this site lets be unmasked.
    min_participants
        The least number of participants in a round.
    max_corrupt_fraction
        gamma: the fraction of participants this site assumes may collude with the coordinator.
    max_dropout_fraction
        delta: sizes the sparse graph so a round completes after this fraction of random dropouts.
    min_honest
        g (sparse graph): honest sites behind any sum the coordinator can learn; at least 2.
    security_bits, correctness_bits
        Sparse graph: failure probabilities 2^-bits of privacy and of completing the round.
    complete_graph_up_to
        Up to this many participants the site requires the complete graph.
    max_length
        The longest vector the site masks in one round.
    """

    members: Members
    threshold: int
    min_participants: int = 3
    max_corrupt_fraction: float = 1 / 3
    max_dropout_fraction: float = 0.3
    min_honest: int = 5
    security_bits: int = 64
    correctness_bits: int = 20
    complete_graph_up_to: int = 100
    max_length: int = 1 << 28

    def __post_init__(self) -> None:
        problems = []
        if self.threshold < 2:
            problems.append(f"threshold must be >= 2 survivors, got {self.threshold}")
        if self.min_participants < max(3, self.threshold):
            problems.append(
                f"min_participants must be >= max(3, threshold={self.threshold}), got {self.min_participants}"
            )
        if not 0 <= self.max_corrupt_fraction < 0.5:
            problems.append(f"max_corrupt_fraction must be in [0, 0.5), got {self.max_corrupt_fraction}")
        if not 0 <= self.max_dropout_fraction < 0.5:
            problems.append(f"max_dropout_fraction must be in [0, 0.5), got {self.max_dropout_fraction}")
        if self.min_honest < 2:
            problems.append(
                f"min_honest must be >= 2 (1 would let one site's input out), got {self.min_honest}"
            )
        if not 20 <= self.security_bits <= 128 or not 1 <= self.correctness_bits <= 64:
            problems.append("security_bits must be in 20..128 and correctness_bits in 1..64")
        if problems:
            raise ConfigError("secure-aggregation policy: " + "; ".join(problems))


@dataclass(frozen=True)
class RoundParams:
    """What a site derived for one round from its policy and the request."""

    n: int
    degree: int
    quorum: int
    share_threshold: int
    min_honest: int

    @property
    def complete(self) -> bool:
        return is_complete(self.n, self.degree)


def planned_min_honest(*, threshold: int, max_corrupt_fraction: float, num_sites: int) -> int:
    """Honest sites behind any sum of a complete-graph round of ``num_sites`` (README.md, point 3):
    the quorum ``max(threshold, floor((n + floor(gamma n)) / 2) + 1)`` less the corrupt sites."""
    corrupt = math.floor(max_corrupt_fraction * num_sites)
    quorum = max(threshold, (num_sites + corrupt) // 2 + 1)
    return max(1, quorum - corrupt)


def proposed_degree(policy: SecAggPolicy, n: int) -> int:
    """The degree a coordinator should propose for ``n`` sites of this policy (``n - 1``: complete)."""
    if n <= policy.complete_graph_up_to:
        return n - 1
    return smallest_degree(
        n,
        corrupt_fraction=policy.max_corrupt_fraction,
        dropout_fraction=policy.max_dropout_fraction,
        min_honest=policy.min_honest,
        security_bits=policy.security_bits,
        correctness_bits=policy.correctness_bits,
    )


def _request_problems(policy: SecAggPolicy, site: str, req: RoundRequest) -> list[str]:
    n, problems = len(req.participants), []
    if list(req.participants) != sorted(set(req.participants)):
        problems.append("participants must be sorted and unique")
    if site not in req.participants:
        problems.append(f"this site {site!r} is not among the participants")
    unknown = policy.members.unknown(req.participants)
    if unknown:
        problems.append(f"participants not in this site's member list: {unknown}")
    if n < policy.min_participants:
        problems.append(f"{n} participants, this site requires at least {policy.min_participants}")
    if not 1 <= req.modulus_bits <= MAX_BITS or not 1 <= req.length <= policy.max_length:
        problems.append(f"modulus_bits {req.modulus_bits} or length {req.length} out of range")
    if req.round < 0 or not req.job_id:
        problems.append(f"bad job id {req.job_id!r} or round {req.round}")
    return problems


def round_params(policy: SecAggPolicy, site: str, req: RoundRequest) -> RoundParams:
    """Check ``req`` against ``policy`` and derive the round's thresholds; refusals list every problem."""
    problems = _request_problems(policy, site, req)
    n = len(req.participants)
    corrupt = math.floor(policy.max_corrupt_fraction * n)
    quorum = max(policy.threshold, (n + corrupt) // 2 + 1)
    if quorum > n:
        problems.append(f"quorum {quorum} exceeds the {n} participants (threshold {policy.threshold})")
    if problems:
        raise SecAggError(f"round {req.round} of job {req.job_id!r} refused: " + "; ".join(problems))
    if is_complete(n, req.degree):
        return RoundParams(n, req.degree, quorum, quorum - 1, quorum - corrupt)
    least = proposed_degree(policy, n)
    if n <= policy.complete_graph_up_to or req.degree % 2 or not least <= req.degree < n - 1:
        raise SecAggError(
            f"round {req.round}: graph degree {req.degree} refused for {n} sites; this site requires the "
            f"complete graph up to {policy.complete_graph_up_to} sites, else an even degree >= {least}"
        )
    t = sparse_threshold(
        n,
        req.degree,
        corrupt_fraction=policy.max_corrupt_fraction,
        min_honest=policy.min_honest,
        security_bits=policy.security_bits,
    )
    if t > req.degree:
        raise SecAggError(f"round {req.round}: threshold {t} exceeds the graph degree {req.degree}; refused")
    return RoundParams(n, req.degree, quorum, t, policy.min_honest)
