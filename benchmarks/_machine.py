"""What every benchmark records about the machine it ran on (these machines are noisy and shared)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine"]

# The flags that change numpy's and torch's kernels (and so the ratios): AVX-512 machines run the
# secure noise sampler ~1.5x faster than AVX2-only ones.
_SIMD = ("avx2", "fma", "avx512f", "avx512bw", "aes", "vaes")


def _cpu() -> dict[str, Any]:
    """CPU model and SIMD flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "?"), "simd": [f for f in _SIMD if f in flags]}


def machine(**extra: Any) -> dict[str, Any]:
    """CPU count, model and SIMD flags, platform, Python version, and ``extra`` (library versions)."""
    return {
        "cpus": os.cpu_count(),
        **_cpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **extra,
    }
