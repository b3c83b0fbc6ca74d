"""Secure aggregation against a crafted coordinator, with real sites (ClientApp handlers, ledgers,
identities on disk): every attack of issue 27 is refused or shown to learn nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from fedcore.errors import SecAggError
from fedcore.secagg import server, shamir
from fedcore.secagg.client import ClientState
from fedcore.secagg.keys import Identity, agree, derive_key
from fedcore.secagg.messages import (
    KeyAdvertisement,
    KeyList,
    RoundRequest,
    ShareBundle,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.prg import apply_masks
from tests.adversarial.coordinator import Coordinator, Refused, job
from tests.adversarial.secagg_federation import NAMES, federation, words_of

SESSION = "0123456789abcdef"


def _state(fed_site: Coordinator, session: str, round_: int) -> ClientState:
    """A site's round state from its own folder (what a colluding site hands the coordinator)."""
    import hashlib

    name = hashlib.sha256(session.encode()).hexdigest()[:24]
    path = fed_site.site.guard.paths.folder / "secagg" / f"{name}-r{round_}.state"
    assert path.stat().st_mode & 0o077 == 0  # the state holds secrets: owner-only
    return ClientState.from_bytes(path.read_bytes())


def test_an_honest_round_unmasks_exactly_the_sum_of_the_sites_inputs(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    fed.steps_0_to_2(1)
    total = fed.finish(NAMES)
    expect = sum(fed.stored_input(s, 1) for s in NAMES)
    assert np.array_equal(total, words_of(expect))
    # and no masked input is a site's input
    for s in NAMES:
        assert not np.array_equal(fed.masked[s].vector, words_of(fed.stored_input(s, 1)))


def test_a_subset_sum_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    fed.steps_0_to_2(1)
    view = fed.state
    assert view is not None
    full = SurvivorRequest(f"{fed.request.job_id}/{SESSION}", 1, tuple(sorted(NAMES)))
    sigs = [fed.ask(s, "secagg-sign", full, SurvivorSignature) for s in NAMES]
    smaller = SurvivorRequest(full.job_id, 1, tuple(sorted(NAMES))[:3])
    with pytest.raises(Refused, match=r"confirmed another sum|step 'signed'"):
        fed.ask("cleveland", "secagg-sign", smaller, SurvivorSignature)  # a second set: never
    # the unmask request must name the set the site signed, with a quorum of member signatures
    sub = UnmaskRequest(
        full.job_id, 1, smaller.survivors, tuple(sorted((s.site, s.signature) for s in sigs[:3]))
    )
    with pytest.raises(Refused, match="subset-sum"):
        fed.ask("hungary", "secagg-reveal", sub, UnmaskReply)
    few = UnmaskRequest(
        full.job_id, 1, full.survivors, tuple(sorted((s.site, s.signature) for s in sigs[:2]))
    )
    with pytest.raises(Refused, match="requires 3"):
        fed.ask("hungary", "secagg-reveal", few, UnmaskReply)
    audit = fed.sites["hungary"].site.guard.audit.records()
    assert any(r.kind == "refuse" and "secure aggregation, unmask" in r.released for r in audit)


def test_a_sum_below_the_floor_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path, "job.min_sites=4")
    fed.steps_0_to_2(1)
    three = SurvivorRequest(f"{fed.request.job_id}/{SESSION}", 1, tuple(sorted(NAMES))[:3])
    with pytest.raises(Refused, match=r"opens sums of >= 4 sites"):
        fed.ask("cleveland", "secagg-sign", three, SurvivorSignature)


def test_an_invented_member_is_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    rr = fed.open(1, (*NAMES[:3], "zz-coordinator"))  # a site the coordinator controls, in va's place
    with pytest.raises(Refused, match=r"not in this site's member list: \['zz-coordinator'\]"):
        fed.ask("cleveland", "secagg-start", rr, KeyAdvertisement)


