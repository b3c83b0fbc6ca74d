"""Reading what a statistics batch released (``statistics.json``) back as numbers, for an app.

A job's ``[prepare] statistics`` hands the app's prepare hook the ``statistics.json`` of a batch run
just before it (``fedcore.harness.runner``); the hook turns released values into features with these
readers. Everything here is post-processing of DP output: it costs no epsilon. A sum under secure
aggregation (``[job] secagg = true``, exact or with distributed noise) is read the same way (its
counts, as released).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedcore.analytics.vectors import column
from fedcore.errors import ConfigError

__all__ = ["released_histogram"]


def _result(path: Path, name: str) -> dict[str, Any]:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the released statistics {path}: {err}") from err
    found = [r for r in body.get("results", []) if r.get("name") == name]
    if not found:
        names = ", ".join(repr(r.get("name")) for r in body.get("results", []))
        raise ConfigError(f"{path}: no released statistic named {name!r} (it holds {names or 'none'})")
    result: dict[str, Any] = found[0]
    return result


def released_histogram(path: Path, name: str, *, group: str = "all") -> NDArray[np.float64]:
    """The released (noisy, combined) count of every bin of histogram ``name``, in bin order, without
    the ``other`` bucket; ``ConfigError`` if it is not there or its group was suppressed."""
    result = _result(path, name)
    if result.get("stat") != "histogram":
        raise ConfigError(f"{path}: {name!r} is a {result.get('stat')}, not a histogram")
    if result.get("exact") or "noise_std" in result:  # a sum under secure aggregation (analytics.exact)
        cell = result.get("groups", {}).get(group, {})
        if "counts" not in cell:
            raise ConfigError(f"{path}: {name!r} (group {group!r}) was not released: suppressed or refused")
        return np.asarray(cell["counts"], dtype=np.float64)
    groups, items, values = (column(result, key) for key in ("group", "item", "value"))
    kept = [v for g, i, v in zip(groups, items, values, strict=True) if g == group and i != "other"]
    if not kept or any(v is None for v in kept):
        raise ConfigError(
            f"{path}: {name!r} (group {group!r}) was not released: suppressed or refused at too many sites "
            "(see its report.md)"
        )
    return np.array(kept, dtype=np.float64)
