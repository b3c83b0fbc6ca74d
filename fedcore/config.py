"""Job and site files (TOML), parsed into frozen dataclasses with every problem reported at once."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from fedcore.errors import ConfigError

__all__ = [
    "ColumnSpec",
    "JobConfig",
    "SiteConfig",
    "apply_overrides",
    "card_precision_options",
    "load_job",
    "load_site",
    "read_toml",
]

ColumnType = Literal["numeric", "categorical", "text", "datetime"]
ColumnTag = Literal["identifier", "sensitive", "quasi_identifier", "public"]
_TYPES = ("numeric", "categorical", "text", "datetime")
_TAGS = ("identifier", "sensitive", "quasi_identifier", "public")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing or malformed file into a ``ConfigError``."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found; check the path") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax at that line") from err


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a site's table, in file order."""

    name: str
    type: ColumnType = "numeric"
    levels: tuple[Any, ...] = ()
    tag: ColumnTag = "sensitive"


@dataclass(frozen=True)
class SiteConfig:
    """A site file: where the data is, its schema, its split and its privacy policy."""

    name: str
    path: Path  # the site file itself
    data_path: Path
    columns: tuple[ColumnSpec, ...]
    label: str
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
    privacy: Mapping[str, Any] = field(default_factory=dict)

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

    def schema_signature(self) -> tuple[Any, ...]:
        """What must agree across sites for them to train one model together."""
        return (
            self.label,
            tuple((c.name, c.type, c.levels) for c in self.feature_columns),
        )


def _column(name: str, raw: Any, where: str, problems: list[str]) -> ColumnSpec:
    spec: dict[str, Any] = {"type": raw} if isinstance(raw, str) else dict(raw)
    ctype = spec.get("type", "numeric")
    tag = spec.get("tag", "sensitive")
    if ctype not in _TYPES:
        problems.append(f"{where}: column {name!r} has type {ctype!r}; use one of {_TYPES}")
    if tag not in _TAGS:
        problems.append(f"{where}: column {name!r} has tag {tag!r}; use one of {_TAGS}")
    levels = tuple(spec.get("levels", ()))
    if ctype == "categorical" and len(levels) < 2:
        problems.append(
            f"{where}: categorical column {name!r} needs `levels` (at least 2) so every site "
            "one-hot encodes it the same way"
        )
    return ColumnSpec(name, cast(ColumnType, ctype), levels, cast(ColumnTag, tag))


def load_site(path: Path | str) -> SiteConfig:
    """Parse and validate a site file; data paths are relative to the file."""
    path = Path(path).resolve()
    raw = read_toml(path)
    problems: list[str] = []
    site, data, schema = raw.get("site", {}), raw.get("data", {}), raw.get("schema", {})
    split = raw.get("split", {})
    name = site.get("name") or path.stem
    if "path" not in data:
        problems.append(f"{path}: [data] path is missing; set it to the site's CSV file")
    cols_raw = schema.get("columns", {})
    if not cols_raw:
        problems.append(f"{path}: [schema.columns] is empty; list every column of the file in order")
    columns = tuple(_column(n, v, str(path), problems) for n, v in cols_raw.items())
    names = {c.name for c in columns}
    label = schema.get("label", "")
    if label not in names:
        problems.append(f"{path}: [schema] label {label!r} is not a declared column {sorted(names)}")
    for d in schema.get("drop", []):
        if d not in names:
            problems.append(f"{path}: [schema] drop names unknown column {d!r}")
    if problems:
        raise ConfigError("invalid site file:\n  " + "\n  ".join(problems))
    return SiteConfig(
        name=str(name),
        path=path,
        data_path=(path.parent / str(data["path"])).resolve(),
        columns=columns,
        label=label,
        positive=tuple(schema.get("positive", ())),
        positive_above=schema.get("positive_above"),
        drop=tuple(schema.get("drop", ())),
        header=bool(data.get("header", True)),
        separator=str(data.get("separator", ",")),
        missing=tuple(data.get("missing", ("", "NA", "?"))),
        dataset=str(data.get("dataset", "default")),
        test_fraction=float(split.get("test_fraction", 0.34)),
        split_seed=int(split.get("seed", 43)),
        stratify=bool(split.get("stratify", True)),
        split_column=split.get("column"),
        split_at=split.get("at"),
        privacy=raw.get("privacy", {}),
    )