def test_impersonation_of_a_member_is_refused(tmp_path: Path) -> None:
    """The coordinator replaces hungary's advertisement with keys it made, signed by its own key."""
    fed = federation(tmp_path)
    rr = fed.open(1)
    ads = {s: fed.ask(s, "secagg-start", rr, KeyAdvertisement) for s in NAMES}
    mallory = Identity.generate("hungary")
    fake = dataclasses.replace(ads["hungary"], enc_public=bytes(range(32)), signature=b"")
    fake = dataclasses.replace(fake, signature=mallory.sign(fake.signed_bytes(rr.view_digest())))
    klist = KeyList(
        rr.job_id,
        1,
        tuple(sorted([*(a for s, a in ads.items() if s != "hungary"), fake], key=lambda a: a.site)),
    )
    with pytest.raises(Refused, match="signature of 'hungary' does not verify"):
        fed.ask("cleveland", "secagg-share", klist, ShareBundle)


def test_a_replayed_round_and_replayed_shares_are_refused(tmp_path: Path) -> None:
    fed = federation(tmp_path, "job.rounds=3")
    fed.steps_0_to_2(1)
    fed.finish(NAMES)
    rr = RoundRequest(
        f"{fed.request.job_id}/{SESSION}", 1, tuple(sorted(NAMES)), 3, 32, fed.state.request.length
    )  # type: ignore[union-attr]
    with pytest.raises(Refused, match="already started here"):
        fed.ask("cleveland", "secagg-start", rr, KeyAdvertisement)  # the same round again
    # round 2: the coordinator replays round 1's share ciphertexts to cleveland
    old = fed.state
    assert old is not None
    rr2 = fed.open(2)
    assert fed.state is not None
    for s in NAMES:
        fed.state = server.add_advertisement(fed.state, fed.ask(s, "secagg-start", rr2, KeyAdvertisement))
    fed.state, klist = server.key_list(fed.state)
    for s in NAMES:
        fed.state = server.add_shares(fed.state, fed.ask(s, "secagg-share", klist, ShareBundle))
    fed.state, out = server.deliveries(fed.state)
    mine = next(d for d in out if d.receiver == "cleveland")
    replayed = dataclasses.replace(
        mine, ciphertexts=tuple((s, ct) for s, _, ct in _round1_cts(tmp_path, fed))
    )
    with pytest.raises(Refused, match="does not authenticate"):
        fed.train("cleveland", 2, replayed)


def _round1_cts(tmp_path: Path, fed) -> list[tuple[str, str, bytes]]:  # type: ignore[no-untyped-def]
    """Round 1's ciphertexts addressed to cleveland, as the coordinator relayed them (re-run honestly)."""
    other = federation(tmp_path / "other", job_id=fed.request.job_id)
    rr = other.open(2)
    assert other.state is not None
    for s in NAMES:
        other.state = server.add_advertisement(
            other.state, other.ask(s, "secagg-start", rr, KeyAdvertisement)
        )
    other.state, klist = server.key_list(other.state)
    bundles = [other.ask(s, "secagg-share", klist, ShareBundle) for s in NAMES if s != "cleveland"]
    return [(b.sender, r, ct) for b in bundles for r, ct in b.ciphertexts if r == "cleveland"]


