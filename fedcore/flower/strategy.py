"""A Flower ``Strategy`` that drives any fedcore ``Aggregator``.

Flower runs the loop (``Strategy.start``); this class turns replies into validated
``ClientUpdate``s, calls the aggregator, applies its step, and keeps per-site history.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcore.aggregators.base import Aggregator, Arrays, ClientUpdate
from fedcore.aggregators.screen import screen_norms
from fedcore.algorithms import ExtraSpec, ServerAlgorithm
from fedcore.errors import FedcoreError, UpdateError
from fedcore.flower import replies as checks
from fedcore.flower.extras import check_reply_extras, extras_to_records, record_names
from fedcore.flower.he_server import HeRounds
from fedcore.flower.secagg_server import SecAggRounds
from fedcore.flower.serde import arrays_from_record, arrays_to_record, opaque_to_record
from fedcore.he import RunningSum
from fedcore.he.keys import PublicContext

__all__ = ["FedcoreStrategy", "RoundLog", "Tamper"]

Tamper = Callable[[list[ClientUpdate], int], list[ClientUpdate]]
"""Simulation only: what the round's attacking sites send instead (``fedcore.harness.attacks``)."""

log = logging.getLogger("fedcore")


@dataclass
class RoundLog:
    """What happened in one round, for metrics.json and the report."""

    round: int
    seconds: float = 0.0
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluate: dict[str, dict[str, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    aggregate: dict[str, float] = field(default_factory=dict)
    sampled_train: list[str] = field(default_factory=list)  # the sites asked to train this round
    sampled_evaluate: list[str] = field(default_factory=list)  # the sites asked to evaluate
    sent_bytes: dict[str, int] = field(default_factory=dict)  # array bytes sent to each site this round

    def mean_accuracy(self) -> float:
        accs = [m["accuracy"] for m in self.evaluate.values() if "accuracy" in m]
        return float(np.mean(accs)) if accs else float("nan")


class FedcoreStrategy(Strategy):
    """Send the global model to the round's sites, aggregate deltas with ``aggregator``.

    ``sites_per_round`` (None: all of ``node_ids``) sites are sampled uniformly without replacement
    with ``rng`` for each round's training and, independently, for its evaluation. The sampling is
    not a privacy mechanism: a site charges the rounds it answers and claims no amplification.
    """

    def __init__(
        self,
        aggregator: Aggregator | None,
        *,
        node_ids: list[int],
        min_sites: int,
        max_update_norm: float | None = None,
        on_round: Callable[[RoundLog], None] | None = None,
        he_public: PublicContext | None = None,
        num_rounds: int = 0,
        site_names: dict[int, str] | None = None,
        sites_per_round: int | None = None,
        rng: random.Random | None = None,
        first_round: int = 1,
        on_checkpoint: Callable[[int, ArrayRecord], None] | None = None,
        job_id: str = "",
        timeout: float = 600.0,
        secagg: SecAggRounds | None = None,
        max_norm_ratio: float | None = None,
    ) -> None:
        self.num_rounds = num_rounds
        self.secagg = secagg  # secure aggregation: each round one SecAgg+ round (secagg_server.py)
        self.sites_per_round = sites_per_round
        self.rng = rng if rng is not None else random.Random(0)
        # a resumed job: Flower counts its rounds from 1, the job from first_round (see _absolute)
        self.first_round, self.on_checkpoint = first_round, on_checkpoint
        self._latest: ArrayRecord | None = None  # the round's new global model (or HE sum)
        self.aggregator = aggregator
        self.he_public = he_public
        self.site_names = dict(site_names or {})
        self.node_ids = node_ids
        self.min_sites = min_sites
        self.max_update_norm, self.max_norm_ratio = max_update_norm, max_norm_ratio  # screen_norms
        self.extras_up: Mapping[str, ExtraSpec] = {}  # what the job's algorithm sends with each update
        self.tamper: Tamper | None = None  # simulation only: the round's attacks, before the screen
        self.on_round = on_round
        self.history: list[RoundLog] = []
        self.asked: set[int] = set()  # every node sent a train or evaluate request
        self.he = None if he_public is None else HeRounds(first_round)  # HE: sums held, who applied which
        # a site whose node restarted with a new id (no registered key): {new node: site}, once admitted
        self.rejoin: Callable[[Grid, Mapping[int, str]], dict[int, str]] | None = None
        self.audit_heads: dict[str, str] = {}  # each site's audit head as last seen: kept outside the site
        self._global: Arrays = ()
        self._shapes: list[tuple[int, ...]] = []  # the model's tensor shapes: what a reply must match
        self._asked: set[int] = set()  # the nodes asked to train this round: no one else may answer
        self._asked_evaluate: set[int] = set()  # and to evaluate
        self._sent: list[Message] = []  # this round's last batch of messages (train, then evaluate)
        self._t0 = 0.0
        self.job_id, self.timeout = job_id, timeout
        self._grid: Grid | None = None  # this round's grid: under HE the sum's confirmations are asked on it
        self._job_wire = ""  # the job request the sites re-validate (from the train config)

    def _site(self, msg: Message) -> str:
        """The replying site's name (error replies carry no content: use the name it gave at start).

        Records the site's audit head from its reply, as an external copy of the site's log head.
        """
        node = self._node(msg)
        name = self.site_names.get(node, f"node-{node}")
        if msg.has_content() and "site" in msg.content.config_records:
            info = msg.content.config_records["site"]
            if "audit-head" in info:
                self.audit_heads[name] = str(info["audit-head"])
        return name

    def _node(self, msg: Message) -> int:
        """The node a reply stands for: its sender, or, for the error the SuperLink writes when a node
        did not answer (sent from ``SUPERLINK_NODE_ID``), the node the unanswered message went to."""
        src = msg.metadata.src_node_id
        if src != SUPERLINK_NODE_ID or not msg.has_error():
            return src
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}  # ids set at push
        return sent.get(msg.metadata.reply_to_message_id, src)

    def sample(self) -> list[int]:
        """This round's nodes: ``sites_per_round`` of ``node_ids`` drawn uniformly (all when None)."""
        k = self.sites_per_round
        if k is None or k >= len(self.node_ids):
            return list(self.node_ids)
        # drawn over the sites in name order: node ids differ from run to run (a resumed job, a
        # restarted node), the draw for a seed does not
        by_site = sorted(self.node_ids, key=lambda n: self.site_names.get(n, f"node-{n}"))
        return sorted(self.rng.sample(by_site, k))

    def _messages(self, record: RecordDict, kind: str, nodes: list[int]) -> list[Message]:
        names = [self.site_names.get(n, f"node-{n}") for n in nodes]
        rlog = self.history[-1]
        (rlog.sampled_train if kind == MessageType.TRAIN else rlog.sampled_evaluate).extend(names)
        self.asked.update(nodes)
        he, sa = self.he, self.secagg if kind == MessageType.TRAIN else None

        def content(n: int) -> RecordDict:
            return (
                sa.for_node(record, n)
                if sa is not None
                else record
                if he is None
                else he.for_node(record, n, kind)
            )

        self._sent = [Message(content(n), dst_node_id=n, message_type=kind) for n in nodes]
        for name, m in zip(names, self._sent, strict=True):
            sent = sum(len(a.data) for rec in m.content.array_records.values() for a in rec.values())
            rlog.sent_bytes[name] = rlog.sent_bytes.get(name, 0) + sent
        return self._sent

    def _take_back(self, grid: Grid) -> None:
        """Sites of the job whose node came back under a new node id take part again from this round,
        in their old node's place (sampling, HE catch-up). A node that restarts with a registered
        key keeps its id and needs nothing."""
        if self.rejoin is None:
            return
        job_sites = {n: self.site_names.get(n, f"node-{n}") for n in self.node_ids}
        for node, site in self.rejoin(grid, job_sites).items():
            old = [n for n in self.node_ids if self.site_names.get(n) == site]
            if not old:  # not a site this job runs on
                continue
            self.node_ids[self.node_ids.index(old[0])] = node
            self.site_names[node] = site
            if self.he is not None:
                self.he.moved(old[0], node)
            log.info("site %r rejoined the job as node %d (was node %d)", site, node, old[0])

    def _absolute(self, flower_round: int) -> int:
        """The job's round number of Flower's ``flower_round`` (they differ in a resumed job)."""
        return flower_round + self.first_round - 1

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self._absolute(server_round)
        log.info("job %s: round %d of %d", self.job_id, server_round, self.num_rounds)  # Flower counts from 1
        self._t0 = time.perf_counter()
        self._grid, self._job_wire = grid, str(config.get("job", ""))
        self._take_back(grid)
        self.history.append(RoundLog(round=server_round))
        config["server-round"] = server_round
        if self.he_public is not None:
            config["he-round"] = server_round - 1  # arrays hold round r-1's encrypted sum (0: initial)
            self._shapes = self._shapes or checks.shapes_of(arrays)
        else:
            self._global = arrays_from_record(arrays)
            self._shapes = [g.shape for g in self._global]
        extras = (
            self.aggregator.broadcast(self._shapes) if isinstance(self.aggregator, ServerAlgorithm) else {}
        )
        record = RecordDict({"arrays": arrays, "config": config, **extras_to_records(extras)})
        nodes = self.sample()
        if self.secagg is not None:  # the round's key agreement and shares first: then the train messages
            names = {self.site_names.get(n, f"node-{n}"): n for n in nodes}
            nodes = self.secagg.prepare(grid, server_round, names, sum(int(np.prod(s)) for s in self._shapes))
        messages = self._messages(record, MessageType.TRAIN, nodes)
        self._asked = {m.metadata.dst_node_id for m in messages}
        return messages

    def _sender(self, msg: Message, asked: Collection[int], doubled: Collection[int]) -> str:
        """The replying site, once it was asked, answered once and without an error."""
        site, node = self._site(msg), self._node(msg)
        if node not in asked:
            raise UpdateError(f"node {node} is not a site asked this round; its reply is ignored")
        if node in doubled:
            raise UpdateError(f"site {site!r} sent more than one reply this round; all of them are dropped")
        if msg.has_error():
            raise UpdateError(checks.clean_reason(str(msg.error.reason)))
        return site

    def _checked(self, msg: Message, doubled: Collection[int]) -> tuple[str, dict[str, float], int]:
        """The reply's site, metrics and weight, once its sender and records are what a site sends
        (``fedcore.flower.replies``); raises ``UpdateError`` with the reason otherwise."""
        site, node = self._sender(msg, self._asked, doubled), self._node(msg)
        checks.check_records(msg, site, record_names(self.extras_up))
        claimed = str(msg.content.config_records["site"].get("site", ""))
        if node in self.site_names and claimed != site:
            raise UpdateError(
                f"node {node} is site {site!r} but its reply names {checks.clean_reason(claimed)[:80]!r}"
            )
        metrics, weight = checks.check_metrics(msg.content.metric_records["metrics"], site)
        return site, metrics, weight

    def _validate(self, msg: Message, doubled: Collection[int] = ()) -> ClientUpdate:
        site, metrics, n = self._checked(msg, doubled)
        record = msg.content.array_records["arrays"]
        delta = checks.check_plain(record, self._shapes, site, max_norm=None)  # norms: screen_norms
        extras = check_reply_extras(msg, self.extras_up, self._shapes, site)
        return ClientUpdate(delta=delta, num_examples=n, site=site, metrics=metrics, extras=extras)

    def _reject(
        self, server_round: int, msg: Message, err: Exception, *, asked: Collection[int], what: str = ""
    ) -> None:
        """Drop a bad reply this round: its reason (one bounded line, after any earlier reason of the
        same site this round) goes to the round's log."""
        text = str(err) if isinstance(err, FedcoreError) else f"internal error ({type(err).__name__}: {err})"
        reason = checks.clean_reason(what + text)
        name = self._site(msg)
        if self._node(msg) not in asked:
            name = f"node-{self._node(msg)}"  # not a site of this round, whatever it claims
        rejected = self.history[-1].rejected
        rejected[name] = f"{rejected[name]}; {reason}" if name in rejected else reason
        log.info("round %d: rejected the reply of %s: %s", server_round, name, reason)

    def _unanswered(
        self, server_round: int, replies: Sequence[Message], asked: Collection[int], what: str = ""
    ) -> None:
        """Name, by site, every node asked this round that sent nothing (stopped, or too slow): in the
        round's rejections (report, summary) and in the coordinator's log."""
        answered = {self._node(m) for m in replies}
        for node in sorted(set(asked) - answered):
            name = self.site_names.get(node, f"node-{node}")
            reason = f"{what}no reply: its node stopped or did not answer within {self.timeout:.0f} s"
            self.history[-1].rejected.setdefault(name, reason)
            log.warning("round %d: site %r (node %d) sent no %sreply; the round goes on without it",
                        server_round, name, node, what)  # fmt: skip

    def sum_round(self, server_round: int, replies: Iterable[Message]) -> bytes:
        """Coordinator under HE: check each reply and add the valid ciphertexts, nothing else (it holds
        no secret key); a bad reply is left out with its reason. Returns the sum's wire bytes."""
        assert self.he_public is not None
        rlog = self.history[-1]
        encrypted = RunningSum(self.he_public)  # each reply's ciphertexts loaded once: checked and added
        replies_ = list(replies)
        doubled = checks.duplicates(replies_, self._node)
        t0 = time.perf_counter()
        for msg in replies_:
            try:
                site, metrics, _ = self._checked(msg, doubled)
                update = checks.check_encrypted(
                    msg.content.array_records["arrays"], self.he_public, self._shapes, site, into=encrypted
                )
                rlog.train[site] = {**metrics, "ciphertext_bytes": float(update.ciphertext_bytes)}
            except Exception as err:  # a bad site is dropped this round, and reported
                self._reject(server_round, msg, err, asked=self._asked)
        checked = time.perf_counter() - t0
        self._unanswered(server_round, replies_, self._asked)
        self._enough(server_round, len(encrypted), rlog)
        t0 = time.perf_counter()
        total = encrypted.result().to_bytes()
        rlog.aggregate = {
            "he_sum_seconds": time.perf_counter() - t0,
            "he_sum_bytes": float(len(total)),
            "he_check_seconds": checked,
            "he_sites": float(len(encrypted)),
        }
        return total

    def _confirmed(self, server_round: int, total: bytes) -> None:
        """Every contributor of round ``server_round``'s sum confirms it (``HeRounds.confirm``)."""
        assert self.he is not None and self._grid is not None
        t0, rlog = time.perf_counter(), self.history[-1]
        nodes = {self.site_names.get(n, f"node-{n}"): n for n in self._asked}
        self.he.confirm(
            self._grid, (self.job_id, server_round, self._job_wire), sorted(rlog.train), total, nodes,
            self.timeout, self._site,
        )  # fmt: skip
        rlog.aggregate["he_confirm_seconds"] = time.perf_counter() - t0

    def _enough(self, server_round: int, valid: int, rlog: RoundLog) -> None:
        """Raise, naming every rejected site and why, when fewer than ``min_sites`` updates are valid."""
        if valid >= self.min_sites:
            return
        why = "; ".join(  # a site's own error text need not name it: then the reason is prefixed
            r if f"'{site}'" in r or r.startswith(f"node {site[5:]} ") else f"site {site!r}: {r}"
            for site, r in rlog.rejected.items()
        )
        raise UpdateError(
            f"round {server_round}: {valid} valid updates, the job needs min_sites={self.min_sites}; "
            + (f"rejected: {why}" if why else "the other sites did not reply")
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self._absolute(server_round)
        if self.he is not None:
            replies = list(replies)
            self.he.applied([m for m in replies if m.metadata.src_node_id in self._asked], server_round - 1)
            total = self.sum_round(server_round, replies)
            self._confirmed(server_round, total)
            self.he.keep(server_round, total, self.node_ids)
            self._latest = opaque_to_record(total)
            return self._latest, MetricRecord({"sites": len(self.history[-1].train)})
        if self.secagg is not None:
            return self._secagg_round(server_round, list(replies))
        rlog = self.history[-1]
        updates: list[ClientUpdate] = []
        replies_ = list(replies)
        doubled = checks.duplicates(replies_, self._node)
        for msg in replies_:
            try:
                updates.append(self._validate(msg, doubled))
            except Exception as err:  # a bad site is dropped this round, and reported
                self._reject(server_round, msg, err, asked=self._asked)
        self._unanswered(server_round, replies_, self._asked)
        if self.tamper is not None:  # simulation: the attacking sites' updates, replaced
            updates = self.tamper(updates, server_round)
        screened = screen_norms(updates, max_norm=self.max_update_norm, max_ratio=self.max_norm_ratio)
        updates = screened.updates
        for site, reason in screened.rejected.items():
            rlog.rejected[site] = f"{rlog.rejected[site]}; {reason}" if site in rlog.rejected else reason
            log.info("round %d: rejected the reply of %s: %s", server_round, site, reason)
        self._enough(server_round, len(updates), rlog)
        rlog.train = {u.site: {**u.metrics, "num_examples": u.num_examples} for u in updates}
        assert self.aggregator is not None  # plaintext jobs always have one
        result = self.aggregator.aggregate(updates, server_round=server_round)
        rlog.aggregate = dict(result.metrics) | {f"norm_clipped[{s}]": f for s, f in screened.clipped.items()}
        if screened.bound is not None:
            rlog.aggregate["norm_bound"] = screened.bound
        new = tuple(g + s for g, s in zip(self._global, result.step, strict=True))
        self._latest = arrays_to_record(new)
        return self._latest, MetricRecord({"sites": len(updates)})

    def _secagg_round(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """Unmask the sum over the survivors only; divide by their masked-in weight; the mean step."""
        assert self.secagg is not None and self._grid is not None and self.aggregator is not None
        rlog = self.history[-1]
        try:
            summed, weight, rlog.train = self.secagg.finish(self._grid, replies, self._asked, self._site)
        finally:
            rlog.rejected.update(self.secagg.rejected)
        self._enough(server_round, len(rlog.train), rlog)
        sizes = np.cumsum([int(np.prod(s)) for s in self._shapes])[:-1]
        mean = tuple(
            p.reshape(s) for p, s in zip(np.split(summed / weight, sizes), self._shapes, strict=True)
        )
        result = self.aggregator.apply_mean(mean, server_round=server_round)  # type: ignore[attr-defined]
        rlog.aggregate = {**self.secagg.figures, **result.metrics}
        self._latest = arrays_to_record(tuple(g + s for g, s in zip(self._global, result.step, strict=True)))
        return self._latest, MetricRecord({"sites": len(rlog.train)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self._absolute(server_round)
        config["server-round"] = server_round
        if self.he_public is not None:
            config["he-round"] = server_round
        config["final"] = server_round == self.num_rounds
        record = RecordDict({"arrays": arrays, "config": config})
        messages = self._messages(record, MessageType.EVALUATE, self.sample())
        self._asked_evaluate = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rlog = self.history[-1]
        replies_ = list(replies)
        if self.he is not None:
            self.he.applied(
                [m for m in replies_ if m.metadata.src_node_id in self._asked_evaluate],
                self._absolute(server_round),
            )
        doubled = checks.duplicates(replies_, self._node)
        for msg in replies_:
            try:
                site = self._sender(msg, self._asked_evaluate, doubled)
                rlog.evaluate[site] = checks.check_scores(msg, site)
            except Exception as err:  # the round's scores go on without this site's
                self._reject(server_round, msg, err, asked=self._asked_evaluate, what="evaluation: ")
        self._unanswered(self._absolute(server_round), replies_, self._asked_evaluate, "evaluation ")
        if self.on_checkpoint is not None and self._latest is not None:  # the round is over: keep it
            self.on_checkpoint(rlog.round, self._latest)
        rlog.seconds = time.perf_counter() - self._t0  # the checkpoint is part of the round's work
        if self.on_round is not None:
            self.on_round(rlog)
        return MetricRecord({"mean-accuracy": rlog.mean_accuracy()})

    def summary(self) -> None:
        how = "HE sum" if self.aggregator is None else type(self.aggregator).__name__
        log.info("fedcore strategy: %s over %d sites", how, len(self.node_ids))


def history_json(history: list[RoundLog]) -> list[Mapping[str, Any]]:
    return [json.loads(json.dumps(r.__dict__)) for r in history]


def history_from_json(rounds: Iterable[Mapping[str, Any]]) -> list[RoundLog]:
    """The inverse of ``history_json`` (a resumed job's rounds so far, from its checkpoint)."""
    return [RoundLog(**dict(r)) for r in rounds]
