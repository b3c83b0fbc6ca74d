"""A registered component of a job (model, aggregator, client algorithm) by name and options: checked
against its registry and its factory's signature when the job is read, built on trial only once the
rest of the job reads well (building a model imports torch: a job with a typo is refused before)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcore.config.reader import Reader, suggest
from fedcore.errors import FedcoreError

__all__ = ["NamedSpec", "named_spec", "options_problems"]


@dataclass(frozen=True)
class NamedSpec:
    """A registered component (model, aggregator) by name, with its keyword options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_table(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def options_problems(kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> str:
    """An unknown keyword option of ``factory``, with a suggestion; empty when all are accepted."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return ""
    known = [
        p.name
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("input_dim", "output_dim")
    ]
    bad = [k for k in options if k not in known]
    hint = {k: suggest(k, known) if known else " (it takes no options)" for k in bad}
    return "; ".join(f"{kind} {name!r} has no option {k!r}{hint[k]}" for k in bad)


def named_spec(
    t: Reader,
    kind: str,
    names: Sequence[str],
    build: Callable[..., Any],
    factory: Any,
    trials: list[Callable[[], None]],
) -> NamedSpec:
    """The component's name and options, checked against its registry and signature; a trial build
    (``build``) is added to ``trials``, run once the rest of the job reads well (a model imports torch)."""
    name = t.string("name")
    options = {k: v for k, v in t.table.items() if k != "name"}
    t.done(extra_known=options)
    if not isinstance(name, str) or name not in names:
        t.problem("name", f"unknown {kind} {name!r}{suggest(str(name), names)}")
        return NamedSpec(str(name), options)
    bad = options_problems(kind, name, factory(name), options)
    if bad:
        t.problems.append(f"{t.where}: {bad}")
        return NamedSpec(name, options)
    where, problems = t.where, t.problems

    def trial() -> None:
        try:
            build(name, options)
        except (FedcoreError, TypeError, ValueError) as err:
            problems.append(f"{where}: {kind} {name!r} rejects its options {options}: {err}")

    trials.append(trial)
    return NamedSpec(name, options)