def test_a_live_site_declared_dropped_stays_masked(tmp_path: Path) -> None:
    """All four sent inputs; the coordinator calls cleveland dropped to get its mask key revealed.
    Cleveland refuses to sign; the others reveal its mask key, never its self-mask seed: with every
    pairwise mask removed, its vector is still uniform noise under PRG(b)."""
    fed = federation(tmp_path)
    fed.steps_0_to_2(1)
    others = tuple(sorted(NAMES))[1:]  # without cleveland
    sreq = SurvivorRequest(f"{fed.request.job_id}/{SESSION}", 1, others)
    with pytest.raises(Refused, match="declared dropped"):
        fed.ask("cleveland", "secagg-sign", sreq, SurvivorSignature)
    sigs = [fed.ask(s, "secagg-sign", sreq, SurvivorSignature) for s in others]
    ureq = UnmaskRequest(sreq.job_id, 1, others, tuple(sorted((s.site, s.signature) for s in sigs)))
    reveals = [fed.ask(s, "secagg-reveal", ureq, UnmaskReply) for s in others]
    key_shares = [(i, k) for r in reveals for o, i, k in r.mask_key_shares if o == "cleveland"]
    assert not any(o == "cleveland" for r in reveals for o, *_ in r.self_mask_shares)
    assert fed.state is not None
    ad = {a.site: a for a in fed.state.advertisements}
    key = shamir.combine(key_shares, threshold=ad["cleveland"].share_threshold)
    unmasked = fed.masked["cleveland"].vector
    pairs = []
    for v in others:
        seed = derive_key(
            agree(key, ad[v].mask_public), purpose="mask", job_id=sreq.job_id, round_=1, a="cleveland", b=v
        )
        pairs.append((seed, -1 if v > "cleveland" else 1))
    residue = apply_masks(unmasked, seeds=pairs, modulus_bits=32)
    truth = words_of(fed.stored_input("cleveland", 1))
    assert not np.array_equal(residue, truth)
    bins = np.bincount((residue >> np.uint32(28)).astype(np.int64), minlength=16)
    assert chisquare(bins).pvalue > 1e-6  # x + PRG(b): uniform words, nothing of x
    with pytest.raises(SecAggError, match="dropped or unknown"):  # cleveland already sent: once only
        server.add_masked(fed.state, fed.masked["cleveland"])  # a late input is not taken


def test_the_coordinator_with_t_minus_1_colluders_recovers_nothing(tmp_path: Path) -> None:
    """t - 1 sites hand over their real round state (their shares of cleveland's secrets and their own
    keys). Neither of cleveland's secrets is recovered, and its masked vector minus every mask the
    colluders know is uniform."""
    fed = federation(tmp_path)
    fed.steps_0_to_2(1)
    target = _state(fed.sites["cleveland"], f"{fed.request.job_id}/{SESSION}", 1)
    t = target.share_threshold
    colluders = [n for n in NAMES if n != "cleveland"][: t - 1]
    states = [_state(fed.sites[c], f"{fed.request.job_id}/{SESSION}", 1) for c in colluders]
    held = [next(h for h in st.held if h[0] == "cleveland") for st in states]
    with pytest.raises(SecAggError, match="cannot recover"):
        shamir.combine([(i, s) for _, i, s, _ in held], threshold=t)
    assert not any(target.self_seed in st.to_bytes() or target.mask_private in st.to_bytes() for st in states)
    y = fed.masked["cleveland"].vector
    known = []
    for st in states:
        peer = {a.site: a for a in st.peers}["cleveland"]
        seed = derive_key(
            agree(st.mask_private, peer.mask_public), purpose="mask", job_id=st.request.job_id, round_=1,
            a=st.site, b="cleveland",
        )  # fmt: skip
        known.append((seed, -1 if st.site > "cleveland" else 1))
    residue = apply_masks(y, seeds=known, modulus_bits=32)
    assert not np.array_equal(residue, words_of(fed.stored_input("cleveland", 1)))
    bins = np.bincount((residue >> np.uint32(28)).astype(np.int64), minlength=16)
    assert chisquare(bins).pvalue > 1e-6


