"""Exact statistics under secure aggregation, through four real hospitals and a crafted coordinator.

The sites are real (site files with ``[secagg] exact_statistics = true``, identities on disk, data,
ledgers, audit logs, fedcore's ClientApp); the coordinator plays the protocol with
``fedcore.secagg.server`` where honest and crafts the rest. The oracle is a naive count over each
site's table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from flwr.app import MessageType

from fedcore.analytics.exact import exact_sums
from fedcore.analytics.noisy import secure_point
from fedcore.analytics.query import QueryRequest
from fedcore.analytics.released import released_histogram
from fedcore.errors import ConfigError
from fedcore.flower.serde import opaque_from_record, opaque_to_record
from fedcore.secagg import server
from fedcore.secagg.keyfile import write_identity
from fedcore.secagg.messages import (
    KeyAdvertisement,
    MaskedInput,
    ShareBundle,
    ShareDelivery,
    SurvivorRequest,
    SurvivorSignature,
    UnmaskReply,
)
from fedcore.secagg.wire import Record
from tests.adversarial.coordinator import Coordinator, Refused, make_site, statistics
from tests.adversarial.secagg_federation import NAMES, policy

R = TypeVar("R", bound=Record)
COUNT = {"name": "diseased", "stat": "count", "where": "num > 0"}
HIST = {"name": "chest pain", "stat": "histogram", "column": "cp"}
PROP = {"name": "prevalence", "stat": "proportion", "of": "num > 0", "by": "sex", "by_levels": [0, 1]}
ATTEMPT = "0123456789abcdef"


@dataclass
class StatsFederation:
    sites: dict[str, Coordinator]
    request: QueryRequest
    plans: dict[str, dict[str, object]] = field(default_factory=dict)
    state: server.ServerState | None = None
    masked: dict[str, MaskedInput] = field(default_factory=dict)

    def ask(self, site: str, action: str, msg: Record, kind: type[R]) -> R:
        config = {"action": action, "statistics": self.request.to_wire()}
        payload = opaque_to_record(msg.to_bytes(), "secagg")
        reply = self.sites[site].send(MessageType.QUERY, config, payload, key="secagg")
        return kind.from_bytes(opaque_from_record(reply.content.array_records["secagg"], "secagg"))

    def exchange_keys(self, attempt: str = ATTEMPT) -> list[ShareDelivery]:
        """Steps 0-1 with every site: keys and shares; the deliveries each site answers at step 2."""
        length = sum(len(x["groups"]) * x["width"] for x in self.plans[NAMES[0]]["layout"])  # type: ignore[index]
        session = f"{self.request.job_id}/{attempt}"
        self.state, rr = server.open_round(session, 1, NAMES, degree=3, modulus_bits=32, length=length)
        for s in NAMES:
            ad = self.ask(s, "secagg-start", rr, KeyAdvertisement)
            self.state = server.add_advertisement(self.state, ad)
        self.state, klist = server.key_list(self.state)
        for s in NAMES:
            self.state = server.add_shares(self.state, self.ask(s, "secagg-share", klist, ShareBundle))
        self.state, out = server.deliveries(self.state)
        return out

    def masked_answers(self) -> None:
        """Steps 0-2 with every site: keys, shares, each site's masked answer."""
        for d in self.exchange_keys():
            self.masked[d.receiver] = self.ask(d.receiver, "secagg-answer", d, MaskedInput)
            self.state = server.add_masked(self.state, self.masked[d.receiver])

    def open_sum(self) -> np.ndarray:
        assert self.state is not None
        self.state, sreq = server.survivor_request(self.state)
        for s in sreq.survivors:
            self.state = server.add_signature(self.state, self.ask(s, "secagg-sign", sreq, SurvivorSignature))
        self.state, ureq = server.unmask_request(self.state)
        for s in sreq.survivors:
            self.state = server.add_reveal(self.state, self.ask(s, "secagg-reveal", ureq, UnmaskReply))
        words = server.result(self.state)  # exact, or with room for the noise (the batch says which)
        return secure_point(self.request).from_words(words, num_sites=len(sreq.survivors))


def _federation(tmp_path: Path, *queries: dict[str, object], exact: bool = True) -> StatsFederation:
    keys, members = {}, {}
    for name in NAMES:
        keys[name], members[name] = write_identity(name, tmp_path / "keys" / name)
    extra = "exact_statistics = true\n" if exact else ""
    files = {n: make_site(tmp_path / n, policy(members, keys[n], extra=extra), name=n) for n in NAMES}
    sites = {n: Coordinator(f, tmp_path / "state") for n, f in files.items()}
    request = statistics(*(queries or (COUNT, HIST, PROP)), secagg=True, min_sites=3, num_sites=len(NAMES))
    return StatsFederation(sites, request)


