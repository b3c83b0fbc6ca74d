"""Bytes for every secure-aggregation message and state: one small, strict codec (no pickle).

Layout of ``Record.to_bytes()`` (version 1)::

    b"FCSA" | u16 version | u32 header length | JSON header | arrays (raw little-endian, in order)

The JSON header holds ``{"kind": ..., "fields": {...}}``. Field types come from the record's own
annotations: ``str``, ``int``, ``bool``, ``float``, ``bytes`` (base64 in JSON), ``tuple[X, ...]``,
fixed ``tuple[X, Y]``, nested records, and numpy arrays (``{"array": i, "dtype", "shape"}`` in the
header, their bytes after it). ``Record.to_dict()`` gives the same JSON-safe header as a dict of
str/int/bytes values that fits a Flower ``ConfigRecord`` (arrays left out, given separately).
Anything else in the input (an unknown kind, a missing or extra field, a wrong type) raises
``SecAggError``: a message from the coordinator is input from the adversary.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import struct
import types
import typing
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from fedcore.errors import SecAggError

__all__ = ["Record"]

_MAGIC = b"FCSA"
_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_DTYPES: dict[str, np.dtype[Any]] = {
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "int64": np.dtype("<i8"),
}


class Record:
    """Base of every frozen message/state dataclass: ``to_bytes``/``from_bytes`` by annotations."""

    KIND: ClassVar[str]

    def to_bytes(self) -> bytes:
        """Canonical bytes of this record (see the module docstring)."""
        arrays: list[NDArray[Any]] = []
        header = json.dumps(
            {"kind": self.KIND, "fields": _encode(type(self), self, arrays)},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        parts = [_PREFIX.pack(_MAGIC, _VERSION, len(header)), header]
        parts += [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse ``to_bytes`` output of this record kind; anything malformed raises ``SecAggError``."""
        view = memoryview(data)
        if len(view) < _PREFIX.size:
            raise SecAggError(f"{cls.KIND}: {len(view)} bytes is too short for a message")
        magic, version, size = _PREFIX.unpack_from(view)
        if magic != _MAGIC or version != _VERSION:
            raise SecAggError(f"{cls.KIND}: not a v{_VERSION} secagg message (magic {magic!r} v{version})")
        end = _PREFIX.size + size
        try:
            header = json.loads(bytes(view[_PREFIX.size : end]))
        except ValueError as err:
            raise SecAggError(f"{cls.KIND}: header does not parse: {err}") from err
        if not isinstance(header, dict) or header.get("kind") != cls.KIND:
            raise SecAggError(f"expected a {cls.KIND!r} message, got kind {_kind(header)!r}")
        reader = _ArrayReader(view, end)
        out = _decode(cls, header.get("fields"), reader, cls.KIND)
        if reader.pos != len(view):
            raise SecAggError(f"{cls.KIND}: {len(view) - reader.pos} trailing bytes")
        return typing.cast(Self, out)

    def to_dict(self) -> dict[str, Any]:
        """The header fields as a JSON-safe dict (arrays replaced by their descriptors)."""
        fields: dict[str, Any] = _encode(type(self), self, [])
        return fields


def _kind(header: object) -> object:
    return header.get("kind") if isinstance(header, dict) else type(header).__name__


class _ArrayReader:
    def __init__(self, view: memoryview, pos: int) -> None:
        self.view, self.pos, self.next = view, pos, 0

    def take(self, index: object, dtype: object, shape: object, where: str) -> NDArray[Any]:
        if index != self.next or dtype not in _DTYPES or not _is_shape(shape):
            raise SecAggError(f"{where}: bad array descriptor ({index!r}, {dtype!r}, {shape!r})")
        dt = _DTYPES[str(dtype)]
        count = int(np.prod(typing.cast(list[int], shape), dtype=np.int64))
        end = self.pos + count * dt.itemsize
        if end > len(self.view):
            raise SecAggError(
                f"{where}: array truncated ({len(self.view) - self.pos} of {end - self.pos} bytes)"
            )
        arr: NDArray[Any] = np.frombuffer(self.view[self.pos : end], dtype=dt)
        self.pos, self.next = end, self.next + 1
        return arr.reshape(typing.cast(list[int], shape)).astype(dt.newbyteorder("="), copy=True)


def _is_shape(shape: object) -> bool:
    return isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _encode(tp: Any, value: Any, arrays: list[NDArray[Any]]) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Record):
        hints = _hints(tp)
        fields = dataclasses.fields(tp)  # type: ignore[arg-type]
        return {f.name: _encode(hints[f.name], getattr(value, f.name), arrays) for f in fields}
    if tp is np.ndarray or origin is np.ndarray:
        arrays.append(value)
        return {"array": len(arrays) - 1, "dtype": value.dtype.name, "shape": list(value.shape)}
    if tp is bytes:
        return base64.b64encode(value).decode()
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return [_encode(args[0], v, arrays) for v in value]
        return [_encode(a, v, arrays) for a, v in zip(args, value, strict=True)]
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _encode(inner, value, arrays)
    return value


def _decode(tp: Any, obj: Any, reader: _ArrayReader, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Record):
        return _decode_record(tp, obj, reader, where)
    if tp is np.ndarray or origin is np.ndarray:
        if not isinstance(obj, dict) or set(obj) != {"array", "dtype", "shape"}:
            raise SecAggError(f"{where}: expected an array descriptor, got {obj!r:.80}")
        return reader.take(obj["array"], obj["dtype"], obj["shape"], where)
    if origin is tuple:
        return _decode_tuple(tp, obj, reader, where)
    if origin in (types.UnionType, typing.Union):
        if obj is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, obj, reader, where)
    return _decode_scalar(tp, obj, where)


def _decode_record(tp: type[Record], obj: Any, reader: _ArrayReader, where: str) -> Record:
    names = [f.name for f in dataclasses.fields(tp)]  # type: ignore[arg-type]
    if not isinstance(obj, dict) or set(obj) != set(names):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise SecAggError(f"{where}: {tp.KIND} needs fields {names}, got {got}")
    hints = _hints(tp)
    return tp(**{n: _decode(hints[n], obj[n], reader, f"{where}.{n}") for n in names})


def _decode_tuple(tp: Any, obj: Any, reader: _ArrayReader, where: str) -> tuple[Any, ...]:
    if not isinstance(obj, list):
        raise SecAggError(f"{where}: expected a list, got {type(obj).__name__}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], v, reader, f"{where}[{i}]") for i, v in enumerate(obj))
    if len(obj) != len(args):
        raise SecAggError(f"{where}: expected {len(args)} items, got {len(obj)}")
    return tuple(
        _decode(a, v, reader, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, obj, strict=True))
    )


def _decode_scalar(tp: Any, obj: Any, where: str) -> Any:
    if tp is bytes:
        if not isinstance(obj, str):
            raise SecAggError(f"{where}: expected base64 bytes, got {type(obj).__name__}")
        try:
            return base64.b64decode(obj.encode(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise SecAggError(f"{where}: bad base64: {err}") from err
    if tp is int and (type(obj) is not int):
        raise SecAggError(f"{where}: expected an int, got {obj!r:.40}")
    if tp is float and (isinstance(obj, bool) or not isinstance(obj, int | float)):
        raise SecAggError(f"{where}: expected a number, got {obj!r:.40}")
    if tp in (str, bool) and type(obj) is not tp:
        raise SecAggError(f"{where}: expected {tp.__name__}, got {obj!r:.40}")
    return float(obj) if tp is float else obj
