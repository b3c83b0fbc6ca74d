"""The coordinator is the adversary: each attack is refused, or shown to learn nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

from fedcore.errors import SecAggError
from fedcore.secagg import client, server, shamir
from fedcore.secagg.keys import Identity, agree, derive_key
from fedcore.secagg.messages import KeyList, RoundRequest, ShareDelivery
from fedcore.secagg.prg import expand

from .helpers import federation, masked_round, names, random_words

N = 10  # gamma = 1/3: quorum 7, Shamir threshold 6 over the 9 others


def _request(participants: tuple[str, ...]) -> RoundRequest:
    return RoundRequest("job", 1, participants, len(participants) - 1, 32, 8)


def test_invented_member_in_participant_list_is_refused() -> None:
    sites = federation(5)
    policy, ident = sites["site000"]
    with pytest.raises(SecAggError, match=r"not in this site's member list: \['mallory'\]"):
        client.start_round(policy, ident, _request(tuple(sorted([*names(5), "mallory"]))))


def test_impersonated_member_with_coordinator_key_is_refused() -> None:
    sites = federation(4)
    policy, ident = sites["site000"]
    req = _request(names(4))
    states = {s: client.start_round(p, i, req) for s, (p, i) in sites.items()}
    _, fake_ad = client.start_round(policy, Identity.generate("site003"), req)  # coordinator's own key
    ads = (*(states[s][1] for s in names(3)), fake_ad)
    with pytest.raises(SecAggError, match="signature of 'site003' does not verify"):
        client.share_keys(policy, ident, states["site000"][0], KeyList("job", 1, ads))


@pytest.mark.parametrize("tamper", ["mask_public", "unsigned", "other_view"])
def test_forged_or_unsigned_advertisement_is_refused(tamper: str) -> None:
    sites = federation(4)
    req = _request(names(4))
    states = {s: client.start_round(p, i, req) for s, (p, i) in sites.items()}
    ad = states["site002"][1]
    if tamper == "mask_public":  # the coordinator swaps in a key it knows the secret of
        forged = dataclasses.replace(ad, mask_public=client.x25519_public(bytes(31) + b"\x07"))
    elif tamper == "unsigned":
        forged = dataclasses.replace(ad, signature=b"")
    else:  # site002 was shown another participant list (a different view of the round)
        other = dataclasses.replace(req, participants=(*names(3), "site003"), length=9)
        forged = client.start_round(sites["site002"][0], sites["site002"][1], other)[1]
    ads = tuple(states[s][1] if s != "site002" else forged for s in names(4))
    policy, ident = sites["site000"]
    with pytest.raises(SecAggError, match="does not verify"):
        client.share_keys(policy, ident, states["site000"][0], KeyList("job", 1, ads))


def test_subset_sum_with_survivor_sets_that_differ_between_sites_is_refused() -> None:
    inputs = random_words(N, 16)
    rnd = masked_round(federation(N), inputs)
    everyone, subset = names(N), names(N)[:7]  # 7 = quorum: large enough on its own
    sigs_all = [rnd.sign(s, everyone) for s in names(N)[:5]]
    sigs_sub = [rnd.sign(s, subset) for s in names(N)[5:7]]
    # each group got its own set; neither reaches the quorum of 7 signatures on ONE set
    with pytest.raises(SecAggError, match="5 survivors signed this set, this site requires 7"):
        rnd.reveal("site000", everyone, sigs_all)
    with pytest.raises(SecAggError, match="2 survivors signed"):
        rnd.reveal("site005", subset, sigs_sub)
    # showing site005 the first group's signatures on the larger set: not the set it signed
    with pytest.raises(SecAggError, match="another survivor set than the one this site signed"):
        rnd.reveal("site005", everyone, sigs_all)


def test_survivor_set_below_the_quorum_is_refused() -> None:
    rnd = masked_round(federation(N), random_words(N, 16))
    with pytest.raises(SecAggError, match="6 survivors, this site requires at least 7"):
        rnd.sign("site000", names(N)[:6])


def test_forged_survivor_signature_is_refused() -> None:
    rnd = masked_round(federation(N), random_words(N, 16))
    everyone = names(N)
    sigs = [rnd.sign(s, everyone) for s in names(N)[:6]]
    mallory = Identity.generate("site009")  # the coordinator signs for a site that did not
    forged = dataclasses.replace(sigs[0], site="site009", signature=mallory.sign(b"anything"))
    with pytest.raises(SecAggError, match="signature of 'site009' does not verify"):
        rnd.reveal("site000", everyone, [*sigs, forged])


def test_replayed_round_steps_are_refused() -> None:
    rnd = masked_round(federation(N), random_words(N, 16))
    everyone = names(N)
    sigs = [rnd.sign(s, everyone) for s in everyone]
    with pytest.raises(SecAggError, match="step 'signed'"):  # a second survivor set, even the same
        rnd.sign("site000", everyone)
    rnd.reveal("site000", everyone, sigs)
    with pytest.raises(SecAggError, match="step 'revealed'"):  # the unmask request replayed
        rnd.reveal("site000", everyone, sigs)
    state = client.ClientState.from_bytes(rnd.states["site000"].to_bytes())  # also after a restart
    with pytest.raises(SecAggError, match="step 'revealed'"):
        client.reveal_shares(rnd.sites["site000"][0], state, server.UnmaskRequest("job", 1, everyone, ()))
    policy, ident = rnd.sites["site000"]
    with pytest.raises(SecAggError, match="already started"):
        client.start_round(policy, ident, rnd.request, existing=state)


def test_shares_replayed_into_another_round_do_not_authenticate() -> None:
    sites, inputs = federation(5), random_words(5, 8)
    first = masked_round(sites, inputs, round_=1)
    second = masked_round(sites, inputs, round_=2)
    mine = second.states["site000"]
    stale = client.ClientState.from_bytes(mine.to_bytes())
    stale = dataclasses.replace(stale, stage="shared", held=())
    old = [(s, ct) for s, r, ct in _relayed(first) if r == "site000"]
    with pytest.raises(SecAggError, match="does not authenticate"):
        client.mask_input(stale, ShareDelivery("job", 2, "site000", tuple(old)), inputs["site000"])


def _relayed(rnd: object) -> list[tuple[str, str, bytes]]:
    """Re-run step 1 of a finished round's sites to get fresh ciphertexts of that round."""
    out = []
    for s, st in rnd.states.items():  # type: ignore[attr-defined]
        again = dataclasses.replace(st, stage="advertised")
        kl = KeyList(st.request.job_id, st.request.round, st.peers)
        _, bundle = client.share_keys(rnd.sites[s][0], rnd.sites[s][1], again, kl)  # type: ignore[attr-defined]
        out += [(s, r, ct) for r, ct in bundle.ciphertexts]
    return out