def _admitted(tmp_path: Path, *queries: dict[str, object]) -> StatsFederation:
    fed = _federation(tmp_path, *queries)
    for name, c in fed.sites.items():
        admission = c.admit_statistics(fed.request)
        assert admission["accepted"], admission
        fed.plans[name] = admission["plan"]
    return fed


def test_the_exact_sum_equals_the_plaintext_sum_and_no_answer_is_seen(tmp_path: Path) -> None:
    fed = _admitted(tmp_path)
    fed.masked_answers()
    total = fed.open_sum()
    tables = [fed.sites[s].site.statistics.table for s in NAMES]
    diseased = sum(int((t["num"] > 0).sum()) for t in tables)
    cp = [sum(int((t["cp"] == level).sum()) for t in tables) for level in (1, 2, 3, 4)]
    prop = []
    for sex in (0, 1):
        rows = [t[(t["sex"] == sex) & t["num"].notna()] for t in tables]
        prop += [sum(len(r) for r in rows), sum(int((r["num"] > 0).sum()) for r in rows)]
    assert total.tolist() == [diseased, *cp, *prop]  # exact: no noise, no rounding
    layout = [(x["groups"], x["width"]) for x in fed.plans["cleveland"]["layout"]]  # type: ignore[union-attr]
    report = exact_sums(fed.request.job.queries, layout, total, min_cell_size=10)
    assert report[0]["groups"]["all"] == {"count": diseased}
    assert report[2]["groups"]["sex = 1"]["proportion"] == pytest.approx(prop[3] / prop[2])
    for s, own in zip(NAMES, tables, strict=True):  # the coordinator holds masked vectors only
        assert int(fed.masked[s].vector[0]) != int((own["num"] > 0).sum())
        assert len(set(fed.masked[s].vector.tolist())) == len(fed.masked[s].vector)
    with pytest.raises(Refused, match="answered only masked"):  # never in the clear
        fed.sites["cleveland"].answer(fed.request)


def test_one_survivor_set_per_batch_and_the_floor(tmp_path: Path) -> None:
    fed = _admitted(tmp_path, COUNT)
    fed.masked_answers()
    session = f"{fed.request.job_id}/{ATTEMPT}"
    two = SurvivorRequest(session, 1, ("cleveland", "hungary"))
    with pytest.raises(Refused, match="opens sums of >= 3"):
        fed.ask("cleveland", "secagg-sign", two, SurvivorSignature)
    three = SurvivorRequest(session, 1, ("cleveland", "hungary", "switzerland"))
    fed.ask("cleveland", "secagg-sign", three, SurvivorSignature)
    other = SurvivorRequest(session, 1, ("cleveland", "hungary", "va"))  # a difference of two sums
    with pytest.raises(Refused, match="another sum"):
        fed.ask("cleveland", "secagg-sign", other, SurvivorSignature)
    assert fed.state is not None
    _, deliveries = server.deliveries(fed.state)
    again = next(d for d in deliveries if d.receiver == "cleveland")
    with pytest.raises(Refused, match="share delivery at step"):  # answered once: no second masked copy
        fed.ask("cleveland", "secagg-answer", again, MaskedInput)
    kinds = [r.kind for r in fed.sites["cleveland"].site.guard.audit.records()]
    assert kinds.count("refuse") >= 3


def test_a_site_releases_exact_statistics_only_by_its_own_file(tmp_path: Path) -> None:
    fed = _federation(tmp_path, COUNT, exact=False)
    admission = fed.sites["va"].admit_statistics(fed.request)
    assert not admission["accepted"] and "exact_statistics = true" in admission["reason"]


@pytest.mark.parametrize(
    ("job", "query", "message"),
    [
        ({"he": True}, COUNT, "not both"),
        ({}, {**COUNT, "epsilon": 1.0}, "remove epsilon"),
        ({}, {"name": "m", "stat": "mean", "column": "age"}, "sums under secure aggregation are of"),
    ],
    ids=["with-he", "epsilon", "mean"],
)
def test_an_exact_batch_is_strict(job: dict[str, object], query: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        statistics(query, secagg=True, **job)


def test_an_exact_histogram_is_read_back_as_released_or_suppressed(tmp_path: Path) -> None:
    request = statistics(HIST, secagg=True)
    for cell, expect in ((10, [3.0, 0.0, 5.0, 2.0]), (11, None)):  # summed count 10
        results = exact_sums(request.job.queries, [(["all"], 4)], np.array([3, 0, 5, 2]), min_cell_size=cell)
        path = tmp_path / f"statistics-{cell}.json"
        path.write_text(json.dumps({"results": results}))
        if expect is None:
            with pytest.raises(ConfigError, match="not released"):
                released_histogram(path, "chest pain")
        else:
            assert released_histogram(path, "chest pain").tolist() == expect
