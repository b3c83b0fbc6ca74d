"""Statistics a coordinator may ask for: typed, strict, and what travels (``QueryRequest``).

A statistics file (``queries/NAME.toml``, or ``fedcore query`` flags) names a batch::

    [job]
    name = "prevalence"
    min_sites = 4

    [[query]]
    name = "diseased patients per age band"
    stat = "histogram"            # count | sum | mean | variance | histogram | quantile | proportion
    column = "age"                # what the statistic is of (not for count or proportion)
    bins = [20, 40, 50, 60, 70, 90]
    where = "num > 0"             # a filter: column op value, joined by "and"
    by = "sex"                    # a group-by: a categorical column, or numeric with by_bins/by_levels
    epsilon = 0.5                 # per site, for this statistic

``stat = "proportion"`` with ``of = "num > 0"`` is the share of the (filtered) rows meeting ``of``.
With ``[job] he = true`` every site encrypts its noisy totals under the federation's HE key and adds
only its share of the noise where its policy allows (``fedcore.analytics.site``). With ``[job] secagg =
true`` (not with ``he``) every site answers exact integer counts (no epsilon: counts, histograms,
proportions), masked and summed by SecAgg+; the coordinator learns only the sums
(``fedcore.analytics.exact``). Add ``noise = "ddgauss"`` (or ``"skellam"``) and ``noise_multiplier``
(the summed noise's std over one unit's L2 sensitivity) and each site adds its share of distributed
integer noise before masking; each site plans and charges its own epsilon
(``fedcore.analytics.noisy``).

Each site answers over its own rows under its own policy (``fedcore.analytics.site``); the
coordinator combines the answers (``fedcore.analytics.combine``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from fedcore.config.job import ADMISSION_WAIT, ADMISSION_WAIT_DOC
from fedcore.config.reader import Reader, raise_problems, read_toml
from fedcore.errors import ConfigError

__all__ = [
    "STATS",
    "Condition",
    "QueryJob",
    "QueryRequest",
    "QuerySpec",
    "is_statistics",
    "load_queries",
    "parse_condition",
    "parse_queries",
]

Stat = Literal["count", "sum", "mean", "variance", "histogram", "quantile", "proportion"]
STATS: tuple[Stat, ...] = ("count", "sum", "mean", "variance", "histogram", "quantile", "proportion")
EXACT_STATS: tuple[Stat, ...] = ("count", "histogram", "proportion")
"""What an exact sum under secure aggregation answers: integer counts (``fedcore.analytics.exact``)."""
SumNoise = Literal["none", "ddgauss", "skellam"]
SUM_NOISE: tuple[SumNoise, ...] = ("none", "ddgauss", "skellam")
"""Noise of sums under secure aggregation: none (exact), distributed discrete Gaussian, Skellam."""
_OPS = ("==", "!=", ">=", "<=", ">", "<")
_VALUE = r"""-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|'[^']*'|"[^"]*"|[A-Za-z_][A-Za-z0-9_.-]*"""
_CONDITION = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|>=|<=|>|<)\s*({_VALUE})\s*$")


@dataclass(frozen=True)
class Condition:
    """``column op value``: one clause of a filter."""

    column: str
    op: str
    value: float | str

    def text(self) -> str:
        return (
            f"{self.column} {self.op} {self.value!r}"
            if isinstance(self.value, str)
            else (f"{self.column} {self.op} {self.value:g}")
        )


def parse_condition(text: str) -> tuple[Condition, ...]:
    """``"num > 0 and sex == 1"`` as conditions; ``ConfigError`` naming the clause it cannot read."""
    out = []
    for clause in re.split(r"\s+and\s+", text.strip()) if text.strip() else []:
        match = _CONDITION.match(clause)
        if match is None:
            raise ConfigError(
                f"where: cannot read {clause!r}; write column op value (op one of {', '.join(_OPS)}), "
                'clauses joined by "and", e.g. "num > 0 and sex == 1"'
            )
        column, op, raw = match.groups()
        value: float | str
        try:
            value = float(raw)
        except ValueError:
            value = raw.strip("'\"")
        out.append(Condition(column, op, value))
    return tuple(out)


