"""Bad train replies at the coordinator: each is rejected with its reason, the round goes on with the
valid ones when enough remain, and the job stops with one line naming the rejected sites otherwise.

The coordinator is fedcore's real ``FedcoreStrategy`` (real FedAvg, real TenSEAL key sets); the replies
are crafted Flower ``Message``s, as a misbehaving or hostile site would send them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedcore.aggregators import make_aggregator
from fedcore.errors import UpdateError
from fedcore.flower.replies import MAX_METRICS, MAX_REASON_CHARS, ciphertext_bound
from fedcore.flower.serde import arrays_from_record, arrays_to_record, opaque_to_record
from fedcore.flower.strategy import FedcoreStrategy
from fedcore.he import EncryptedUpdate, decrypt_mean, encrypt_update
from fedcore.he.keys import SecretContext, generate_keyset

NAMES = {1: "a", 2: "b", 3: "c"}
GLOBAL = (np.arange(6, dtype=np.float64).reshape(3, 2) / 10, np.array([0.5, -0.5]))
GOOD = {1: (np.full((3, 2), 0.1), np.array([0.2, 0.0])), 2: (np.full((3, 2), -0.3), np.array([0.0, 0.4]))}
BAD_DELTA = (np.full((3, 2), 0.05), np.array([0.1, 0.1]))


def _strategy(
    he: SecretContext | None = None, *, min_sites: int = 2
) -> tuple[FedcoreStrategy, list[Message]]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    strategy = FedcoreStrategy(
        make_aggregator("fedavg") if he is None else None,
        he_public=None if he is None else he.public(),
        node_ids=list(NAMES),
        min_sites=min_sites,
        max_update_norm=5.0,
        site_names=NAMES,
        num_rounds=1,
    )
    asked = strategy.configure_train(1, arrays_to_record(GLOBAL), ConfigRecord({}), cast(Grid, None))
    return strategy, list(asked)


def _reply(
    to: Message,
    arrays: ArrayRecord | None,
    metrics: dict[str, Any] | None = None,
    *,
    site: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Message:
    content = RecordDict(
        {"site": ConfigRecord({"site": site or NAMES[to.metadata.dst_node_id], "audit-head": "1 x"})}
    )
    if arrays is not None:
        content["arrays"] = arrays
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    for key, value in (extra or {}).items():
        content[key] = value
    return Message(content, reply_to=to)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _plain(to: Message, delta: tuple[np.ndarray, ...] = BAD_DELTA, n: float = 10, **kw: Any) -> Message:
    return _reply(to, arrays_to_record(delta), {"num-examples": n, "train_loss": 0.5}, **kw)


def _forged(shape_label: tuple[int, ...], data: np.ndarray) -> ArrayRecord:
    """Tensor 0 labelled float32 ``shape_label`` but holding ``data``; tensor 1 as it should be."""
    record = arrays_to_record(BAD_DELTA)
    record["0"] = Array(dtype="float32", shape=shape_label, stype="numpy.ndarray", data=_npy(data))
    return record


BadReply = Callable[[Message], Message]
PLAIN_BAD: dict[str, tuple[BadReply, str]] = {
    "wrong shape": (
        lambda m: _plain(m, (np.zeros((2, 3)), np.zeros(2))),
        "expected numpy.ndarray float32 (3, 2)",
    ),
    "wrong dtype": (
        lambda m: _reply(m, ArrayRecord([np.zeros((3, 2)), np.zeros(2)]), {"num-examples": 10}),
        "as numpy.ndarray float64 (3, 2)",
    ),
    "dtype label lies": (
        lambda m: _reply(m, _forged((3, 2), np.zeros((3, 2), np.float16)), {"num-examples": 10}),
        "holding float16 (3, 2)",
    ),
    "NaN": (lambda m: _plain(m, (np.full((3, 2), np.nan), np.zeros(2))), "non-finite update"),
    "inf": (lambda m: _plain(m, (np.zeros((3, 2)), np.array([np.inf, 0.0]))), "non-finite update"),
    "norm far beyond the bound": (
        lambda m: _plain(m, (np.full((3, 2), 100.0), np.zeros(2))),
        "L2 norm 244.9 > bound 5",
    ),
    "oversized payload": (
        lambda m: _reply(m, _forged((3, 2), np.zeros(10_000, np.float32)), {"num-examples": 10}),
        "(oversized payload)",
    ),
    "truncated payload": (
        lambda m: _reply(m, _forged((3, 2), np.zeros((2, 2), np.float32)), {"num-examples": 10}),
        "holding float32 (2, 2)",
    ),
    "extra tensor": (
        lambda m: _plain(m, (*BAD_DELTA, np.zeros(1))),
        "sent tensors ['0', '1', '2'], expected ['0', '1']",
    ),
    "missing record": (lambda m: _reply(m, arrays_to_record(BAD_DELTA)), "missing ['metrics']"),
    "extra record": (
        lambda m: _plain(m, extra={"sidecar": ConfigRecord({"x": 1})}),
        "unexpected ['sidecar']",
    ),
    "no num-examples": (
        lambda m: _reply(m, arrays_to_record(BAD_DELTA), {"train_loss": 0.1}),
        "no 'num-examples' metric",
    ),
    "negative num-examples": (lambda m: _plain(m, n=-5), "num-examples -5, expected 1 .."),
    "zero num-examples": (lambda m: _plain(m, n=0.2), "num-examples 0.2, expected 1 .."),
    "NaN num-examples": (
        lambda m: _plain(m, n=float("nan")),
        "'num-examples' = nan, expected one finite number",
    ),
    "absurd num-examples": (lambda m: _plain(m, n=1e12), "num-examples 1e+12, expected 1 .. 2147483647"),
    "list metric": (
        lambda m: _reply(m, arrays_to_record(BAD_DELTA), {"num-examples": 10, "loss": [0.1, 0.2]}),
        "'loss' = [0.1, 0.2], expected one finite number",
    ),
    "too many metrics": (
        lambda m: _reply(
            m, arrays_to_record(BAD_DELTA), {"num-examples": 10, **{f"m{i}": 0.0 for i in range(MAX_METRICS)}}
        ),
        f"sent {MAX_METRICS + 1} metrics",
    ),
    "another site's name": (lambda m: _plain(m, site="a"), "node 3 is site 'c' but its reply names 'a'"),
    "error reply": (
        lambda m: Message(Error(0, "site 'c': policy refuses\nround 1"), reply_to=m),
        "site 'c': policy refuses round 1",
    ),
}


@pytest.mark.parametrize("case", list(PLAIN_BAD))
def test_each_bad_plain_reply_is_rejected_and_the_round_goes_on(case: str) -> None:
    strategy, asked = _strategy()
    bad, reason = PLAIN_BAD[case]
    replies = [_plain(asked[0], GOOD[1]), _plain(asked[1], GOOD[2]), bad(asked[2])]
    arrays, metrics = strategy.aggregate_train(1, replies)
    rejected = strategy.history[-1].rejected
    assert list(rejected) == ["c"] and reason in rejected["c"], rejected
    assert "\n" not in rejected["c"]
    assert metrics is not None and metrics["sites"] == 2 and set(strategy.history[-1].train) == {"a", "b"}
    assert arrays is not None
    mean = [(x + y) / 2 for x, y in zip(GOOD[1], GOOD[2], strict=True)]  # equal weights: FedAvg is the mean
    for got, g, d in zip(arrays_from_record(arrays), GLOBAL, mean, strict=True):
        np.testing.assert_allclose(got, g + d, atol=1e-6)


def test_a_node_not_asked_and_a_site_replying_twice_are_rejected() -> None:
    strategy, asked = _strategy()
    stranger = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=99, message_type="train")
    replies = [
        _plain(asked[0], GOOD[1]),
        _plain(asked[1], GOOD[2]),
        _plain(asked[2]),
        _plain(asked[2], (np.zeros((3, 2)), np.zeros(2))),
        _plain(stranger, site="a"),
    ]
    strategy.aggregate_train(1, replies)
    rejected = strategy.history[-1].rejected
    assert set(rejected) == {"c", "node-99"}
    assert "more than one reply" in rejected["c"]
    assert "node 99 is not a site asked this round" in rejected["node-99"]
    assert set(strategy.history[-1].train) == {"a", "b"}


def test_too_few_valid_replies_stop_the_job_with_one_line_naming_the_sites() -> None:
    strategy, asked = _strategy(min_sites=2)
    replies = [
        _plain(asked[0], GOOD[1]),
        PLAIN_BAD["NaN"][0](asked[1]),
        PLAIN_BAD["oversized payload"][0](asked[2]),
    ]
    with pytest.raises(UpdateError) as info:
        strategy.aggregate_train(1, replies)
    text = str(info.value)
    assert "\n" not in text and "1 valid updates, the job needs min_sites=2" in text
    assert "site 'b' sent a non-finite update" in text and "site 'c' sent" in text and "oversized" in text


def test_a_failed_round_names_a_site_whose_error_text_does_not() -> None:
    strategy, asked = _strategy(min_sites=3)
    anonymous = Message(Error(0, "cannot train"), reply_to=asked[2])
    with pytest.raises(UpdateError, match="rejected: site 'c': cannot train"):
        strategy.aggregate_train(1, [_plain(asked[0], GOOD[1]), _plain(asked[1], GOOD[2]), anonymous])


def test_nodes_the_superlink_reports_unavailable_are_named_as_their_sites() -> None:
    """Flower's SuperLink answers for a dead node with an error from ``SUPERLINK_NODE_ID`` that
    replies to the unanswered message: each is named as the site it was sent to, not as node 1."""
    strategy, asked = _strategy(min_sites=1)
    for m in asked:  # what the grid does when it pushes a message
        m.metadata.__dict__["_message_id"] = m.object_id
    dead = [create_message_error_unavailable_res_message(m.metadata, "node_unavail") for m in asked[1:]]
    assert {d.metadata.src_node_id for d in dead} == {SUPERLINK_NODE_ID}
    strategy.aggregate_train(1, [_plain(asked[0], GOOD[1]), *dead])
    rejected = strategy.history[-1].rejected
    assert set(rejected) == {"b", "c"}, rejected
    assert all("more than one reply" not in r and "not a site asked" not in r for r in rejected.values())
    assert set(strategy.history[-1].train) == {"a"}


def test_a_sites_error_text_is_bounded_to_one_short_line() -> None:
    strategy, asked = _strategy()
    flood = Message(Error(0, "x\n" * 100_000), reply_to=asked[2])
    strategy.aggregate_train(1, [_plain(asked[0], GOOD[1]), _plain(asked[1], GOOD[2]), flood])
    reason = strategy.history[-1].rejected["c"]
    assert len(reason) <= MAX_REASON_CHARS and "\n" not in reason


# --- HE --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[SecretContext, SecretContext]:
    return generate_keyset(), generate_keyset()  # the federation's, and a foreign one


def _sealed(to: Message, data: bytes, n: float = 10) -> Message:
    return _reply(to, opaque_to_record(data), {"num-examples": n})


def _he(ctx: SecretContext, delta: tuple[np.ndarray, ...] = BAD_DELTA, weight: float = 1.0) -> bytes:
    return encrypt_update(ctx, delta, weight=weight).to_bytes()


def _reheader(ctx: SecretContext, **changes: Any) -> bytes:
    """A valid update with header fields changed and digests recomputed (as a forger would)."""
    up = encrypt_update(ctx, BAD_DELTA, weight=1.0)
    fields = {**up.__dict__, **changes}
    return EncryptedUpdate(**fields).to_bytes()


HE_BAD: dict[str, tuple[Callable[[SecretContext, SecretContext], bytes | ArrayRecord], str]] = {
    "another key set": (lambda ctx, other: _he(other), "encrypted with key set"),
    "oversized payload": (
        lambda ctx, other: b"\0" * (2 * ciphertext_bound(ctx.public()) + 10_000),
        "(oversized payload)",
    ),
    "malformed bytes": (lambda ctx, other: b"FCHEUP" + b"\x01" * 500, "malformed encrypted update"),
    "garbage ciphertext under a valid header": (
        lambda ctx, other: _reheader(ctx, ciphertexts=(b"\x07" * 5000,)),
        "a ciphertext the key set cannot use",
    ),
    "ciphertext shorter than its header": (
        lambda ctx, other: _reheader(
            ctx, ciphertexts=encrypt_update(ctx, (np.zeros(3),), weight=1.0).ciphertexts
        ),
        "holds 3 values, its header says 8",
    ),
    "wrong shapes": (
        lambda ctx, other: _he(ctx, (np.zeros((2, 3)), np.zeros(2))),
        "(scheme, slots, sites, shapes)",
    ),
    "a sum of two sites": (lambda ctx, other: _reheader(ctx, num_sites=2), "(scheme, slots, sites, shapes)"),
    "absurd weight": (lambda ctx, other: _reheader(ctx, weight=1e15), "weight 1e+15"),
    "plaintext arrays": (lambda ctx, other: arrays_to_record(BAD_DELTA), "one ciphertext blob 'he'"),
}


@pytest.mark.he
@pytest.mark.parametrize("case", list(HE_BAD))
def test_each_bad_encrypted_reply_is_rejected_and_the_sum_holds_the_valid_ones(
    case: str, keys: tuple[SecretContext, SecretContext]
) -> None:
    ctx, other = keys
    strategy, asked = _strategy(ctx)
    make, reason = HE_BAD[case]
    payload = make(ctx, other)
    bad = (
        _reply(asked[2], payload, {"num-examples": 10})
        if isinstance(payload, ArrayRecord)
        else _sealed(asked[2], payload)
    )
    replies = [_sealed(asked[0], _he(ctx, GOOD[1])), _sealed(asked[1], _he(ctx, GOOD[2])), bad]
    total = strategy.sum_round(1, replies)  # (the sites' confirmation of the sum: tests/adversarial)
    rejected = strategy.history[-1].rejected
    assert list(rejected) == ["c"] and reason in rejected["c"], rejected
    mean = decrypt_mean(ctx, EncryptedUpdate.from_bytes(total))
    for got, x, y in zip(mean, GOOD[1], GOOD[2], strict=True):
        np.testing.assert_allclose(got, (x + y) / 2, atol=1e-6)


def test_bad_evaluate_replies_leave_the_site_out_of_the_scores_with_both_reasons_kept() -> None:
    strategy, asked = _strategy()
    strategy.aggregate_train(
        1, [_plain(asked[0], GOOD[1]), _plain(asked[1], GOOD[2]), PLAIN_BAD["NaN"][0](asked[2])]
    )
    ev = list(strategy.configure_evaluate(1, arrays_to_record(GLOBAL), ConfigRecord({}), cast(Grid, None)))
    stranger = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=42, message_type="evaluate")
    replies = [
        _reply(ev[0], None, {"accuracy": 0.75}),
        _reply(ev[1], None, {"accuracy": [0.1, 0.9]}),  # not one number
        _reply(ev[2], None, {"accuracy": float("inf")}),
        _reply(stranger, None, {"accuracy": 1.0}, site="a"),
    ]
    strategy.aggregate_evaluate(1, replies)
    rlog = strategy.history[-1]
    assert rlog.evaluate == {"a": {"accuracy": 0.75}}
    assert rlog.rejected["b"].startswith("evaluation: site 'b' sent metric 'accuracy' = [0.1, 0.9]")
    assert (
        "non-finite update" in rlog.rejected["c"]
        and "; evaluation: site 'c' sent metric" in rlog.rejected["c"]
    )
    assert rlog.rejected["node-42"].startswith("evaluation: node 42 is not a site asked")
