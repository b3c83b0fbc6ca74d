"""A client algorithm's extras on the wire: one ``ArrayRecord`` ``extra-<name>`` per extra, beside the
message's ``arrays`` (server to site: e.g. SCAFFOLD's ``control``; site to server: its
``control_delta``, FedNova's ``steps``).

Each side checks what the other sent against the job's algorithm's declaration
(``fedcore.algorithms.ExtraSpec``): the coordinator with ``check_reply_extras`` (the reply's records
are exactly the declared ones, each held to the checks of a model update in
``fedcore.flower.replies.check_plain``: float32, shapes, byte size, finite; then each value above its
minimum), a site with ``fedcore.clients.local.checked_extras`` before anything is charged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flwr.app import ArrayRecord, Message, RecordDict

from fedcore.aggregators.base import Arrays
from fedcore.algorithms import ExtraSpec, check_extras
from fedcore.algorithms.base import extra_shapes
from fedcore.flower.replies import check_plain
from fedcore.flower.serde import arrays_from_record, arrays_to_record

__all__ = ["PREFIX", "check_reply_extras", "extras_from_content", "extras_to_records", "record_names"]

PREFIX = "extra-"


def record_names(declared: Mapping[str, ExtraSpec]) -> frozenset[str]:
    """The record names of the ``declared`` extras."""
    return frozenset(PREFIX + name for name in declared)


def extras_to_records(extras: Mapping[str, Arrays]) -> dict[str, ArrayRecord]:
    """Each extra as its own float32 ``ArrayRecord`` ``extra-<name>``."""
    return {PREFIX + name: arrays_to_record(arrays) for name, arrays in extras.items()}


def extras_from_content(content: RecordDict) -> dict[str, Arrays]:
    """The extras a message holds, by name (float64; checked by the receiver)."""
    return {
        key.removeprefix(PREFIX): arrays_from_record(record)
        for key, record in content.array_records.items()
        if key.startswith(PREFIX)
    }


def check_reply_extras(
    msg: Message, declared: Mapping[str, ExtraSpec], model: Sequence[tuple[int, ...]], site: str
) -> dict[str, Arrays]:
    """The reply's extras, each checked like an update and against its declaration; ``UpdateError``
    naming the site otherwise. (``check_records`` has already held the record names to the job's.)"""
    got = {
        name: check_plain(
            msg.content.array_records[PREFIX + name], extra_shapes(spec, model), site, max_norm=None
        )
        for name, spec in declared.items()
    }
    return check_extras(got, declared, model, who=f"site {site!r}")
