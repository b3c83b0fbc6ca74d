"""Four real hospitals under secure aggregation, and a coordinator that crafts every message.

Each site is real: its site file with a ``[secagg]`` section (its identity on disk, mode 0600, and
the member list its operator wrote), its data, ledger, audit log and state folder, fedcore's
ClientApp. The coordinator uses ``fedcore.secagg.server`` where it plays honest and crafts the
rest, as an attacker would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, MessageType

from fedcore.config import JobRequest
from fedcore.flower.serde import arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.secagg import server
from fedcore.secagg.keyfile import write_identity
from fedcore.secagg.messages import (
    KeyAdvertisement,
    MaskedInput,
    RoundRequest,
    ShareBundle,
    SurvivorSignature,
    UnmaskReply,
)
from fedcore.secagg.wire import Record
from tests.adversarial.coordinator import Coordinator, job, make_site

NAMES = ("cleveland", "hungary", "switzerland", "va")
R = TypeVar("R", bound=Record)


def secagg_table(members: dict[str, str], identity: Path, *, threshold: int = 3, extra: str = "") -> str:
    rows = ", ".join(f'{n} = "{k}"' for n, k in sorted(members.items()))
    return f'\n[secagg]\nidentity = "{identity}"\nmembers = {{ {rows} }}\nthreshold = {threshold}\n{extra}'


def policy(members: dict[str, str], identity: Path, **kw: object) -> str:
    base = "[privacy]\nbudget_epsilon = 20.0\nbudget_delta = 1e-5\nmin_sites = 3\n"
    return base + secagg_table(members, identity, **kw)  # type: ignore[arg-type]


@dataclass
class Federation:
    """The sites (by name), the job request, and the coordinator's round state."""

    sites: dict[str, Coordinator]
    request: JobRequest
    keys: dict[str, Path] = field(default_factory=dict)
    state: server.ServerState | None = None
    masked: dict[str, MaskedInput] = field(default_factory=dict)

    def ask(self, site: str, action: str, msg: Record, kind: type[R]) -> R:
        config = {"action": action, "job": self.request.to_wire()}
        reply = self.sites[site].send(
            MessageType.QUERY, config, opaque_to_record(msg.to_bytes(), "secagg"), key="secagg"
        )
        return kind.from_bytes(opaque_from_record(reply.content.array_records["secagg"], "secagg"))

    def train(self, site: str, round_: int, delivery: Record) -> MaskedInput:
        c = self.sites[site]
        record = arrays_to_record(c.model(self.request))
        config = {"job": self.request.to_wire(), "server-round": round_}
        content = {"arrays": record, "secagg": opaque_to_record(delivery.to_bytes(), "secagg")}
        reply = c.send_records(MessageType.TRAIN, config, content)
        return MaskedInput.from_bytes(opaque_from_record(reply.content.array_records["secagg"], "secagg"))

    def open(
        self, round_: int, participants: Sequence[str] = NAMES, *, attempt: str = "0123456789abcdef"
    ) -> RoundRequest:
        spec = self.request.spec.secagg
        assert spec is not None
        weighted = 1 if spec.weight == "examples" else 0  # the weight coordinate
        length = len(np.concatenate([a.ravel() for a in self.sites[NAMES[0]].model(self.request)])) + weighted
        self.state, rr = server.open_round(
            f"{self.request.job_id}/{attempt}", round_, tuple(participants), degree=len(participants) - 1,
            modulus_bits=32, length=length,
        )  # fmt: skip
        return rr

    def steps_0_to_2(
        self,
        round_: int,
        participants: Sequence[str] = NAMES,
        *,
        attempt: str = "0123456789abcdef",
        drop: Sequence[str] = (),
    ) -> None:
        """The honest first half of a round: keys, shares, masked inputs from every participant."""
        rr = self.open(round_, participants, attempt=attempt)
        assert self.state is not None
        for s in participants:
            self.state = server.add_advertisement(
                self.state, self.ask(s, "secagg-start", rr, KeyAdvertisement)
            )
        self.state, klist = server.key_list(self.state)
        for s in participants:
            self.state = server.add_shares(self.state, self.ask(s, "secagg-share", klist, ShareBundle))
        self.state, out = server.deliveries(self.state)
        for d in (d for d in out if d.receiver not in drop):  # ``drop``: gone before their masked input
            self.masked[d.receiver] = self.train(d.receiver, round_, d)
            self.state = server.add_masked(self.state, self.masked[d.receiver])

    def finish(self, survivors: Sequence[str], *, silent: Sequence[str] = ()) -> np.ndarray:
        """The honest second half over ``survivors``: signatures, reveal, the unmasked sum."""
        assert self.state is not None
        self.state, sreq = server.survivor_request(self.state)
        assert sreq.survivors == tuple(sorted(survivors))
        for s in sreq.survivors:
            self.state = server.add_signature(self.state, self.ask(s, "secagg-sign", sreq, SurvivorSignature))
        self.state, ureq = server.unmask_request(self.state)
        for s in (s for s in sreq.survivors if s not in silent):  # ``silent``: signed, then gone
            self.state = server.add_reveal(self.state, self.ask(s, "secagg-reveal", ureq, UnmaskReply))
        return server.result(self.state)

    def stored_input(self, site: str, round_: int) -> np.ndarray:
        """The site's own encoded input of a round, from its state folder (the test's oracle)."""
        c = self.sites[site]
        stored = c.site.replies.load(self.request.job_id, self.request.digest, "train", round_)
        assert stored is not None
        return np.asarray(stored.arrays[0], dtype=np.int64)


def federation(
    tmp_path: Path, *sets: str, job_id: str = "sa-1", threshold: int = 3, extra: str = ""
) -> Federation:
    """Four medical sites that accept each other, and a small ``secagg`` job admitted by all."""
    keys, members = {}, {}
    for name in NAMES:
        keys[name], members[name] = write_identity(name, tmp_path / "keys" / name)
    sites = {
        n: Coordinator(
            make_site(tmp_path / n, policy(members, keys[n], threshold=threshold, extra=extra), name=n),
            tmp_path / "state",
        )
        for n in NAMES
    }
    request = job("secagg", "job.min_sites=3", *sets, job_id=job_id, num_sites=len(NAMES))
    fed = Federation(sites, request, keys)
    for c in sites.values():
        admission = c.admit(request)
        assert admission["accepted"], admission
    return fed


def words_of(ints: np.ndarray) -> np.ndarray:
    return (ints.astype(np.int64).view(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


__all__ = ["NAMES", "ArrayRecord", "Federation", "federation", "policy", "secagg_table", "words_of"]
