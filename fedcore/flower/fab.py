"""The identity of a Flower app: the sha256 of the FAB (Flower App Bundle) that ``flwr run`` uploads.

``flwr run APP_DIR`` builds the FAB in memory with ``flwr.cli.build.build_fab_from_disk`` and the run's
``fab_hash`` is ``sha256(fab_bytes).hexdigest()`` (the SuperLink recomputes it from the uploaded bytes;
the SuperNode hands both to the ClientApp process). The build is deterministic: files sorted, fixed zip
timestamps, ``pyproject.toml`` re-serialised without ``[tool.flwr.federations]``. So a site can review an
app's source, compute its digest here, and trust exactly that code (``[node] trusted_apps``).

What changes the digest: any byte of any file the FAB includes (``.py``, ``.toml``, ``.md``, ...; see
Flower's FAB include/exclude rules and the app's ``.gitignore``), and the Flower version (build rules) or
zlib build (deflate output) of the machine that runs ``flwr run``. Comments in ``pyproject.toml`` and
files the FAB excludes (``__pycache__``, ``.venv``, ...) do not change it.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from fedcore.errors import ConfigError

__all__ = ["app_digest", "fab_digest"]


def fab_digest(fab: bytes) -> str:
    """sha256 hex of FAB bytes: what Flower calls the run's ``fab_hash``."""
    return hashlib.sha256(fab).hexdigest()


def app_digest(app_dir: Path) -> str:
    """The sha256 hex of the FAB that ``flwr run APP_DIR`` would upload (its ``fab_hash``)."""
    app = Path(app_dir).expanduser().resolve()
    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"{app} is not a Flower app: no pyproject.toml there")
    from flwr.cli.build import build_fab_from_disk  # here: the gate imports this module at every start

    try:
        with warnings.catch_warnings():
            # Flower 1.42 builds its path specs with pathspec's deprecated 'gitwildmatch' name
            warnings.filterwarnings("ignore", message=".*GitWildMatchPattern", category=DeprecationWarning)
            fab = build_fab_from_disk(app)
    except ValueError as err:  # Flower's own validation (components, names, size, patterns)
        raise ConfigError(f"cannot build the FAB of {app}: {err}") from err
    return fab_digest(fab)
