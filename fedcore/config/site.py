"""A site file (``site.toml``), parsed once into a typed, frozen ``SiteConfig``; strict like job files.

Sections: ``[site]`` name; ``[data]`` the CSV and how to read it (below); ``[schema]`` the label and
every column, in file order when the file has no header (type, tag, categorical levels, and for
numeric features the public reference constants ``center`` and ``scale`` that standardise them);
``[split]``; ``[privacy]`` the site's policy (``fedcore.site.policy``); ``[node]`` what the node
trusts (``trusted_apps``: FAB digests whose own client code may run; by default only fedcore's
installed client code runs) and who admits a job (``approval``: ``"auto"``, the default, admits
every job inside the policy; ``"manual"`` waits up to ``approval_timeout_hours`` for the operator's
``fedcore approve`` or ``fedcore deny``, ``fedcore.site.approval_gate``).

``[data]`` keys: ``path`` (absolute, or relative to the site file); ``header`` (true, the default:
the first row names the columns, matched to the schema by name in any order, spaces around names
ignored); ``separator`` (one character such as ``","``, ``";"``, ``"\\t"`` or ``"|"``; ``"auto"``, the
default, detects it among those four from the file's first lines and asks for it when unsure);
``missing`` (the texts that mark a missing value, default ``["", "NA", "?"]``); ``incomplete_rows``
(``"drop"``, the default: leave out rows missing a value in a used column, counted in
``SiteData.dropped_rows``; ``"error"``: refuse the file, naming the first such line); ``dataset``
(the name this data's privacy budget is kept under). A UTF-8 byte-order mark is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fedcore.config.reader import Reader, describe, raise_problems, read_toml, suggest
from fedcore.config.secagg import SiteSecAgg, read_site_secagg
from fedcore.site.policy import SitePolicy
from fedcore.tasks.base import LabelSpec

__all__ = ["Approval", "ColumnSpec", "ColumnTag", "ColumnType", "SiteConfig", "load_site", "site_reference"]

ColumnType = Literal["numeric", "categorical", "text", "datetime"]
ColumnTag = Literal["identifier", "sensitive", "quasi_identifier", "public"]
Approval = Literal["auto", "manual"]
_TYPES: tuple[ColumnType, ...] = ("numeric", "categorical", "text", "datetime")
_TAGS: tuple[ColumnTag, ...] = ("identifier", "sensitive", "quasi_identifier", "public")
DependsOn = Literal["row", "unit", "other_units"]
_DEPENDS: tuple[DependsOn, ...] = ("row", "unit", "other_units")
_DEPENDS_DOC = (
    "whose rows a feature's value is computed from: `row` (its own row), `unit` (other rows of the "
    "same customer, e.g. a 7-day spending window), `other_units` (other customers' rows, e.g. a "
    "terminal's fraud rate). DP protects one row only if no other row's feature depends on it, one "
    "customer only if no other customer's does: the site refuses example-level DP with `unit` or "
    "`other_units` features, customer-level DP with `other_units` features"
)
_INDICATE_DOC = (
    "a feature that may be empty: an empty value keeps its row; the model gets one more input, "
    "`NAME=missing` (1 where empty, else 0), and the value becomes its center (a numeric) or no level "
    "(a categorical). Without it, a row with an empty value is dropped ([data] incomplete_rows)"
)
_SECTIONS = ("site", "data", "schema", "split", "privacy", "node", "secagg")


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
    bounds: tuple[float, float] | None = None  # public clamping bounds for statistics
    depends_on: DependsOn = "row"  # whose rows the value is computed from (see _DEPENDS)
    indicate_missing: bool = False  # a gap: the input `name=missing` is 1, the value its center; row kept

    @property
    def signature(self) -> tuple[Any, ...]:
        """What every site must declare alike for this column (its model inputs follow from it)."""
        base = (self.name, self.type, self.levels)
        return (*base, "indicate_missing") if self.indicate_missing else base


@dataclass(frozen=True)
class SiteConfig:
    """A site file: where the data is, its schema, its split, its privacy policy and trust.

    Reading the file (``[data]``): ``header`` says whether the first row names the columns (then
    they are matched by name, in any order); ``separator`` is one character, or ``"auto"`` to detect
    it among ``,`` ``;`` tab ``|``; ``missing`` lists the texts that mark a missing value;
    ``incomplete_rows`` is ``"drop"`` (leave out rows missing a used value) or ``"error"``.
    """

    name: str
    path: Path  # the site file itself
    data_path: Path
    columns: tuple[ColumnSpec, ...]
    label: str
    policy: SitePolicy
    target: str = "binary"  # the task the labels serve (fedcore.tasks); a job's [task] must match
    event: str | None = None  # survival: the event column (1 observed, 0 censored)
    positive: tuple[Any, ...] = ()
    positive_above: float | None = None
    drop: tuple[str, ...] = ()
    header: bool = True
    separator: str = "auto"  # one character, or "auto": detected among , ; tab |
    missing: tuple[str, ...] = ("", "NA", "?")
    incomplete_rows: Literal["drop", "error"] = "drop"
    dataset: str = "default"
    test_fraction: float = 0.34
    split_seed: int = 43
    stratify: bool = True
    split_column: str | None = None  # time split: rows with split_column >= split_at are test
    split_at: float | None = None
    trusted_apps: tuple[str, ...] = ()
    head_copy: Path | None = None  # where the node keeps a copy of its audit head (see fedcore.site.head)
    approval: Approval = "auto"  # "manual": a person approves each job (fedcore.site.approval_gate)
    approval_timeout_hours: float = 24.0  # how long a request waits for that decision
    secagg: SiteSecAgg | None = None  # [secagg]: its identity and the members it accepts

    @property
    def identifiers(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.tag == "identifier")

    @property
    def feature_columns(self) -> tuple[ColumnSpec, ...]:
        """Columns used as model inputs: not the label, not dropped, never identifiers."""
        skip = {self.label, *self.drop, *([self.event] if self.event else [])}
        return tuple(
            c
            for c in self.columns
            if c.name not in skip and c.tag != "identifier" and c.type in ("numeric", "categorical")
        )

    def features_depending_on(self, *scopes: DependsOn) -> tuple[str, ...]:
        """Features whose values are computed from rows in ``scopes`` (``depends_on``)."""
        return tuple(c.name for c in self.feature_columns if c.depends_on in scopes)

    @property
    def undeclared_scaling(self) -> tuple[str, ...]:
        """Numeric features without public ``center``/``scale`` (refused under DP)."""
        return tuple(
            c.name
            for c in self.feature_columns
            if c.type == "numeric" and (c.center is None or c.scale is None)
        )

    @property
    def labels(self) -> LabelSpec:
        """What the labels are: the task they serve, the label (and event) column, the classes."""
        label = next((c for c in self.columns if c.name == self.label), None)
        classes = len(label.levels) if label is not None and label.type == "categorical" else None
        return LabelSpec(self.target, self.label, self.event, classes)

    def schema_signature(self) -> tuple[Any, ...]:
        """What must agree across sites for them to train one model together."""
        features = tuple(c.signature for c in self.feature_columns)
        if self.target == "binary" and self.event is None:
            return (self.label, features)
        return (self.label, features, self.labels)


def _column(name: str, raw: Any, cols: Reader) -> ColumnSpec:
    if isinstance(raw, str):
        raw = {"type": raw}
    doc = 'one column: a type name (`age = "numeric"`) or a table of these keys'
    t = Reader(raw, cols.source, cols.problems, f"{cols.section}.{name}", doc)
    cols.children.append(t)
    ctype = t.string("type", "numeric", choices=_TYPES, doc="how values are read and encoded")
    tag = t.string(
        "tag", "sensitive", choices=_TAGS, doc="data classification; `identifier` never becomes a feature"
    )
    levels = t.value("levels", [], kind="list", doc="a categorical column's values, in one-hot order")
    center = t.number("center", None, doc="public reference value subtracted (required under DP)")
    scale = t.number("scale", None, gt=0, doc="public reference scale divided by (required under DP)")
    bounds = t.value("bounds", None, kind="list", doc="public [low, high] statistics clamp values to")
    depends = t.string("depends_on", "row", choices=_DEPENDS, doc=_DEPENDS_DOC)
    indicate = t.boolean("indicate_missing", False, doc=_INDICATE_DOC)
    t.done()
    if bounds is not None and not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(_is_num(b) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        t.problem("bounds", f"must be [low, high] numbers with low < high, got {bounds!r}")
        bounds = None
    if not isinstance(levels, list):
        t.problem("levels", f"must be a list, got {levels!r}")
        levels = []
    if ctype == "categorical" and len(levels) < 2:
        t.problem(
            "levels", "a categorical column needs at least 2 levels so every site one-hot encodes it alike"
        )
    if (center is None) != (scale is None) or (ctype != "numeric" and center is not None):
        t.problem("center", "give center and scale together, for numeric columns only")
    if indicate and (tag == "identifier" or ctype not in ("numeric", "categorical")):
        t.problem("indicate_missing", "is for feature columns (numeric or categorical, not identifiers)")
    return ColumnSpec(
        name, cast(ColumnType, ctype), tuple(levels), cast(ColumnTag, tag), center, scale,
        None if bounds is None else (float(bounds[0]), float(bounds[1])), cast(DependsOn, depends),
        bool(indicate),
    )  # fmt: skip


def _check_unit_column(privacy: Reader, policy: SitePolicy, columns: tuple[ColumnSpec, ...]) -> None:
    """``[privacy] unit_column`` must name a declared identifier column; a customer-level minimum needs it."""
    unit = policy.unit_column
    tags = {c.name: c.tag for c in columns}
    if unit is not None and columns and unit not in tags:
        privacy.problem("unit_column", f"{unit!r} is not a declared column{suggest(unit, tags)}")
    elif unit is not None and unit in tags and tags[unit] != "identifier":
        privacy.problem(
            "unit_column",
            f'{unit!r} is tagged {tags[unit]!r}; tag it "identifier" (an id never becomes a model input)',
        )
    site_dpsgd = policy.mechanisms.get("dpsgd")
    if getattr(site_dpsgd, "unit", "example") == "customer" and unit is None:
        privacy.problem(
            "dpsgd",
            'unit = "customer" needs [privacy] unit_column naming the column that identifies a customer',
        )


def _target(schema: Reader, columns: tuple[ColumnSpec, ...], label: str) -> tuple[str, str | None]:
    """``[schema] target`` (a registered task) and ``event`` (survival's event column), checked."""
    from fedcore.tasks import task_names

    target = schema.string(
        "target", "binary",
        doc="the task the labels serve (a job's [task] must be this one): binary (the 0/1 rule below), "
        "multiclass (a categorical label, its levels the classes), regression (a number), survival "
        "(label: the time; event: the event column), or a task an app registers",
    )  # fmt: skip
    if target not in task_names():
        schema.problem("target", f"unknown task {target!r}{suggest(str(target), task_names())}")
    event = schema.string("event", None, doc="survival: the event column (1 observed, 0 censored)")
    kinds = {c.name: c.type for c in columns}
    if event is not None and columns and event not in kinds:
        schema.problem("event", f"{event!r} is not a declared column{suggest(str(event), kinds)}")
    if target == "survival" and event is None:
        schema.problem("event", "target = 'survival' needs the event column (1 observed, 0 censored)")
    if target == "multiclass" and kinds.get(label, "categorical") != "categorical":
        schema.problem(
            "label", f"target = 'multiclass' needs a categorical label with levels; {label!r} is not"
        )
    return str(target), event


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _read_site(top: Reader, path: Path) -> dict[str, Any]:
    """Every key of a site file through ``top`` (problems recorded there): ``SiteConfig``'s fields."""
    site = top.sub("site", doc="who this site is")
    name = site.string("name", path.stem, doc="the site's name (default: the file's name)")
    site.done()
    data = top.sub("data", doc="the data file and how to read it")
    data_path = data.string("path", doc="the CSV file, absolute or relative to the site file")
    separator = data.string("separator", "auto", doc='one character, or "auto": detect , ; tab |')
    if separator != "auto" and (len(separator) != 1 or separator in '"\r\n'):
        data.problem(
            "separator", f'must be one character (",", ";", "\\t", "|") or "auto", got {separator!r}'
        )
    reading = dict(
        header=data.boolean("header", True, doc="the first row names the columns (matched by name)"),
        separator=separator,
        missing=data.strings("missing", ("", "NA", "?"), doc="texts that mark a missing value"),
        incomplete_rows=data.string(
            "incomplete_rows",
            "drop",
            choices=("drop", "error"),
            doc="rows missing a used value: drop or refuse",
        ),
        dataset=data.string("dataset", "default", doc="the name this data's privacy budget is kept under"),
    )
    data.done()
    schema = top.sub("schema", doc="the label and every column")
    cols = schema.sub("columns", doc='every column of the file: `name = "type"` or `name = { ... }`')
    columns = tuple(_column(n, v, cols) for n, v in cols.table.items())
    cols.done(extra_known=cols.table)
    if not columns:
        schema.problem("columns", "is empty; list every column of the file in order")
    names = {c.name for c in columns}
    label = schema.string("label", doc="the label column (survival: the time column)")
    if columns and label not in names:
        schema.problem("label", f"{label!r} is not a declared column {sorted(names)}")
    target, event = _target(schema, columns, label)
    drop = schema.strings("drop", (), doc="columns left out of the model")
    schema.problems += [f"{schema.where} drop: unknown column {d!r}" for d in drop if d not in names]
    schema.problems += [
        f"{schema.where}.columns.{c.name} indicate_missing: {c.name!r} is the label, not a feature (a row "
        "without a label is always left out); remove indicate_missing from it"
        for c in columns if c.indicate_missing and c.name in (label, event)
    ]  # fmt: skip
    labels = dict(
        positive=tuple(schema.value("positive", [], kind="list", doc="label values that mean 1")),
        positive_above=schema.number("positive_above", None, doc="or: label > this value means 1"),
    )
    schema.done()
    split = top.sub("split", doc="which rows are test rows")
    splitting = dict(
        test_fraction=split.number("test_fraction", 0.34, gt=0, lt=1, doc="share of rows held out for test"),
        split_seed=split.integer("seed", 43, doc="seed of the random split"),
        stratify=split.boolean("stratify", True, doc="keep the label's share in both parts"),
        split_column=split.string("column", None, doc="or: a column; rows with column >= `at` are test"),
        split_at=split.number("at", None, doc="the threshold of `column`"),
    )
    split.done()
    privacy_doc = "the site's privacy policy: values a coordinator sends may only tighten it"
    privacy = top.sub("privacy", doc=privacy_doc)
    policy = SitePolicy.read(privacy, path.parent)
    _check_unit_column(privacy, policy, columns)
    node = top.sub("node", doc="what this node trusts")
    trusted = tuple(
        d.strip().lower()
        for d in node.strings("trusted_apps", (), doc="FAB digests whose own client code may run here")
    )
    node.problems += [
        f"{node.where} trusted_apps: {d!r} is not a sha256 hex digest (64 hex characters; "
        "`fedcore app-digest APP_DIR` prints an app's)"
        for d in trusted
        if len(d) != 64 or any(ch not in "0123456789abcdef" for ch in d)
    ]
    head_copy = node.string(
        "head_copy",
        None,
        doc="a file outside the state folder (best: another volume) where the node keeps a copy of its "
        "audit head, checked at every start: a restored (rolled-back) state folder is refused",
    )
    approval = node.string(
        "approval",
        "auto",
        choices=("auto", "manual"),
        doc="who admits a job inside the policy: `auto` (the node) or `manual` (a person, with `fedcore "
        "approve`/`fedcore deny` or the console; the coordinator waits up to its [job] admission_wait)",
    )
    timeout = node.number(
        "approval_timeout_hours",
        24.0,
        gt=0,
        doc="under manual approval: how long a job's request waits for the operator's decision before it "
        "expires (refused, charged nothing)",
    )
    node.done()
    secagg = read_site_secagg(top, path.parent)
    top.done(extra_known=_SECTIONS)
    return dict(
        name=str(name), path=path, data_path=(path.parent / str(data_path)).resolve(), columns=columns,
        label=label, target=target, event=event, policy=policy, drop=drop, trusted_apps=trusted, **labels,
        **reading, **splitting,
        head_copy=None if head_copy is None else (path.parent / str(head_copy)).resolve(),
        approval=approval, approval_timeout_hours=timeout, secagg=secagg,
    )  # fmt: skip


def load_site(path: Path | str) -> SiteConfig:
    """Parse and validate a site file; every problem is reported at once, paths relative to it."""
    path = Path(path).resolve()
    problems: list[str] = []
    fields = _read_site(Reader(read_toml(path), str(path), problems), path)
    raise_problems(problems, "invalid site file")
    return SiteConfig(**fields)


def site_reference() -> str:
    """The site file's reference in Markdown, written by the parser itself (``fedcore site-schema``);
    the privacy mechanisms' tables are fedcore's own (an app's plug-ins add theirs)."""
    from fedcore.privacy.mechanisms import builtin_mechanism_names

    example = {
        "schema": {"columns": {"COLUMN": {}}},
        "privacy": {name: {} for name in builtin_mechanism_names()},
        "secagg": {},
    }
    top = Reader(example, "site.toml", [])
    _read_site(top, Path("site.toml"))
    return describe(top)
