"""The second privacy review's findings 2-4, each against a real site's handlers:

- **recompute after a failed encryption**: under DP-SGD + HE a crafted ``weight_scale`` makes the
  encryption fail after the noisy update was computed; every resend used to compute DP-SGD again
  with fresh noise and no charge, and each error reply carried the update's peak to 6 digits;
- **rollback of the state folder**: restoring a snapshot of the whole folder took spending back and
  let released rounds be answered again with fresh noise;
- **out-of-range or wrapped plaintexts**: a malicious site's out-of-range integers wrapped around
  the plain modulus (an honest mean of 1.0 decrypted as -2047.7), and a forged header weight moved it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType

from fedcore.cli import main
from fedcore.clients.runtime import SiteRuntime
from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.he import EncryptedUpdate, generate_keyset, save_secret, sum_encrypted
from fedcore.he.keys import SecretContext
from fedcore.he.markers import marker
from fedcore.he.update import _bfv_encrypt, site_limit
from tests.adversarial.coordinator import Coordinator, Refused, he_claim, job, make_site, train_claim

POLICY = "[privacy]\nbudget_epsilon = 20.0\nbudget_delta = 1e-5\nmin_sites = 2\n"


def test_recompute_after_a_failed_encryption_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Coordinator(make_site(tmp_path, POLICY), tmp_path / "state")
    save_secret(generate_keyset(), c.site.guard.paths.he_secret_key)
    req = job("he", "privacy.dpsgd.epsilon=1.0", "privacy.he.weight_scale=1e-9", job_id="overflow")
    assert c.admit(req)["accepted"]
    computed = []
    original = SiteRuntime.local_update

    def counted(self: SiteRuntime, *args: object, **kwargs: object) -> object:
        computed.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SiteRuntime, "local_update", counted)
    config = {"job": req.to_wire(), "server-round": 1, "he-round": 0}
    replies = []
    for _ in range(3):  # the coordinator resends, hoping for fresh noise
        with pytest.raises(Refused) as err:
            c.send(MessageType.TRAIN, config, arrays_to_record(c.model(req)))
        replies.append(str(err.value))
    assert len(computed) == 1  # DP-SGD ran once
    assert len(set(replies)) == 1 and "failed after its release was charged (UpdateError)" in replies[0]
    assert not re.search(r"\d\.\d{3}", replies[0])  # no value of the noisy update travels
    charges = c.site.guard.ledger.summary().charges
    assert [ch.job_id for ch in charges] == ["overflow"]  # round 1 (and the noisy size), charged once
    kinds = [r.kind for r in c.site.guard.audit.records()]
    assert kinds.count("release") == 1 and kinds.count("replay") == 2


def test_rollback_of_the_state_folder_is_detected(tmp_path: Path) -> None:
    site_file, state = make_site(tmp_path, POLICY), tmp_path / "state"
    c = Coordinator(site_file, state)
    req = job("dp", job_id="rolled")
    assert c.admit(req)["accepted"]
    g = c.model(req)
    c.train(req, 1, g)
    folder = c.site.guard.paths.folder
    snapshot = tmp_path / "snapshot"
    shutil.copytree(folder, snapshot)
    c.train(req, 2, g)
    c.train(req, 3, g)
    spent = c.site.guard.ledger.spent("heart_disease")[0]

    shutil.rmtree(folder)
    shutil.copytree(snapshot, folder)  # the whole folder as it was after round 1
    SiteRuntime._cache.clear()  # the node restarts
    with pytest.raises(
        Refused, match=r"was rolled back or replaced: its audit log ends at record \d+, but the"
    ):
        c.train(req, 2, g)
    assert main(["audit", "accept-rollback", str(site_file), "--state-dir", str(state)]) == 0
    SiteRuntime._cache.clear()
    ledger = c.site.guard.ledger
    assert ledger.spent("heart_disease")[0] >= spent  # the lost spending is charged, conservatively
    assert c.site.guard.audit.records()[-1].kind == "restore"


def _three_he_sites(
    tmp_path: Path, keyset: SecretContext | None = None
) -> tuple[dict[str, Coordinator], SecretContext]:
    keyset = keyset or generate_keyset()
    sites = {}
    for name in ("cleveland", "hungary", "va"):
        c = Coordinator(make_site(tmp_path / name, POLICY, name=name), tmp_path / "state")
        save_secret(keyset, c.site.guard.paths.he_secret_key)
        sites[name] = c
    return sites, keyset


def _round_1(sites: dict[str, Coordinator], req: object) -> dict[str, bytes]:
    out = {}
    for name, c in sites.items():
        assert c.admit(req)["accepted"]  # type: ignore[arg-type]
        config = {"job": req.to_wire(), "server-round": 1, "he-round": 0}  # type: ignore[attr-defined]
        reply = c.send(MessageType.TRAIN, config, arrays_to_record(c.model(req)))  # type: ignore[arg-type]
        out[name] = opaque_from_record(reply.content.array_records["arrays"])
    return out


def test_out_of_range_or_wrapped_plaintexts_are_refused(tmp_path: Path) -> None:
    """VA holds the key and encrypts integers near half the plain modulus with a valid weight and its
    own marker: the sum wraps around; the decrypting site sees values no three honest sites encrypt."""
    sites, keyset = _three_he_sites(tmp_path)
    req = job("he", "job.min_sites=2", job_id="wrap", num_sites=3)
    updates = _round_1(sites, req)
    honest = EncryptedUpdate.from_bytes(updates["va"])
    p, frac = keyset.params.plain_modulus, keyset.params.frac_bits
    ints = np.full(honest.num_values, p // 2 - 7, dtype=np.int64)
    trailer = [round(1.0 * 2**frac), marker(keyset, "train", req.job_id, 1, "va")]
    slots = np.concatenate([ints, np.asarray(trailer, dtype=np.int64)])
    n = honest.slots
    cts = tuple(_bfv_encrypt(keyset.tenseal, slots[i : i + n]) for i in range(0, slots.size, n))
    evil = EncryptedUpdate(keyset.keyset_id, honest.scheme, honest.shapes, 1.0, 1, n, cts, 2).to_bytes()
    public = keyset.public()
    total = sum_encrypted(
        public, [EncryptedUpdate.from_bytes(u) for u in (updates["cleveland"], updates["hungary"], evil)]
    ).to_bytes()
    claim = train_claim(req, 1, ["cleveland", "hungary", "va"], total)
    tags = {name: c.confirm(req, claim) for name, c in sites.items()}
    config = {"job": req.to_wire(), "server-round": 1, "he-round": 1, **he_claim(claim, tags)}
    bound = 3 * site_limit(keyset.params)
    with pytest.raises(Refused, match=rf"out of range: 3 sites .* a value beyond {bound:.6g}"):
        sites["cleveland"].send(MessageType.EVALUATE, config, opaque_to_record(total))
    assert sites["cleveland"].site.guard.audit.records()[-1].kind == "refuse"


def test_a_forged_header_weight_does_not_move_the_mean(tmp_path: Path) -> None:
    """The weights are inside the sum (its trailer); the header's is the coordinator's word."""
    sites, keyset = _three_he_sites(tmp_path)
    req = job("he", "job.min_sites=2", job_id="weight", num_sites=3)
    updates = _round_1(sites, req)
    total = sum_encrypted(keyset.public(), [EncryptedUpdate.from_bytes(u) for u in updates.values()])
    claim = train_claim(req, 1, ["cleveland", "hungary", "va"], total.to_bytes())
    tags = {name: c.confirm(req, claim) for name, c in sites.items()}
    forged = dataclasses.replace(total, weight=total.weight * 10).to_bytes()
    final = {"job": req.to_wire(), "server-round": 1, "he-round": 1, "final": True}
    with pytest.raises(Refused, match="its bytes are not the claimed"):  # the claim names the bytes
        sites["cleveland"].send(
            MessageType.EVALUATE, {**final, **he_claim(claim, tags)}, opaque_to_record(forged)
        )
    forged_claim = train_claim(req, 1, ["cleveland", "hungary", "va"], forged)
    again, _ = _three_he_sites(tmp_path / "again", keyset)  # sites that confirm the forged bytes' claim
    _round_1(again, req)
    forged_tags = {name: c.confirm(req, forged_claim) for name, c in again.items()}
    sites["hungary"].send(
        MessageType.EVALUATE, {**final, **he_claim(claim, tags)}, opaque_to_record(total.to_bytes())
    )
    again["cleveland"].send(
        MessageType.EVALUATE, {**final, **he_claim(forged_claim, forged_tags)}, opaque_to_record(forged)
    )
    with (
        np.load(sites["hungary"].site.guard.paths.folder / "model.npz") as a,
        np.load(again["cleveland"].site.guard.paths.folder / "model.npz") as b,
    ):
        for key in a.files:  # the same model from the honest header and from a weight 10x too large
            np.testing.assert_array_equal(a[key], b[key])