@dataclass(frozen=True)
class QuerySpec:
    """One statistic of a batch."""

    name: str
    stat: Stat
    column: str | None
    where: tuple[Condition, ...]
    by: str | None
    epsilon: float
    bounds: tuple[float, float] | None = None
    bins: tuple[float, ...] = ()
    by_bins: tuple[float, ...] = ()
    by_levels: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = (0.5,)
    of: tuple[Condition, ...] = ()
    rows_per_unit: int = 1

    def describe(self) -> str:
        """One line for tables: ``mean of age where num > 0, by sex``."""
        what = {"count": "rows", "proportion": " and ".join(c.text() for c in self.of)}.get(
            self.stat, self.column or ""
        )
        where = f" where {' and '.join(c.text() for c in self.where)}" if self.where else ""
        per = f", <= {self.rows_per_unit} rows per unit" if self.rows_per_unit > 1 else ""
        return f"{self.stat} of {what}{where}" + (f", by {self.by}" if self.by else "") + per


@dataclass(frozen=True)
class QueryJob:
    """A batch of statistics, the number of sites that must answer, and whether sums go under HE."""

    name: str
    min_sites: int
    queries: tuple[QuerySpec, ...]
    table: Mapping[str, Any]
    he: bool = False
    public_key: str | None = None
    admission_wait: float = ADMISSION_WAIT  # seconds the coordinator waits for sites' operators
    secagg: bool = False  # exact integer answers summed by SecAgg+ (fedcore.analytics.exact)
    noise: SumNoise = "none"  # under secagg: each site's distributed noise (fedcore.analytics.noisy)
    noise_multiplier: float = 0.0  # the summed noise's std / one unit's L2 sensitivity

    @property
    def noisy(self) -> bool:
        """Sums under secure aggregation with distributed DP noise."""
        return self.secagg and self.noise != "none"


_MAX_BINS = 1 << 20


def _bins(t: Reader) -> tuple[float, ...]:
    """Histogram edges: a list, or ``{ start, stop, width }`` for many equal bins (integer codes)."""
    raw = t.value("bins", [], kind="list | table", doc="histogram bin edges of a numeric column, or "
                  "{ start = 0, stop = 1000, width = 1 } for equal bins")  # fmt: skip
    if not isinstance(raw, dict):
        return _checked_numbers(t, "bins", raw)
    r = Reader(raw, t.source, t.problems, f"{t.section}.bins" if t.section else "bins")
    start = r.number("start", doc="the first edge")
    stop = r.number("stop", doc="the last edge")
    width = r.number("width", 1, gt=0, doc="every bin's width")
    r.done()
    if not all(isinstance(v, int | float) for v in (start, stop, width)):
        return ()
    count = (stop - start) / width
    if not (count >= 1 and float(count).is_integer() and count <= _MAX_BINS):
        t.problem("bins", f"(stop - start) / width must be a whole number in 1..{_MAX_BINS}, got {count:g}")
        return ()
    return tuple(float(start + i * width) for i in range(int(count) + 1))


def _numbers(t: Reader, key: str, doc: str) -> tuple[float, ...]:
    return _checked_numbers(t, key, t.value(key, [], kind="list", doc=doc))


def _checked_numbers(t: Reader, key: str, raw: Any) -> tuple[float, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in raw
    ):
        t.problem(key, f"must be a list of numbers, got {raw!r}")
        return ()
    if any(b <= a for a, b in itertools.pairwise(raw)):
        t.problem(key, f"must increase, got {raw}")
    return tuple(float(v) for v in raw)


def _conditions(t: Reader, key: str, doc: str) -> tuple[Condition, ...]:
    text = t.string(key, "", doc=doc)
    try:
        return parse_condition(text if isinstance(text, str) else "")
    except ConfigError as err:
        t.problem(key, str(err))
        return ()


