"""The coordinator's side of an HE job, besides adding ciphertexts: which encrypted sums it holds,
which site applied which, the sums' claims and confirmations, and what each message carries.

Each round's sum is held until every site of the job applied it (a site sampled out, or one that
died and rejoined, receives the sums it missed, ``he-missed``). A sum that travels goes with its
claim and its contributors' confirmations (``fedcore.site.sums``), which :meth:`HeRounds.confirm`
asks for right after the sum is formed: a site opens no sum without them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedcore.errors import UpdateError
from fedcore.flower.protocol import query
from fedcore.flower.replies import clean_reason
from fedcore.flower.serde import opaque_to_record
from fedcore.he.site import sum_digest
from fedcore.site.sums import claim_for, tags_to_wire

__all__ = ["HeRounds"]


class HeRounds:
    """The sums of an HE job the coordinator holds, per round, and who applied which (by node)."""

    def __init__(self, first_round: int = 1) -> None:
        self.first_round = first_round
        self.sums: dict[int, bytes] = {}  # the sums some site of the job has not applied yet
        self.claims: dict[int, str] = {}  # each held sum's claim and its contributors' confirmations
        self.at: dict[int, int] = {}  # the last round's sum each node applied
        self.latest: tuple[int, str] = (0, "")  # the latest sum's round and sum_digest

    def for_node(self, record: RecordDict, node: int, kind: str) -> RecordDict:
        """A train message to a node that already applied the sum it would carry (it evaluated last
        round) names that sum by its digest instead: the sum travels once per round. A sum that does
        travel goes with its claim and confirmations, and with the sums the node missed."""
        config = record.config_records["config"]
        he_round = int(config["he-round"])  # type: ignore[arg-type]
        applied = he_round >= 1 and self.latest[0] == he_round and self.at.get(node, 0) >= he_round
        if kind == MessageType.TRAIN and applied:
            held = ConfigRecord({**config, "he-sum-digest": self.latest[1]})
            return RecordDict({**record, "arrays": ArrayRecord(), "config": held})
        if he_round in self.claims:
            entry = json.loads(self.claims[he_round])
            config = ConfigRecord({**config, "he-claim": entry["claim"], "he-tags": entry["tags"]})
            record = RecordDict({**record, "config": config})
        return self._with_missed(record, node, he_round)

    def _with_missed(self, record: RecordDict, node: int, he_round: int) -> RecordDict:
        """Add the sums of the rounds ``node`` missed (``he-missed``, one entry ``r<k>`` per round k)
        and their claims (``he-missed-claims``), so it can bring its copy of the global model up to
        date. A sum no longer held (a resumed job's earlier rounds) is not sent: the site then
        refuses the round with the round it holds."""
        start = self.at.get(node, self.first_round - 1) + 1
        missed = [k for k in range(start, he_round) if k in self.sums]
        if not missed:
            return record
        sums = ArrayRecord()
        for k in missed:
            opaque_to_record(self.sums[k], f"r{k}", sums)
        claims = {str(k): json.loads(self.claims[k]) for k in missed if k in self.claims}
        config = ConfigRecord({**record.config_records["config"], "he-missed-claims": json.dumps(claims)})
        return RecordDict({**record, "he-missed": sums, "config": config})

    def keep(self, server_round: int, total: bytes, nodes: Sequence[int]) -> None:
        """Hold round ``server_round``'s sum while a site of the job (``nodes``) has not applied it."""
        self.latest = (server_round, sum_digest(total))
        self.sums[server_round] = total
        oldest = min((self.at.get(n, self.first_round - 1) for n in nodes), default=server_round)
        for k in [k for k in self.sums if k <= oldest]:
            del self.sums[k]
        for k in [k for k in self.claims if k < server_round and k not in self.sums]:
            del self.claims[k]  # the latest sum's stays: it travels as the next round's model

    def applied(self, replies: Iterable[Message], he_round: int) -> None:
        """The nodes that answered hold the global model after round ``he_round``'s sum."""
        for msg in replies:
            if not msg.has_error():
                node = msg.metadata.src_node_id
                self.at[node] = max(self.at.get(node, 0), he_round)

    def moved(self, old: int, new: int) -> None:
        """A site's node came back under a new id: it holds what the old node held."""
        if old in self.at:
            self.at[new] = self.at[old]

    def catch_up(self, site_names: Mapping[int, str]) -> tuple[dict[int, bytes], dict[str, int]]:
        """What a checkpoint keeps so a resumed job can still bring a lagging site up to date: the
        sums held, and each site's last applied round (by name: node ids change)."""
        at: dict[str, int] = {}
        for node, r in self.at.items():
            site = site_names.get(node, f"node-{node}")
            at[site] = max(r, at.get(site, 0))  # a rejoined site's old and new node
        return dict(self.sums), at

    def restore(
        self,
        sums: Mapping[int, bytes],
        at: Mapping[str, int],
        claims: Mapping[int, str],
        site_names: Mapping[int, str],
    ) -> None:
        """The inverse of :meth:`catch_up` for a resumed job (a site not listed applied none)."""
        self.sums, self.claims = dict(sums), dict(claims)
        self.at = {n: at.get(name, 0) for n, name in site_names.items()}

    def confirm(
        self,
        grid: Grid,
        claim_of: tuple[str, int, str],
        contributors: Sequence[str],
        total: bytes,
        nodes: Mapping[str, int],
        timeout: float,
        site_of: Callable[[Message], str],
    ) -> None:
        """Ask round ``server_round``'s contributors to confirm its one sum (``fedcore.site.sums``):
        no site opens a sum without every contributor's confirmation. ``claim_of`` is (job id,
        round, the job request's wire form). Keeps the claim and the confirmations with the sum, or
        raises ``UpdateError`` naming who did not confirm (then no one can open it)."""
        job_id, server_round, job_wire = claim_of
        claim = claim_for(job_id, "train", server_round, contributors, [sum_digest(total)])
        config = {"action": "confirm", "job": job_wire, "claim": claim.to_wire()}
        tags, reasons = {}, {}
        for reply in query(grid, [nodes[s] for s in contributors], config, timeout):
            site = site_of(reply)
            if reply.has_error():
                reasons[site] = clean_reason(str(reply.error.reason))
            elif "confirm" in reply.content.config_records:
                tags[site] = str(reply.content.config_records["confirm"]["tag"])
        missing = [s for s in contributors if s not in tags]
        if missing:
            why = "; ".join(f"{s}: {reasons.get(s, 'no answer')}" for s in missing)
            raise UpdateError(
                f"round {server_round}: not every site in the sum of {len(contributors)} encrypted updates "
                f"confirmed it ({why}), so no site may open it"
            )
        self.claims[server_round] = json.dumps({"claim": claim.to_wire(), "tags": tags_to_wire(tags)})
