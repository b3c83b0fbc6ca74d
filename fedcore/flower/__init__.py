"""The transport layer: the only package that imports ``flwr``.

``make_client_app`` and ``make_server_app`` are imported on first use (PEP 562): a node's ClientApp
process imports ``fedcore.flower.gate`` and must reach its SuperNode within Flower's 30 s task-token
window before torch and the site runtime load (docs/deployment.md, "Slow starts").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcore.flower.client_app import make_client_app
    from fedcore.flower.server_app import make_server_app

__all__ = ["make_client_app", "make_server_app"]

_HOMES = {"make_client_app": "fedcore.flower.client_app", "make_server_app": "fedcore.flower.server_app"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'fedcore.flower' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
