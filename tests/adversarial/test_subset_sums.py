"""Subset sums: the coordinator hands different sites different sums of the same answers, and the
differences are single sites' answers (the second privacy review, finding 1).

Measured against fedcore before the fix: the sum of all four hospitals' answers to one site and the
sum of all but VA to another gave VA's 3-row cell exactly, and a ``withhold`` site's own values. Now
each site confirms one sum per batch (or training round) and opens only a sum every contributor
confirmed, so an answer opens in exactly one sum whoever opens it. Real sites, real ciphertexts;
only the coordinator is crafted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flwr.app import MessageType

from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.he import EncryptedUpdate, generate_keyset, save_secret, sum_encrypted
from fedcore.he.keys import SecretContext
from tests.adversarial.coordinator import (
    Coordinator,
    Refused,
    he_claim,
    job,
    make_site,
    query_claim,
    statistics,
    train_claim,
)

pytestmark = pytest.mark.he

SITES = ("cleveland", "hungary", "va")
SMALL_CELL = {"name": "young", "stat": "count", "where": "age < 35", "epsilon": 1.0}


def _federation(tmp_path: Path, extra: str = "") -> tuple[dict[str, Coordinator], SecretContext]:
    keyset = generate_keyset()
    sites = {}
    for name in SITES:
        policy = f"[privacy]\nbudget_epsilon = 10.0\nbudget_delta = 1e-5\nmin_sites = 2\n{extra}\n"
        c = Coordinator(make_site(tmp_path / name, policy, name=name), tmp_path / "state")
        save_secret(keyset, c.site.guard.paths.he_secret_key)
        sites[name] = c
    return sites, keyset


def _sum(keyset: SecretContext, parts: list[bytes]) -> bytes:
    return sum_encrypted(keyset.public(), [EncryptedUpdate.from_bytes(p) for p in parts]).to_bytes()


@pytest.mark.parametrize("share", ["full", "split"])
def test_subset_sums_of_statistics_are_refused(tmp_path: Path, share: str) -> None:
    """All three answers to one site, all but VA's to another: the second sum is never confirmed,
    so no site opens it, and VA's answer stays inside the one sum of three."""
    sites, keyset = _federation(tmp_path, f'he_noise_share = "{share}"\nsite_statistics = "withhold"')
    request = statistics(SMALL_CELL, min_sites=2, he=True, num_sites=3)
    sealed = {}
    for name, c in sites.items():
        assert c.admit_statistics(request)["accepted"]
        sealed[name] = c.answer(request)[1][0]
    everyone = _sum(keyset, list(sealed.values()))
    claim = query_claim(request, list(SITES), [everyone])
    tags = {name: c.confirm(request, claim) for name, c in sites.items()}
    assert sites["cleveland"].decrypt(request, 0, everyone, claim, tags)["num_sites"] == 3

    without_va = _sum(keyset, [sealed["cleveland"], sealed["hungary"]])
    smaller = query_claim(request, ["cleveland", "hungary"], [without_va])
    for name in ("cleveland", "hungary"):  # each confirmed its one sum of this batch already
        with pytest.raises(Refused, match="confirmed another sum for that round"):
            sites[name].confirm(request, smaller)
    reused = {name: tags[name] for name in ("cleveland", "hungary")}  # tags of the other claim
    with pytest.raises(Refused, match="invalid confirmation for cleveland, hungary"):
        sites["hungary"].decrypt(request, 0, without_va, smaller, reused)
    with pytest.raises(Refused, match="not the one its claim names"):
        sites["hungary"].decrypt(request, 0, without_va, claim, tags)  # the honest claim, other bytes
    assert [r.kind for r in sites["hungary"].site.guard.audit.records()][-3:] == ["refuse"] * 3


