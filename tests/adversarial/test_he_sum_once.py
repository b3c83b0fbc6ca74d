"""Under HE the sum travels once per round: a train message to a site that evaluated last round
names the sum by its digest. The coordinator is the adversary: the site trains only from the model
it built from exactly the named sum."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, MessageType

from fedcore.errors import PolicyError
from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.he import EncryptedUpdate, sum_encrypted
from fedcore.he.keys import generate_keyset, save_secret
from fedcore.he.site import sum_digest
from tests.adversarial.coordinator import Coordinator, he_claim, job, make_site, train_claim

pytestmark = pytest.mark.he


def test_a_train_without_the_sum_goes_on_only_from_the_sum_it_names(tmp_path: Path) -> None:
    secret = generate_keyset()
    policy = "[privacy]\nbudget_epsilon = 20.0\nbudget_delta = 1e-5\nmin_sites = 2\n"
    sites = []
    for name in ("cleveland", "hungary"):
        site = Coordinator(make_site(tmp_path / name, policy, name=name), tmp_path / "state")
        save_secret(secret, site.site.guard.paths.he_secret_key)
        sites.append(site)
    c = sites[0]
    req = job("he", "job.min_sites=2", job_id="he-once", num_sites=2)
    wire = req.to_wire()
    updates = []
    for site in sites:
        assert site.admit(req)["accepted"]
        first = site.send(
            MessageType.TRAIN, {"job": wire, "server-round": 1, "he-round": 0}, arrays_to_record(c.model(req))
        )
        updates.append(EncryptedUpdate.from_bytes(opaque_from_record(first.content.array_records["arrays"])))
    total = sum_encrypted(secret.public(), updates).to_bytes()
    forged = sum_encrypted(secret.public(), [*updates, updates[0]]).to_bytes()
    claim = train_claim(req, 1, ["cleveland", "hungary"], total)
    tags = {site.site.name: site.confirm(req, claim) for site in sites}
    config = {"job": wire, "server-round": 1, "he-round": 1, **he_claim(claim, tags)}
    c.send(MessageType.EVALUATE, config, opaque_to_record(total))

    def train_naming(he_round: int, digest: str) -> bytes:
        config = {"job": wire, "server-round": 2, "he-round": he_round, "he-sum-digest": digest}
        reply = c.send(MessageType.TRAIN, config, ArrayRecord())
        return opaque_from_record(reply.content.array_records["arrays"])

    with pytest.raises(PolicyError, match=r"holds round 1's model \(sum [0-9a-f]{12}\); not training"):
        train_naming(1, sum_digest(forged))  # a sum the site never applied
    with pytest.raises(PolicyError, match="saying this site holds round 2's model"):
        train_naming(2, sum_digest(total))  # a round the site does not hold
    with pytest.raises(PolicyError, match="saying this site holds round 1's model"):
        train_naming(1, "")  # no digest at all is no proof either
    reply = EncryptedUpdate.from_bytes(train_naming(1, sum_digest(total)))  # the sum it applied: it trains
    assert (reply.num_sites, reply.keyset_id) == (1, secret.keyset_id)