@dataclass(frozen=True)
class JobConfig:
    """A job file as nested plain dicts, validated on load (see ``examples/*/jobs``)."""

    name: str
    raw: Mapping[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.raw.get(name, {}))

    def train_section(self) -> dict[str, Any]:
        """``[train]`` as the sites receive it (FedProx gets its default ``proximal_mu``)."""
        train = self.section("train")
        if self.section("aggregator").get("name") == "fedprox":
            train.setdefault("proximal_mu", 0.01)
        return train

    @property
    def rounds(self) -> int:
        return int(self.raw["job"]["rounds"])

    @property
    def seed(self) -> int:
        return int(self.raw["job"].get("seed", 0))


_JOB_REQUIRED = {
    "job": ("rounds",),
    "model": ("name",),
    "train": ("local_steps", "lr"),
    "aggregator": ("name",),
}


_CARD_DEFAULTS = {"k": 100, "card": "customer_id", "day": "tx_time_days"}


def card_precision_options(raw: Any, where: str) -> dict[str, Any]:
    """``[evaluate] card_precision`` with defaults filled in; ``ConfigError`` says what is wrong."""
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: [evaluate] card_precision must be a table like "
            f'{{ k = 100, card = "customer_id", day = "tx_time_days" }}, got {raw!r}'
        )
    unknown = sorted(set(raw) - set(_CARD_DEFAULTS))
    opts = {**_CARD_DEFAULTS, **raw}
    problems = [f"unknown key(s) {unknown}"] if unknown else []
    if not isinstance(opts["k"], int) or isinstance(opts["k"], bool) or opts["k"] < 1:
        problems.append(f"k must be an integer >= 1 (cards checked per day), got {opts['k']!r}")
    problems += [
        f"{key} must be a column name, got {opts[key]!r}"
        for key in ("card", "day")
        if not isinstance(opts[key], str) or not opts[key]
    ]
    if problems:
        raise ConfigError(f"{where}: [evaluate] card_precision: " + "; ".join(problems))
    return opts


def _validate_job(raw: Mapping[str, Any], where: str) -> None:
    from fedcore.aggregators import aggregator_names
    from fedcore.models import model_names

    problems = [
        f"{where}: [{sec}] {key} is missing"
        for sec, keys in _JOB_REQUIRED.items()
        for key in keys
        if key not in raw.get(sec, {})
    ]
    agg = str(raw.get("aggregator", {}).get("name", "fedavg")).lower()
    if agg not in aggregator_names():
        problems.append(
            f"{where}: unknown aggregator {agg!r}; known aggregators: {', '.join(aggregator_names())}"
        )
    model = raw.get("model", {}).get("name", "logreg")
    if model not in model_names():
        problems.append(f"{where}: unknown model {model!r}; known models: {', '.join(model_names())}")
    card = raw.get("evaluate", {}).get("card_precision")
    if card is not None:
        try:
            card_precision_options(card, where)
        except ConfigError as exc:
            problems.append(str(exc))
    rounds = raw.get("job", {}).get("rounds", 1)
    if not isinstance(rounds, int) or rounds < 1:
        problems.append(f"{where}: [job] rounds must be an integer >= 1, got {rounds!r}")
    if problems:
        raise ConfigError("invalid job file:\n  " + "\n  ".join(problems))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested: ``privacy.dpsgd.epsilon=3``); values are
    parsed as TOML, else kept as strings. ``raw`` is not modified."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        path = [p.strip() for p in key.split(".")]
        if not sep or len(path) < 2 or not all(path):
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. job.rounds=5")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value.strip()
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = parsed
    return out


def load_job(path: Path | str, overrides: Sequence[str] = ()) -> JobConfig:
    """Parse a job file, apply ``--set`` overrides, and validate the result."""
    path = Path(path)
    raw = apply_overrides(read_toml(path), overrides)
    _validate_job(raw, str(path))
    return JobConfig(name=str(raw["job"].get("name", path.stem)), raw=raw)