def test_live_site_declared_dropped_is_never_unmasked() -> None:
    inputs = random_words(N, 4096, seed=11)
    inputs["site004"] = np.zeros(4096, dtype=np.uint32)  # a very recognisable input
    rnd = masked_round(federation(N), inputs)
    victim, survivors = "site004", tuple(s for s in names(N) if s != "site004")
    with pytest.raises(SecAggError, match="declared dropped"):
        rnd.sign(victim, survivors)
    sigs = [rnd.sign(s, survivors) for s in survivors]
    replies = [rnd.reveal(s, survivors, sigs) for s in survivors]
    for reply in replies:  # every holder gave the victim's mask key share, and no self-mask share
        assert victim in {o for o, *_ in reply.mask_key_shares}
        assert victim not in {o for o, *_ in reply.self_mask_shares}
        assert not {o for o, *_ in reply.mask_key_shares} & {o for o, *_ in reply.self_mask_shares}
    # the coordinator now holds the victim's mask key: it removes every pairwise mask ...
    state = rnd.states[victim]
    shares = [(i, k) for r in replies for o, i, k in r.mask_key_shares if o == victim]
    key = shamir.combine(shares, threshold=state.share_threshold)
    assert key == state.mask_private
    residue = rnd.masked[victim].vector.copy()
    peers = {ad.site: ad for ad in state.peers}
    for v in survivors:
        seed = derive_key(
            agree(key, peers[v].mask_public), purpose="mask", job_id="job", round_=1, a=victim, b=v
        )
        residue -= expand(seed, residue.size, 32) if victim < v else -expand(seed, residue.size, 32)
    # ... and is left with input + PRG(self seed): uniform, nothing like the all-zero input
    assert np.array_equal(residue, expand(state.self_seed, residue.size, 32))
    assert _uniform(residue)


def _uniform(words: np.ndarray, bins: int = 64) -> bool:
    """Chi-square test of the top 6 bits of uint32 words against uniform, at the 1e-6 level.

    Masks come from the OS (they cannot be seeded), so the level is set for a negligible false
    alarm rate; a non-uniform word (a constant input unmasked) fails it by hundreds of sigmas.
    """
    return bool(chisquare(_top_bits(words, bins)).pvalue > 1e-6)


