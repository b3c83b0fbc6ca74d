"""Files that survive a crash or a power cut whole: the old version or the new one, never a mix."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_durably"]


def write_durably(path: Path, write: Callable[[BinaryIO], object], *, private: bool = False) -> None:
    """``write(fh)`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the
    folder (without that last step a power cut can undo the rename after the caller went on).
    ``private``: the file is 0600 and a folder created for it 0700 (a site's state)."""
    if private:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(fd, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
