"""What every benchmark records about the machine it ran on (these machines are noisy and shared)."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["machine"]


def machine(**extra: Any) -> dict[str, Any]:
    """CPU count, platform and Python version, plus ``extra`` (library versions, say)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }
