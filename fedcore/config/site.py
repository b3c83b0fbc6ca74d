"""A site file (``site.toml``), parsed once into a typed, frozen ``SiteConfig``; strict like job files.

Sections: ``[site]`` name; ``[data]`` the CSV and how to read it; ``[schema]`` the label and every
column in file order (type, tag, categorical levels, and for numeric features the public reference
constants ``center`` and ``scale`` that standardise them); ``[split]``; ``[privacy]`` the site's
policy (``fedcore.privacy.policy``); ``[node]`` what the node trusts (``trusted_apps``: FAB digests
whose own client code may run; by default only fedcore's installed client code runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fedcore.config.reader import Reader, raise_problems, read_toml
from fedcore.privacy.policy import SitePolicy

__all__ = ["ColumnSpec", "ColumnTag", "ColumnType", "SiteConfig", "load_site"]

ColumnType = Literal["numeric", "categorical", "text", "datetime"]
ColumnTag = Literal["identifier", "sensitive", "quasi_identifier", "public"]
_TYPES: tuple[ColumnType, ...] = ("numeric", "categorical", "text", "datetime")
_TAGS: tuple[ColumnTag, ...] = ("identifier", "sensitive", "quasi_identifier", "public")
_SECTIONS = ("site", "data", "schema", "split", "privacy", "node")


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a site's table, in file order.

    ``center``/``scale``: public reference constants for a numeric feature, ``(x - center) / scale``
    (domain knowledge, never computed from the site's rows). Under DP every numeric feature needs
    them; without DP a feature lacking them is standardised with its training rows' mean and std.
    """

    name: str
    type: ColumnType = "numeric"
    levels: tuple[Any, ...] = ()
    tag: ColumnTag = "sensitive"
    center: float | None = None
    scale: float | None = None


@dataclass(frozen=True)
class SiteConfig:
    """A site file: where the data is, its schema, its split, its privacy policy and trust."""

    name: str
    path: Path  # the site file itself
    data_path: Path
    columns: tuple[ColumnSpec, ...]
    label: str
    policy: SitePolicy
    positive: tuple[Any, ...] = ()
    positive_above: float | None = None
    drop: tuple[str, ...] = ()
    header: bool = True
    separator: str = ","
    missing: tuple[str, ...] = ("", "NA", "?")
    dataset: str = "default"
    test_fraction: float = 0.34
    split_seed: int = 43
    stratify: bool = True
    split_column: str | None = None  # time split: rows with split_column >= split_at are test
    split_at: float | None = None
    trusted_apps: tuple[str, ...] = ()

    @property
    def identifiers(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.tag == "identifier")

    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """Columns used as model inputs: not the label, not dropped, never identifiers."""
        skip = {self.label, *self.drop}
        return tuple(
            c
            for c in self.columns
            if c.name not in skip and c.tag != "identifier" and c.type in ("numeric", "categorical")
        )

    @property
    def undeclared_scaling(self) -> tuple[str, ...]:
        """Numeric features without public ``center``/``scale`` (refused under DP)."""
        return tuple(
            c.name
            for c in self.feature_columns
            if c.type == "numeric" and (c.center is None or c.scale is None)
        )

    def schema_signature(self) -> tuple[Any, ...]:
        """What must agree across sites for them to train one model together."""
        return (
            self.label,
            tuple((c.name, c.type, c.levels) for c in self.feature_columns),
        )


def _column(name: str, raw: Any, schema: Reader) -> ColumnSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    t = Reader(raw, schema.source, schema.problems, f"schema.columns.{name}")
    ctype = t.string("type", "numeric", choices=_TYPES)
    tag = t.string("tag", "sensitive", choices=_TAGS)
    levels = t.value("levels", [])
    center, scale = t.number("center", None), t.number("scale", None, gt=0)
    t.done()
    if not isinstance(levels, list):
        t.problem("levels", f"must be a list, got {levels!r}")
        levels = []
    if ctype == "categorical" and len(levels) < 2:
        t.problem(
            "levels", "a categorical column needs at least 2 levels so every site one-hot encodes it alike"
        )
    if (center is None) != (scale is None) or (ctype != "numeric" and center is not None):
        t.problem("center", "give center and scale together, for numeric columns only")
    return ColumnSpec(name, cast(ColumnType, ctype), tuple(levels), cast(ColumnTag, tag), center, scale)


def load_site(path: Path | str) -> SiteConfig:
    """Parse and validate a site file; every problem is reported at once, paths relative to it."""
    path = Path(path).resolve()
    problems: list[str] = []
    top = Reader(read_toml(path), str(path), problems)
    site, data, schema, split = top.sub("site"), top.sub("data"), top.sub("schema"), top.sub("split")
    name = site.string("name", path.stem)
    site.done()
    data_path = data.string("path")
    reading = dict(
        header=data.boolean("header", True),
        separator=data.string("separator", ","),
        missing=data.strings("missing", ("", "NA", "?")),
        dataset=data.string("dataset", "default"),
    )
    data.done()
    cols = schema.sub("columns")
    columns = tuple(_column(n, v, cols) for n, v in cols.table.items())
    cols.done(extra_known=cols.table)
    if not columns:
        schema.problem("columns", "is empty; list every column of the file in order")
    names = {c.name for c in columns}
    label = schema.string("label")
    if columns and label not in names:
        schema.problem("label", f"{label!r} is not a declared column {sorted(names)}")
    drop = schema.strings("drop", ())
    schema.problems += [f"{schema.where} drop: unknown column {d!r}" for d in drop if d not in names]
    labels = dict(
        positive=tuple(schema.value("positive", [])), positive_above=schema.number("positive_above", None)
    )
    schema.done()
    splitting = dict(
        test_fraction=split.number("test_fraction", 0.34, gt=0, lt=1),
        split_seed=split.integer("seed", 43),
        stratify=split.boolean("stratify", True),
        split_column=split.string("column", None),
        split_at=split.number("at", None),
    )
    split.done()
    policy = SitePolicy.read(top.sub("privacy"), path.parent)
    node = top.sub("node")
    trusted = tuple(d.strip().lower() for d in node.strings("trusted_apps", ()))
    node.problems += [
        f"{node.where} trusted_apps: {d!r} is not a sha256 hex digest (64 hex characters; "
        "`fedcore app-digest APP_DIR` prints an app's)"
        for d in trusted
        if len(d) != 64 or any(ch not in "0123456789abcdef" for ch in d)
    ]
    node.done()
    top.done(extra_known=_SECTIONS)
    raise_problems(problems, "invalid site file")
    return SiteConfig(
        name=str(name), path=path, data_path=(path.parent / str(data_path)).resolve(), columns=columns,
        label=label, policy=policy, drop=drop, trusted_apps=trusted, **labels, **reading, **splitting,
    )  # fmt: skip
