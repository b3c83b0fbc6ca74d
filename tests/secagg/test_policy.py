"""A site derives its round's thresholds itself; the graph is the same for every site and symmetric."""

from __future__ import annotations

import math

import pytest

from fedcore.errors import ConfigError, SecAggError
from fedcore.secagg import Members, RoundRequest, SecAggPolicy, proposed_degree, round_params
from fedcore.secagg.graph import graph_seed, neighbours, tail_count

from .helpers import federation, names


@pytest.mark.parametrize(
    ("n", "quorum", "threshold", "honest"), [(3, 3, 2, 2), (5, 4, 3, 3), (10, 7, 6, 4), (100, 67, 66, 34)]
)
def test_complete_graph_thresholds(n: int, quorum: int, threshold: int, honest: int) -> None:
    policy = federation(n)["site000"][0]
    p = round_params(policy, "site000", RoundRequest("job", 1, names(n), n - 1, 32, 8))
    assert (p.quorum, p.share_threshold, p.min_honest, p.complete) == (quorum, threshold, honest, True)
    corrupt = math.floor(n / 3)
    assert 2 * p.quorum - n > corrupt  # two sets cannot both reach the quorum
    assert p.share_threshold > corrupt  # the corrupt sites alone hold too few shares


def test_site_threshold_can_only_raise_the_quorum() -> None:
    policy = federation(10, threshold=9, min_participants=9)["site000"][0]
    p = round_params(policy, "site000", RoundRequest("job", 1, names(10), 9, 32, 8))
    assert p.quorum == 9


def test_policy_reports_every_problem() -> None:
    members = Members.of({})
    with pytest.raises(ConfigError, match=r"threshold must be >= 2.*max_corrupt_fraction.*min_honest"):
        SecAggPolicy(members, threshold=1, max_corrupt_fraction=0.6, min_honest=1)


def test_request_problems_are_listed_together() -> None:
    policy = federation(4)["site000"][0]
    bad = RoundRequest("job", 1, ("site000", "site001"), 1, 99, 8)
    with pytest.raises(SecAggError, match=r"2 participants, this site requires at least 3; modulus_bits 99"):
        round_params(policy, "site000", bad)


def test_sparse_graph_is_symmetric_regular_and_public() -> None:
    parts = names(200)
    seed = graph_seed("job", 3, parts, 20)
    graph = neighbours(parts, degree=20, seed=seed)
    assert all(len(v) == 20 and u not in v for u, v in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert graph == neighbours(list(reversed(parts)), degree=20, seed=seed)  # any site recomputes it
    assert graph != neighbours(parts, degree=20, seed=graph_seed("job", 4, parts, 20))  # fresh per round


def test_sparse_threshold_meets_its_tail_bounds() -> None:
    policy = federation(
        300, max_corrupt_fraction=0.1, max_dropout_fraction=0.3, min_honest=3, security_bits=40
    )
    pol = policy["site000"][0]
    k = proposed_degree(pol, 300)
    p = round_params(pol, "site000", RoundRequest("job", 1, names(300), k, 32, 8))
    c_star = tail_count(300, 30, k, 40)
    assert p.share_threshold == c_star + 3 - 1 and p.share_threshold <= k - tail_count(300, 90, k, 20)
    assert k < 100 and p.min_honest == 3