def _query(t: Reader, index: int, *, exact: bool = False, noisy: bool = False) -> QuerySpec:
    stat = t.string("stat", choices=STATS, doc="the statistic")
    column = t.string("column", None, doc="the column it is of (not for count or proportion)")
    where = _conditions(t, "where", 'a filter, e.g. "num > 0 and sex == 1"')
    of = _conditions(t, "of", 'a proportion\'s event, e.g. "num > 0"')
    bounds = _numbers(t, "bounds", "[low, high] to clamp values to (default: the column's schema bounds)")
    spec = QuerySpec(
        name=t.string("name", f"query {index + 1}", doc="a label for the report"),
        stat=cast(Stat, stat),
        column=column,
        where=where,
        by=t.string("by", None, doc="a group-by column (categorical, or numeric with by_bins)"),
        epsilon=t.number("epsilon", None, gt=0, doc="the epsilon each site spends on this statistic") or 0.0,
        bounds=(bounds[0], bounds[1]) if len(bounds) == 2 else None,
        bins=_bins(t),
        by_bins=_numbers(t, "by_bins", "bin edges when `by` is a numeric column"),
        by_levels=_numbers(t, "by_levels", "the values of a numeric `by` column to group on, e.g. [0, 1]"),
        quantiles=_numbers(t, "quantiles", "quantile levels in (0, 1) (default [0.5])") or (0.5,),
        of=of,
        rows_per_unit=t.integer(
            "rows_per_unit", 1, ge=1,
            doc="at sites with a privacy unit ([privacy] unit_column, e.g. a customer): at most this many "
            "of a unit's rows enter the statistic (a random subset); epsilon then protects the unit",
        ),
    )  # fmt: skip
    t.done()
    _check_exact(t, spec, exact, noisy=noisy)
    if bounds and len(bounds) != 2:
        t.problem("bounds", f"must be [low, high], got {list(bounds)}")
    if stat not in ("count", "proportion") and column is None:
        t.problem("column", f"is missing: a {stat} is of a column")
    if (stat == "proportion") != bool(of):
        t.problem("of", "a proportion needs `of` (its event), and only a proportion takes one")
    if stat == "histogram" and not spec.bins and bounds:
        t.problem("bounds", "a histogram takes bins (numeric) or none (categorical), not bounds")
    if spec.by_bins and spec.by_levels:
        t.problem("by_levels", "give by_bins or by_levels, not both")
    if not all(0 < q < 1 for q in spec.quantiles):
        t.problem("quantiles", f"must lie in (0, 1), got {list(spec.quantiles)}")
    return spec


def _check_exact(t: Reader, spec: QuerySpec, exact: bool, *, noisy: bool) -> None:
    """Sums under secure aggregation take no epsilon (exact: none; noisy: the sites plan it from the
    batch's noise) and exact ones count every row; DP answers need an epsilon."""
    if not exact:
        if not spec.epsilon:
            t.problem("epsilon", "is missing: the epsilon each site spends on this statistic")
        return
    if spec.epsilon:
        what = (
            "the batch's noise_multiplier sets the noise; each site plans its epsilon"
            if noisy
            else ("an exact sum under secure aggregation adds no noise")
        )
        t.problem("epsilon", f"{what}: remove epsilon")
    if spec.stat not in EXACT_STATS:
        allowed = ", ".join(EXACT_STATS)
        t.problem("stat", f"sums under secure aggregation are of {allowed}, got {spec.stat!r}")
    if spec.rows_per_unit != 1 and not noisy:
        t.problem("rows_per_unit", "bounds a unit's rows for DP; an exact sum counts every row: remove it")


