"""A Flower ``Strategy`` that drives any fedcore ``Aggregator``.

Flower runs the loop (``Strategy.start``); this class turns replies into validated
``ClientUpdate``s, calls the aggregator, applies its step, and keeps per-site history.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedcore.aggregators.base import Aggregator, Arrays, ClientUpdate
from fedcore.errors import FedcoreError, KeyMismatchError, UpdateError
from fedcore.flower.serde import arrays_from_record, arrays_to_record, opaque_from_record, opaque_to_record
from fedcore.he import EncryptedUpdate, sum_encrypted
from fedcore.he.keys import PublicContext

__all__ = ["FedcoreStrategy", "RoundLog"]

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

    def mean_accuracy(self) -> float:
        accs = [m["accuracy"] for m in self.evaluate.values() if "accuracy" in m]
        return float(np.mean(accs)) if accs else float("nan")


class FedcoreStrategy(Strategy):
    """Send the global model to every site, aggregate deltas with ``aggregator``."""

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
        first_round: int = 1,
        on_checkpoint: Callable[[int, ArrayRecord], None] | None = None,
    ) -> None:
        self.num_rounds = num_rounds
        # a resumed job: Flower counts its rounds from 1, the job from first_round (see _absolute)
        self.first_round, self.on_checkpoint = first_round, on_checkpoint
        self._latest: ArrayRecord | None = None  # the round's new global model (or HE sum)
        self.aggregator = aggregator
        self.he_public = he_public
        self.site_names = dict(site_names or {})
        self.node_ids = node_ids
        self.min_sites = min_sites
        self.max_update_norm = max_update_norm
        self.on_round = on_round
        self.history: list[RoundLog] = []
        self.audit_heads: dict[str, str] = {}  # each site's audit head as last seen: kept outside the site
        self._global: Arrays = ()
        self._t0 = 0.0

    def _site(self, msg: Message) -> str:
        """The replying site's name (error replies carry no content: use the name it gave at start).

        Records the site's audit head from its reply, as an external copy of the site's log head.
        """
        node = msg.metadata.src_node_id
        name = self.site_names.get(node, f"node-{node}")
        if msg.has_content() and "site" in msg.content.config_records:
            info = msg.content.config_records["site"]
            if "audit-head" in info:
                self.audit_heads[name] = str(info["audit-head"])
        return name

    def _absolute(self, flower_round: int) -> int:
        """The job's round number of Flower's ``flower_round`` (they differ in a resumed job)."""
        return flower_round + self.first_round - 1

    def _messages(self, record: RecordDict, kind: str) -> list[Message]:
        return [Message(record, dst_node_id=n, message_type=kind) for n in self.node_ids]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self._absolute(server_round)
        self._t0 = time.perf_counter()
        self.history.append(RoundLog(round=server_round))
        config["server-round"] = server_round
        if self.he_public is not None:
            config["he-round"] = server_round - 1  # arrays hold round r-1's encrypted sum (0: initial)
        else:
            self._global = arrays_from_record(arrays)
        return self._messages(RecordDict({"arrays": arrays, "config": config}), MessageType.TRAIN)

    def _validate(self, msg: Message) -> ClientUpdate:
        site = self._site(msg)
        if msg.has_error():
            raise UpdateError(str(msg.error.reason))
        delta = arrays_from_record(msg.content.array_records["arrays"])
        metrics = {k: float(v) for k, v in msg.content.metric_records["metrics"].items()}  # type: ignore[arg-type]
        shapes, expected = [d.shape for d in delta], [g.shape for g in self._global]
        if shapes != expected:
            raise UpdateError(f"site {site!r} sent shapes {shapes}, expected {expected}")
        if not all(np.all(np.isfinite(d)) for d in delta):
            raise UpdateError(f"site {site!r} sent a non-finite update (NaN or inf)")
        norm = float(np.sqrt(sum(float(np.sum(d * d)) for d in delta)))
        if self.max_update_norm is not None and norm > self.max_update_norm:
            raise UpdateError(
                f"site {site!r} sent an update of L2 norm {norm:.4g} > bound {self.max_update_norm}"
            )
        n = round(metrics.pop("num-examples", 0))
        return ClientUpdate(delta=delta, num_examples=n, site=site, metrics=metrics)

    def _aggregate_encrypted(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Coordinator under HE: add ciphertexts, nothing else (it holds no secret key)."""
        assert self.he_public is not None
        rlog = self.history[-1]
        encrypted: list[EncryptedUpdate] = []
        for msg in replies:
            site = self._site(msg)
            try:
                if msg.has_error():
                    raise UpdateError(str(msg.error.reason))
                update = EncryptedUpdate.from_bytes(opaque_from_record(msg.content.array_records["arrays"]))
                if update.keyset_id != self.he_public.keyset_id:
                    raise KeyMismatchError(
                        f"site {site!r} encrypted with key set {update.keyset_id}, the coordinator holds "
                        f"{self.he_public.keyset_id}; give every site the secret.ctx of one key ceremony"
                    )
                encrypted.append(update)
                metrics = {k: float(v) for k, v in msg.content.metric_records["metrics"].items()}  # type: ignore[arg-type]
                rlog.train[site] = {**metrics, "ciphertext_bytes": float(update.ciphertext_bytes)}
            except FedcoreError as err:
                rlog.rejected[site] = str(err)
                log.info("round %d: rejected encrypted update: %s", server_round, err)
        self._enough(server_round, len(encrypted), rlog)
        t0 = time.perf_counter()
        total = sum_encrypted(self.he_public, encrypted)
        rlog.aggregate = {"he_sum_seconds": time.perf_counter() - t0, "he_sites": float(len(encrypted))}
        return opaque_to_record(total.to_bytes()), MetricRecord({"sites": len(encrypted)})

    def _enough(self, server_round: int, valid: int, rlog: RoundLog) -> None:
        """Raise, naming every rejected site and why, when fewer than ``min_sites`` updates are valid."""
        if valid >= self.min_sites:
            return
        why = "; ".join(rlog.rejected.values())  # each reason names its site
        raise UpdateError(
            f"round {server_round}: {valid} valid updates, the job needs min_sites={self.min_sites}; "
            + (f"rejected: {why}" if why else "the other sites did not reply")
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self._absolute(server_round)
        if self.he_public is not None:
            self._latest, metrics = self._aggregate_encrypted(server_round, replies)
            return self._latest, metrics
        rlog = self.history[-1]
        updates: list[ClientUpdate] = []
        for msg in replies:
            try:
                updates.append(self._validate(msg))
            except Exception as err:  # a bad site is dropped this round, and reported
                rlog.rejected[self._site(msg)] = str(err)
                log.info("round %d: rejected update: %s", server_round, err)
        self._enough(server_round, len(updates), rlog)
        rlog.train = {u.site: {**u.metrics, "num_examples": u.num_examples} for u in updates}
        assert self.aggregator is not None  # plaintext jobs always have one
        result = self.aggregator.aggregate(updates, server_round=server_round)
        rlog.aggregate = dict(result.metrics)
        new = tuple(g + s for g, s in zip(self._global, result.step, strict=True))
        self._latest = arrays_to_record(new)
        return self._latest, MetricRecord({"sites": len(updates)})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self._absolute(server_round)
        config["server-round"] = server_round
        if self.he_public is not None:
            config["he-round"] = server_round
        config["final"] = server_round == self.num_rounds
        record = RecordDict({"arrays": arrays, "config": config})
        return self._messages(record, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rlog = self.history[-1]
        for msg in replies:
            if msg.has_error():
                rlog.rejected[self._site(msg)] = f"evaluation: {msg.error.reason}"
                continue
            rlog.evaluate[self._site(msg)] = {k: float(v) for k, v in msg.content["metrics"].items()}  # type: ignore[arg-type]
        rlog.seconds = time.perf_counter() - self._t0
        if self.on_checkpoint is not None and self._latest is not None:  # the round is over: keep it
            self.on_checkpoint(rlog.round, self._latest)
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
