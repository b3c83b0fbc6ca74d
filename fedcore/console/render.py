"""The console's Jinja2 templates: autoescaped (every text may come from the coordinator), strict."""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["STATIC", "eps", "render", "statement_style_hash"]

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"


def eps(value: Any, digits: int = 4) -> str:
    """An epsilon for people: ``digits`` significant figures; "-" for none."""
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["eps"] = eps
    env.filters["when"] = lambda t: (str(t)[:19].replace("T", " ") + " UTC") if t else "-"
    return env


def render(name: str, **context: Any) -> str:
    """Render the template ``name`` with ``context`` (autoescaped)."""
    return environment().get_template(name).render(**context)


@functools.cache
def statement_style() -> str:
    """The statement's own CSS, inlined so the downloaded file stands alone."""
    return (STATIC / "statement.css").read_text(encoding="utf-8")


def statement_style_hash() -> str:
    """The CSP source that allows exactly that inline style (``'sha256-...'``)."""
    import base64

    digest = hashlib.sha256(statement_style().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"