def _top_bits(words: np.ndarray, bins: int = 64) -> np.ndarray:
    return np.bincount((words >> np.uint32(26)).astype(np.int64), minlength=bins)


def _guess(shares: list[tuple[int, bytes]], t: int) -> bytes | None:
    """A reconstruction from these shares, or None when they reconstruct no 32-byte secret."""
    try:
        return shamir.combine(shares, threshold=t)
    except SecAggError:
        return None


def test_coordinator_with_t_minus_1_colluders_learns_nothing() -> None:
    inputs = random_words(N, 8192, seed=12)
    inputs["site000"] = np.full(8192, 7, dtype=np.uint32)
    rnd = masked_round(federation(N), inputs)
    honest = rnd.states["site000"]
    t = honest.share_threshold
    colluders = names(N)[1 : 1 + t - 1]  # t - 1 sites hand the coordinator everything they hold
    held = [next(h for h in rnd.states[c].held if h[0] == "site000") for c in colluders]
    seed_guess = _guess([(i, s) for _, i, s, _ in held] + [(99, bytes(shamir.SHARE_BYTES))], t)
    key_guess = _guess([(i, k) for _, i, _, k in held] + [(99, bytes(shamir.SHARE_BYTES))], t)
    with pytest.raises(SecAggError, match="cannot recover"):
        shamir.combine([(i, s) for _, i, s, _ in held], threshold=t)
    assert (
        seed_guess != honest.self_seed and key_guess != honest.mask_private
    )  # t-1 real shares: wrong secret
    # the colluders also know their own pairwise masks with site000; removing them leaves noise
    y = rnd.masked["site000"].vector.copy()
    for c in colluders:
        st = rnd.states[c]
        peer = {ad.site: ad for ad in st.peers}["site000"]
        seed = derive_key(
            agree(st.mask_private, peer.mask_public), purpose="mask", job_id="job", round_=1, a=c, b="site000"
        )
        y -= -expand(seed, y.size, 32) if c < "site000" else expand(seed, y.size, 32)
    assert _uniform(y) and _uniform(rnd.masked["site000"].vector)
    # independence of the input: a constant input and a random one look alike after masking
    other = masked_round(federation(N), random_words(N, 8192, seed=13))
    a, b = rnd.masked["site000"].vector, other.masked["site000"].vector
    assert chi2_contingency(np.stack([_top_bits(a), _top_bits(b)])).pvalue > 1e-6  # same distribution
    assert not _uniform(np.full(8192, 7, dtype=np.uint32))  # the test can fail: an unmasked input does


def test_a_site_never_reveals_both_shares_of_one_site() -> None:
    rnd = masked_round(federation(N), random_words(N, 8))
    survivors = names(N)[:8]
    sigs = [rnd.sign(s, survivors) for s in survivors]
    for s in survivors:
        reply = rnd.reveal(s, survivors, sigs)
        seeds, keys = {o for o, *_ in reply.self_mask_shares}, {o for o, *_ in reply.mask_key_shares}
        assert not seeds & keys and seeds | keys == {h[0] for h in rnd.states[s].held}


def test_declared_dropped_site_that_answers_later_is_refused_by_the_coordinator() -> None:
    inputs = random_words(N, 8)
    rnd = masked_round(federation(N), inputs)
    late = rnd.masked.pop("site009")
    st = dataclasses.replace(
        rnd.sstate, contributors=tuple(s for s in rnd.sstate.contributors if s != "site009")
    )
    st, req = server.survivor_request(st)
    assert "site009" not in req.survivors
    with pytest.raises(SecAggError, match="refused"):
        server.add_masked(st, late)


def test_sparse_degree_below_the_site_minimum_is_refused() -> None:
    sites = federation(
        120, max_corrupt_fraction=0.05, max_dropout_fraction=0.1, min_honest=3, security_bits=40
    )
    policy, ident = sites["site000"]
    with pytest.raises(SecAggError, match="even degree >="):
        client.start_round(policy, ident, RoundRequest("job", 1, names(120), 4, 32, 8))
    small = federation(30)
    with pytest.raises(SecAggError, match="complete graph up to 100"):
        client.start_round(
            small["site000"][0], small["site000"][1], RoundRequest("job", 1, names(30), 10, 32, 8)
        )