def test_a_restarted_node_refuses_a_second_start_and_a_second_signature(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    fed.steps_0_to_2(1)
    sreq = SurvivorRequest(f"{fed.request.job_id}/{SESSION}", 1, tuple(sorted(NAMES)))
    fed.ask("va", "secagg-sign", sreq, SurvivorSignature)
    from fedcore.clients.runtime import SiteRuntime

    SiteRuntime._cache.clear()  # a restarted node: everything comes back from its state folder
    fed.sites["va"] = Coordinator(fed.sites["va"].site_file, fed.sites["va"].state_dir, init=False)
    with pytest.raises(Refused, match="step 'signed'"):
        fed.ask("va", "secagg-sign", sreq, SurvivorSignature)
    assert fed.state is not None
    with pytest.raises(Refused, match="already started"):
        fed.ask("va", "secagg-start", fed.state.request, KeyAdvertisement)


def test_a_restarted_round_masks_the_stored_input_again_charges_once_and_keeps_one_survivor_set(
    tmp_path: Path,
) -> None:
    """A coordinator that dies mid-round and resumes starts the round again as a new attempt (fresh
    keys). Each site masks the input it stored at its one charge (not recomputed), and signs no other
    survivor set than the one it signed in the first attempt."""
    noise = ["privacy.secagg.weight='uniform'", "privacy.secagg.noise='ddgauss'"]
    fed = federation(
        tmp_path, *noise, "privacy.secagg.noise_multiplier=2.0", "privacy.secagg.clipping_norm=1.0"
    )
    fed.steps_0_to_2(1, attempt="aaaaaaaaaaaaaaaa")
    first = SurvivorRequest(f"{fed.request.job_id}/aaaaaaaaaaaaaaaa", 1, tuple(sorted(NAMES)))
    fed.ask("va", "secagg-sign", first, SurvivorSignature)  # then the coordinator dies
    charges = {s: len(c.site.guard.ledger.summary().charges) for s, c in fed.sites.items()}
    stored = {s: fed.stored_input(s, 1) for s in NAMES}
    fed.masked.clear()
    fed.steps_0_to_2(1, attempt="bbbbbbbbbbbbbbbb")  # the resumed coordinator's attempt
    assert {s: len(c.site.guard.ledger.summary().charges) for s, c in fed.sites.items()} == charges
    assert all(charges.values())  # a DP job: the round was charged, once
    rows = fed.sites["va"].site.guard.ledger.summary().charges
    assert any("zcdp" in c.event_json for c in rows)  # fedcore ledger names RDP on the noise's line
    assert all(c.accountant == "rdp" for c in rows if "zcdp" in c.event_json)
    assert all(len(c.site.guard.plans.releases(fed.request.job_id)) == 1 for c in fed.sites.values())
    assert all(np.array_equal(fed.stored_input(s, 1), stored[s]) for s in NAMES)
    other = SurvivorRequest(f"{fed.request.job_id}/bbbbbbbbbbbbbbbb", 1, tuple(sorted(NAMES))[1:])
    with pytest.raises(Refused, match="confirmed another sum"):
        fed.ask("va", "secagg-sign", other, SurvivorSignature)  # not a second set for round 1
    total = fed.finish(NAMES)  # the same set again: the round completes
    assert np.array_equal(total, words_of(sum(stored.values())))


def test_a_dropout_before_the_masked_input_or_after_signing_and_the_round_completes(tmp_path: Path) -> None:
    """Four sites, quorum 3, t = 2 (one dropout tolerated). Round 1: va drops before its masked input
    (its mask key is reconstructed, its masks removed). Round 2: all send, hungary drops after signing
    (its self-mask seed comes from the others' shares). Each time: the sum over the survivors, exactly."""
    fed = federation(tmp_path)
    fed.steps_0_to_2(1, drop=["va"])
    three = ("cleveland", "hungary", "switzerland")
    assert np.array_equal(fed.finish(three), words_of(sum(fed.stored_input(s, 1) for s in three)))
    fed.steps_0_to_2(2)
    total = fed.finish(NAMES, silent=["hungary"])
    assert np.array_equal(total, words_of(sum(fed.stored_input(s, 2) for s in NAMES)))


def test_a_changed_job_under_the_admitted_id_is_refused_at_the_first_step(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    rr = fed.open(1)
    fed.request = job(
        "secagg", "job.min_sites=3", "privacy.secagg.modulus_bits=40", job_id=fed.request.job_id
    )
    with pytest.raises(Refused, match="not admitted here under these settings"):
        fed.ask("cleveland", "secagg-start", rr, KeyAdvertisement)


def test_a_malformed_protocol_message_is_refused_and_audited(tmp_path: Path) -> None:
    from flwr.app import MessageType

    from fedcore.flower.serde import opaque_to_record

    fed = federation(tmp_path)
    config = {"action": "secagg-start", "job": fed.request.to_wire()}
    with pytest.raises(Refused, match="not a v1 secagg message"):
        fed.sites["va"].send(
            MessageType.QUERY, config, opaque_to_record(b"XXXX" + bytes(40), "secagg"), key="secagg"
        )
    audit = fed.sites["va"].site.guard.audit.records()
    assert any(r.kind == "refuse" and "secagg-start" in r.released for r in audit)
