"""A site whose node restarts under a new node id takes its old node's place in the running job.

The coordinator is fedcore's real ``FedcoreStrategy``; its ``rejoin`` hook (in a deployment: describe
and admit the new nodes, ``fedcore.flower.server_app._rejoiner``, run for real by the slow test in
``test_faults.py``) is given here as the answer the sites would give.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedcore.aggregators import make_aggregator
from fedcore.flower.serde import arrays_to_record, opaque_to_record
from fedcore.flower.strategy import FedcoreStrategy
from fedcore.he import encrypt_update
from fedcore.he.keys import generate_keyset

NAMES = {1: "a", 2: "b", 3: "c"}
GLOBAL = (np.zeros((3, 2)), np.zeros(2))


def _strategy(**kw: object) -> FedcoreStrategy:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    return FedcoreStrategy(
        kw.pop("aggregator", make_aggregator("fedavg")),  # type: ignore[arg-type]
        node_ids=list(NAMES),
        min_sites=2,
        site_names=NAMES,
        num_rounds=3,
        **kw,  # type: ignore[arg-type]
    )


def _train(strategy: FedcoreStrategy, server_round: int, arrays: object) -> list[Message]:
    record = arrays if not isinstance(arrays, tuple) else arrays_to_record(arrays)
    return list(strategy.configure_train(server_round, record, ConfigRecord({}), cast(Grid, None)))  # type: ignore[arg-type]


def test_a_restarted_site_takes_its_old_nodes_place_and_a_stranger_does_not() -> None:
    strategy = _strategy()
    asked: list[Mapping[int, str]] = []
    answers = [{}, {7: "c", 9: "zed"}, {}]  # round 2: site c is back as node 7; "zed" is no site of the job

    def rejoin(grid: Grid, job_sites: Mapping[int, str]) -> dict[int, str]:
        asked.append(dict(job_sites))
        return answers[len(asked) - 1]

    strategy.rejoin = rejoin
    assert [m.metadata.dst_node_id for m in _train(strategy, 1, GLOBAL)] == [1, 2, 3]
    assert [m.metadata.dst_node_id for m in _train(strategy, 2, GLOBAL)] == [1, 2, 7]
    assert strategy.site_names[7] == "c" and 9 not in strategy.site_names
    assert [m.metadata.dst_node_id for m in _train(strategy, 3, GLOBAL)] == [1, 2, 7]
    assert asked[0] == NAMES and asked[2] == {1: "a", 2: "b", 7: "c"}  # the hook sees the job's sites


def test_under_he_a_sum_is_held_until_every_site_of_the_job_applied_it() -> None:
    secret = generate_keyset()
    strategy = _strategy(aggregator=None, he_public=secret.public())
    assert strategy.he is not None
    strategy.he.at = {1: 2, 2: 2, 3: 1}  # site c (node 3) missed round 2: it holds round 1's model
    sums = {r: encrypt_update(secret, GLOBAL, weight=1.0).to_bytes() for r in (1, 2, 3)}
    for r in (1, 2):
        strategy.he.keep(r, sums[r], strategy.node_ids)
    assert sorted(strategy.he.sums) == [2]  # round 1's sum every site applied is dropped
    strategy.rejoin = lambda grid, sites: {7: "c"}  # c comes back as node 7 for round 4
    strategy.he.keep(3, sums[3], strategy.node_ids)
    messages = _train(strategy, 4, opaque_to_record(sums[3]))
    to_c = next(m for m in messages if m.metadata.dst_node_id == 7)
    missed = to_c.content.array_records["he-missed"]
    assert sorted(missed) == ["r2"]  # round 3's sum is the message's own; round 2's is caught up
    assert all("he-missed" not in m.content.array_records for m in messages if m.metadata.dst_node_id != 7)
