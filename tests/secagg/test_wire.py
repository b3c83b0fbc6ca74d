"""Every message and both states survive to_bytes/from_bytes; malformed bytes are refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedcore.errors import SecAggError
from fedcore.secagg import client, server
from fedcore.secagg.messages import KeyList, RoundRequest, ShareBundle, SurvivorRequest
from fedcore.secagg.wire import Record

from .helpers import federation, masked_round, names, random_words


def _same(a: Record, b: Record) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        elif isinstance(x, Record):
            _same(x, y)
        else:
            assert x == y, f.name


def test_every_message_and_state_round_trips() -> None:
    rnd = masked_round(federation(5), random_words(5, 33))
    survivors = names(5)
    sigs = [rnd.sign(s, survivors) for s in survivors]
    reply = rnd.reveal("site000", survivors, sigs)
    sstate, sreq = server.survivor_request(rnd.sstate)
    for s in sigs:
        sstate = server.add_signature(sstate, s)
    sstate, ureq = server.unmask_request(sstate)
    klist = KeyList("job", 1, tuple(ad for ad in rnd.states["site000"].peers))
    bundle = ShareBundle("job", 1, "site000", (("site001", b"\x00\x01"),))
    msgs: list[Record] = [rnd.request, klist, bundle, rnd.masked["site001"], sreq, sigs[0], ureq, reply]
    msgs += [rnd.states["site000"], rnd.states["site003"], sstate, *klist.advertisements]
    for m in msgs:
        _same(m, type(m).from_bytes(m.to_bytes()))
    state = client.ClientState.from_bytes(rnd.states["site000"].to_bytes())
    assert state.self_seed == rnd.states["site000"].self_seed and len(state.self_seed) == 32
    for secret in ("self_seed=", "enc_private=", "mask_private=", "held="):
        assert secret not in repr(state)  # secrets never end up in a log line


def test_to_dict_is_config_record_friendly() -> None:
    d = SurvivorRequest("job", 3, ("a", "b")).to_dict()
    assert d == {"job_id": "job", "round": 3, "survivors": ["a", "b"]}


def _header(data: bytes) -> dict[str, object]:
    size = int.from_bytes(data[6:10], "little")
    return json.loads(data[10 : 10 + size])  # type: ignore[no-any-return]


def _rebuild(data: bytes, header: dict[str, object]) -> bytes:
    size = int.from_bytes(data[6:10], "little")
    raw = json.dumps(header).encode()
    return data[:6] + len(raw).to_bytes(4, "little") + raw + data[10 + size :]


@pytest.mark.parametrize(
    "damage",
    ["truncated", "kind", "extra", "missing", "type", "bool_as_int", "trailing", "array_short", "magic"],
)
def test_malformed_bytes_are_refused(damage: str) -> None:
    req = RoundRequest("job", 1, ("a", "b", "c"), 2, 32, 4)
    data = req.to_bytes()
    h = _header(data)
    fields = h["fields"]
    assert isinstance(fields, dict)
    if damage == "truncated":
        data = data[:8]
    elif damage == "kind":
        data = _rebuild(data, {**h, "kind": "secagg.key_list"})
    elif damage == "extra":
        data = _rebuild(data, {**h, "fields": {**fields, "evil": 1}})
    elif damage == "missing":
        data = _rebuild(data, {**h, "fields": {k: v for k, v in fields.items() if k != "degree"}})
    elif damage == "type":
        data = _rebuild(data, {**h, "fields": {**fields, "participants": "abc"}})
    elif damage == "bool_as_int":
        data = _rebuild(data, {**h, "fields": {**fields, "round": True}})
    elif damage == "trailing":
        data += b"\x00"
    elif damage == "magic":
        data = b"XXXX" + data[4:]
    else:
        masked = server.MaskedInput("job", 1, "a", np.arange(4, dtype=np.uint32))
        data, req = masked.to_bytes()[:-1], masked  # type: ignore[assignment]
    with pytest.raises(SecAggError):
        type(req).from_bytes(data)