def test_confirming_a_subset_first_locks_out_the_full_sum(tmp_path: Path) -> None:
    """The order does not matter: whichever claim a site confirms first is its only one."""
    sites, keyset = _federation(tmp_path)
    request = statistics(SMALL_CELL, min_sites=2, he=True, num_sites=3)
    sealed = {}
    for name, c in sites.items():
        c.admit_statistics(request)
        sealed[name] = c.answer(request)[1][0]
    pair = _sum(keyset, [sealed["cleveland"], sealed["hungary"]])
    claim = query_claim(request, ["cleveland", "hungary"], [pair])
    tags = {name: sites[name].confirm(request, claim) for name in ("cleveland", "hungary")}
    everyone = _sum(keyset, list(sealed.values()))
    full = query_claim(request, list(SITES), [everyone])
    with pytest.raises(Refused, match="confirmed another sum"):
        sites["cleveland"].confirm(request, full)
    va_tag = sites["va"].confirm(request, full)  # VA alone confirms: not enough to open the full sum
    with pytest.raises(Refused, match="no confirmation from cleveland, hungary"):
        sites["va"].decrypt(request, 0, everyone, full, {"va": va_tag})
    assert sites["va"].decrypt(request, 0, pair, claim, tags)["contributors"] == ["cleveland", "hungary"]


def _train_round_1(sites: dict[str, Coordinator], req: object) -> dict[str, bytes]:
    out = {}
    for name, c in sites.items():
        assert c.admit(req)["accepted"]  # type: ignore[arg-type]
        config = {"job": req.to_wire(), "server-round": 1, "he-round": 0}  # type: ignore[attr-defined]
        reply = c.send(MessageType.TRAIN, config, arrays_to_record(c.model(req)))  # type: ignore[arg-type]
        out[name] = opaque_from_record(reply.content.array_records["arrays"])
    return out


def test_subset_sums_of_training_are_refused(tmp_path: Path) -> None:
    """Training sums: one site's ciphertext relabelled as a 2-site sum, and a sum of two of the three
    once the three confirmed theirs: each is refused before any model is built from it."""
    sites, keyset = _federation(tmp_path)
    req = job("he", "job.min_sites=2", job_id="he-subsets", num_sites=3)
    updates = _train_round_1(sites, req)
    evaluate = {"job": req.to_wire(), "server-round": 1, "he-round": 1}
    va = sites["va"]

    one = EncryptedUpdate.from_bytes(updates["hungary"])
    relabelled = dataclasses.replace(one, num_sites=2).to_bytes()
    lonely = train_claim(req, 1, ["cleveland", "hungary"], relabelled)
    with pytest.raises(Refused, match="no confirmation from cleveland, hungary"):
        va.send(MessageType.EVALUATE, {**evaluate, **he_claim(lonely, {})}, opaque_to_record(relabelled))

    everyone = _sum(keyset, list(updates.values()))
    claim = train_claim(req, 1, list(SITES), everyone)
    tags = {name: c.confirm(req, claim) for name, c in sites.items()}
    pair = _sum(keyset, [updates["cleveland"], updates["hungary"]])
    smaller = train_claim(req, 1, ["cleveland", "hungary"], pair)
    with pytest.raises(Refused, match="confirmed another sum for that round"):
        sites["cleveland"].confirm(req, smaller)
    stolen = {name: tags[name] for name in ("cleveland", "hungary")}
    with pytest.raises(Refused, match="invalid confirmation"):
        va.send(MessageType.EVALUATE, {**evaluate, **he_claim(smaller, stolen)}, opaque_to_record(pair))
    assert not va.site.guard.plans.answered(req.job_id, "evaluate", 1)  # refused before any charge

    reply = va.send(MessageType.EVALUATE, {**evaluate, **he_claim(claim, tags)}, opaque_to_record(everyone))
    assert "metrics" in reply.content.metric_records  # the one confirmed sum of round 1 opens


def test_a_sum_holding_one_update_twice_is_refused_by_its_markers(tmp_path: Path) -> None:
    """The sites cannot see inside a sum, so they confirm a claim of three sites over a sum that holds
    Cleveland's update twice and VA's not at all; the markers in the sum do not add up."""
    sites, keyset = _federation(tmp_path)
    req = job("he", "job.min_sites=2", job_id="he-twice", num_sites=3)
    updates = _train_round_1(sites, req)
    twice = _sum(keyset, [updates["cleveland"], updates["cleveland"], updates["hungary"]])
    doubled = train_claim(req, 1, list(SITES), twice)
    tags = {name: c.confirm(req, doubled) for name, c in sites.items()}
    evaluate = {"job": req.to_wire(), "server-round": 1, "he-round": 1, **he_claim(doubled, tags)}
    with pytest.raises(Refused, match="markers do not add up"):
        sites["va"].send(MessageType.EVALUATE, evaluate, opaque_to_record(twice))