def parse_queries(raw: Mapping[str, Any], source: str, *, default_name: str = "statistics") -> QueryJob:
    """Validate a statistics table (a file, ``fedcore query`` flags, or a coordinator's request)."""
    problems: list[str] = []
    top = Reader(raw, source, problems)
    job = top.sub("job", doc="the batch")
    name = job.string("name", default_name, doc="the batch's name")
    min_sites = job.integer("min_sites", 2, ge=1, doc="sites that must answer")
    he = job.boolean("he", False, doc="sites encrypt their noisy totals; the coordinator sees only sums")
    secagg = job.boolean("secagg", False, doc="exact integer answers summed by secure aggregation (SecAgg+)")
    public_key = job.string("public_key", None, doc="under HE: the coordinator's public.ctx (relative path)")
    wait = job.number("admission_wait", ADMISSION_WAIT, ge=0, doc=ADMISSION_WAIT_DOC)
    noise = job.string("noise", "none", choices=SUM_NOISE, doc="under secagg: each site's distributed noise")
    multiplier = job.number(
        "noise_multiplier", None, doc="under secagg with noise: summed noise std / sensitivity"
    )
    job.done()
    if he and secagg:
        job.problem("secagg", "choose he = true or secagg = true, not both")
    noisy = _check_noise(job, secagg is True, noise, multiplier)
    listed = top.value("query", [], kind="list of tables", doc="the statistics, one [[query]] table each")
    if not isinstance(listed, list) or not listed:
        top.problem("query", "needs at least one [[query]] table")
        listed = []
    exact = secagg is True
    queries = tuple(
        _query(Reader(q, source, problems, f"query {i + 1}"), i, exact=exact, noisy=noisy)
        for i, q in enumerate(listed)
    )
    top.done()
    raise_problems(problems, "invalid statistics request")
    table = json.loads(json.dumps(dict(raw)))
    table.setdefault("job", {})["name"] = name
    return QueryJob(
        name, min_sites, queries, table, bool(he), public_key, float(wait), exact,
        cast(SumNoise, noise) if noisy else "none", float(multiplier) if noisy else 0.0,
    )  # fmt: skip


def _check_noise(job: Reader, secagg: bool, noise: Any, multiplier: Any) -> bool:
    """Whether the batch is noisy under secure aggregation; every misuse of the two keys a problem."""
    given = noise not in (None, "none")
    if given and not secagg:
        job.problem("noise", "distributed noise is for sums under secure aggregation: set secagg = true")
    if given and not (
        isinstance(multiplier, int | float) and not isinstance(multiplier, bool) and multiplier > 0
    ):
        job.problem("noise_multiplier", f"noise = {noise!r} needs noise_multiplier > 0, got {multiplier!r}")
    if not given and multiplier is not None:
        job.problem("noise_multiplier", 'is for noise = "ddgauss" or "skellam": set noise, or remove it')
    return given and secagg


def load_queries(path: Path | str) -> QueryJob:
    """Parse a statistics file strictly."""
    path = Path(path)
    return parse_queries(read_toml(path), str(path), default_name=path.stem)


@dataclass(frozen=True)
class QueryRequest:
    """What the coordinator asks of a site: the batch, its id and how many sites it went to."""

    job_id: str
    num_sites: int
    job: QueryJob

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_wire().encode()).hexdigest()

    def to_wire(self) -> str:
        body = {"job_id": self.job_id, "num_sites": self.num_sites, "statistics": self.job.table}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_wire(cls, text: str) -> QueryRequest:
        try:
            body = json.loads(text)
            job_id, num_sites, table = body["job_id"], body["num_sites"], body["statistics"]
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"the coordinator's statistics request is malformed ({err!r})") from err
        if (
            not isinstance(job_id, str)
            or not job_id
            or isinstance(num_sites, bool)
            or not isinstance(num_sites, int)
        ):
            raise ConfigError(
                f"the statistics request has a bad job_id or num_sites: {job_id!r}, {num_sites!r}"
            )
        return cls(job_id, num_sites, parse_queries(table, "the coordinator's statistics request"))


def is_statistics(raw: Mapping[str, Any]) -> bool:
    """Whether a parsed TOML file is a statistics request (it has ``[[query]]`` tables)."""
    return "query" in raw
