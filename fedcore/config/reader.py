"""Strict reading of TOML tables: every key is known, every value typed and checked, all problems at once.

A ``Reader`` wraps one table. Each typed getter names a key it knows (so it can suggest it when a
user mistypes one) and records a problem instead of raising, so a file with five mistakes reports
five lines. ``done()`` reports the keys nobody asked for::

    problems: list[str] = []
    train = Reader(raw.get("train"), "job.toml [train]", problems)
    lr = train.number("lr", gt=0)
    train.done()            # "job.toml [train]: unknown key 'lrr' (did you mean 'lr'?)"
    raise_problems(problems, "invalid job file")
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedcore.errors import ConfigError

__all__ = ["MISSING", "KeySpec", "Reader", "describe", "raise_problems", "read_toml", "suggest"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Default meaning "this key is required"."""


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing or malformed file into a ``ConfigError``."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found; check the path") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax at that line") from err


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known word, else the list of known words."""
    known = sorted(set(known))
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known: {', '.join(known)}" if known else ""


def raise_problems(problems: Sequence[str], title: str) -> None:
    """Raise one ``ConfigError`` listing every problem (one per line), if there are any."""
    if len(problems) == 1:
        raise ConfigError(f"{title}: {problems[0]}")
    if problems:
        raise ConfigError(f"{title}:\n  " + "\n  ".join(problems))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class KeySpec:
    """What a reader knows of one key: for the generated file references (``describe``)."""

    kind: str
    default: Any
    detail: str
    doc: str


class Reader:
    """Typed, strict access to one TOML table; problems go to the shared ``problems`` list.

    Every getter takes ``doc``, one line on what the key means: a reader run over an empty table
    records each key's type, default, bounds and meaning, from which ``describe`` writes the
    reference of a file format (``fedcore site-schema``), so it cannot drift from the parser.
    """

    def __init__(
        self, table: Any, source: str, problems: list[str], section: str = "", doc: str = ""
    ) -> None:
        self.source, self.section, self.problems, self.doc = source, section, problems, doc
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            problems.append(f"{self.where} must be a table, got {table!r}")
            table = {}
        self.table: Mapping[str, Any] = table
        self.known: set[str] = set()
        self.specs: dict[str, KeySpec] = {}
        self.children: list[Reader] = []

    def _note(self, key: str, kind: str, default: Any, detail: str = "", doc: str = "") -> None:
        self.specs.setdefault(key, KeySpec(kind, default, detail, doc))

    @property
    def where(self) -> str:
        """``file [section]`` for messages."""
        return f"{self.source} [{self.section}]" if self.section else self.source

    def __contains__(self, key: str) -> bool:
        self.known.add(key)
        return key in self.table

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.where} {key}: {text}")

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value); a required key that is absent is a problem."""
        self.known.add(key)
        if key in self.table:
            return True, self.table[key]
        if default is MISSING:
            self.problem(key, "is missing")
        return False, default

    def value(self, key: str, default: Any = MISSING, *, doc: str = "", kind: str = "any") -> Any:
        """The raw value (any TOML type)."""
        self._note(key, kind, default, doc=doc)
        return self._get(key, default)[1]

    def number(
        self,
        key: str,
        default: Any = MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        doc: str = "",
    ) -> Any:
        """A finite float within the bounds given; ``default`` (maybe ``None``) when absent."""
        bounds = [f"{s}{b:g}" for s, b in (("> ", gt), (">= ", ge), ("< ", lt), ("<= ", le)) if b is not None]
        self._note(key, "number", default, ", ".join(bounds), doc)
        present, v = self._get(key, default)
        if not present:
            return v
        if not _is_number(v) or not math.isfinite(v):
            self.problem(key, f"must be a finite number, got {v!r}")
            return default if default is not MISSING else 1.0
        checks = [
            (gt, gt is not None and not v > gt, "> "),
            (ge, ge is not None and not v >= ge, ">= "),
            (lt, lt is not None and not v < lt, "< "),
            (le, le is not None and not v <= le, "<= "),
        ]
        for bound, failed, sign in checks:
            if failed:
                self.problem(key, f"must be {sign}{bound:g}, got {v!r}")
        return float(v)

    def integer(self, key: str, default: Any = MISSING, *, ge: int | None = None, doc: str = "") -> Any:
        """An integer (a float like 3.0 is refused: TOML says what it means)."""
        self._note(key, "integer", default, "" if ge is None else f">= {ge}", doc)
        present, v = self._get(key, default)
        if not present:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            self.problem(key, f"must be an integer, got {v!r}")
            return default if default is not MISSING else 1
        if ge is not None and v < ge:
            self.problem(key, f"must be >= {ge}, got {v}")
        return int(v)

    def boolean(self, key: str, default: Any = MISSING, *, doc: str = "") -> Any:
        self._note(key, "boolean", default, doc=doc)
        present, v = self._get(key, default)
        if not present:
            return v
        if not isinstance(v, bool):
            self.problem(key, f"must be true or false, got {v!r}")
            return bool(default) if default is not MISSING else False
        return v

    def string(
        self, key: str, default: Any = MISSING, *, choices: Sequence[str] | None = None, doc: str = ""
    ) -> Any:
        self._note(key, "string", default, " | ".join(map(repr, choices or ())), doc)
        present, v = self._get(key, default)
        if not present:
            return v
        if not isinstance(v, str):
            self.problem(key, f"must be a string, got {v!r}")
            return default if default is not MISSING else ""
        if choices is not None and v not in choices:
            self.problem(
                key, f"must be one of {', '.join(map(repr, choices))}, got {v!r}{suggest(v, choices)}"
            )
        return v

    def strings(self, key: str, default: Any = MISSING, *, doc: str = "") -> Any:
        """A list of strings, as a tuple."""
        self._note(key, "list of strings", default, doc=doc)
        present, v = self._get(key, default)
        if not present:
            return v
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            self.problem(key, f"must be a list of strings, got {v!r}")
            return ()
        return tuple(v)

    def sub(self, key: str, *, doc: str = "") -> Reader:
        """The sub-table ``key`` (empty when absent)."""
        section = f"{self.section}.{key}" if self.section else key
        child = Reader(self._get(key, None)[1], self.source, self.problems, section, doc)
        self.children.append(child)
        return child

    def parse(self, key: str, parse: Callable[[Reader], T]) -> T | None:
        """``parse(sub-table)`` when ``key`` is present, else ``None``."""
        if key not in self:
            return None
        return parse(self.sub(key))

    def done(self, *, extra_known: Iterable[str] = ()) -> None:
        """Report every key of the table that no getter asked for, with a suggestion."""
        known = self.known | set(extra_known)
        for key in self.table:
            if key not in known:
                self.problems.append(f"{self.where}: unknown key {key!r}{suggest(key, known)}")


def _sections(reader: Reader) -> Iterator[Reader]:
    yield reader
    for child in reader.children:
        yield from _sections(child)


def _default(spec: KeySpec) -> str:
    if spec.default is MISSING:
        return "required"
    if spec.default is None:
        return "none"
    value = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def describe(root: Reader) -> str:
    """A Markdown reference of every table and key ``root`` and its sub-readers were asked for."""
    lines: list[str] = []
    for reader in _sections(root):
        keys = {
            k: v
            for k, v in reader.specs.items()
            if k not in {c.section.rsplit(".", 1)[-1] for c in reader.children}
        }
        if not reader.section or not (keys or reader.doc):
            continue
        lines += ["", f"### `[{reader.section}]`", ""] + ([reader.doc, ""] if reader.doc else [])
        if keys:
            lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
            for key, spec in keys.items():
                kind = spec.kind + (f" ({spec.detail})" if spec.detail else "")
                lines.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(spec))} | {_cell(spec.doc)} |")
    return "\n".join(lines).strip() + "\n"
