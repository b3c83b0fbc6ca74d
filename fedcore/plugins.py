"""An app's own code that fedcore runs: plug-ins (aggregators, mechanisms) and a prepare hook, and
the registries plug-ins register into.

An app lists them in its ``pyproject.toml``::

    [tool.fedcore]
    plugins = ["plugins"]              # modules of the app directory, imported before a job is read
    prepare = "prepare:prepare"        # module:function run before the sites load (simulation)

A plug-in module registers what it defines (``fedcore.register_aggregator``,
``fedcore.register_mechanism``) when imported. Aggregators, models, tasks, client algorithms and
attacks each keep one ``Registry``: a name (case and surrounding spaces ignored) to a factory, a
clash refused unless ``force=True``, an unknown name refused with the known ones and the fix.
``fedcore run`` imports the plug-ins in the simulation's process and in every simulated site; in
deployment the app's ``fedcore_app.py`` imports them, and a site runs them only if it trusts the app
(``[node] trusted_apps``): a node that does not trust the app answers with fedcore's own code, which
refuses a job naming a mechanism it does not know.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from fedcore.errors import ConfigError, UnknownNameError

__all__ = ["AppHooks", "Registry", "app_hooks", "import_app_module", "load_plugins"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names a job file may use for one kind of plug-in (``kind``: "aggregator", "task", ...)."""

    def __init__(self, kind: str, *, fix: str = "") -> None:
        self.kind, self.fix = kind, fix
        self._items: dict[str, T] = {}

    @staticmethod
    def key(name: str) -> str:
        return name.strip().lower()

    def register(self, name: str, item: T, *, force: bool = False) -> T:
        """Register ``item`` under ``name``; ``ValueError`` if another item holds it, unless
        ``force=True``. Returns ``item`` (so a registration can stand where the item is used)."""
        key = self.key(name)
        if not key:
            raise ValueError(f"{self.kind} name must be a non-empty string")
        old = self._items.get(key)
        if old is not None and old is not item and not force:
            raise ValueError(
                f"{self.kind} {key!r} is already registered to {old!r}; pick another name or pass "
                "force=True to replace it"
            )
        self._items[key] = item
        return item

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The item registered as ``name`` (``UnknownNameError`` naming the known ones if none)."""
        found = self._items.get(self.key(name))
        if found is None:
            fix = f". {self.fix}" if self.fix else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}{fix}"
            )
        return found


class AppHooks:
    """``[tool.fedcore]`` of an app's ``pyproject.toml``, read strictly."""

    def __init__(self, root: Path) -> None:
        from fedcore.config.reader import Reader, raise_problems, read_toml

        self.root = root
        problems: list[str] = []
        raw: Any = read_toml(root / "pyproject.toml").get("tool", {}).get("fedcore", {})
        t = Reader(raw, f"{root / 'pyproject.toml'}", problems, "tool.fedcore")
        self.plugins: tuple[str, ...] = t.strings("plugins", ())
        self.prepare: str | None = t.string("prepare", None)
        t.done()
        raise_problems(problems, "invalid app")


def app_hooks(root: Path) -> AppHooks:
    return AppHooks(Path(root).resolve())


def import_app_module(root: Path, module: str) -> ModuleType:
    """Import ``root/<module>.py`` once per process, named after its content: two copies of one file
    (an app copied elsewhere) are one module, so their registrations do not collide."""
    path = root / f"{module}.py"
    if not path.is_file():
        raise ConfigError(
            f"{root / 'pyproject.toml'}: [tool.fedcore] names module {module!r}, but {path} is missing"
        )
    name = f"_fedcore_app_{module}_{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses in the module look their module up there
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


_Stamp = tuple[tuple[int, int, int] | None, ...]
_LOADED: dict[Path, tuple[list[Path], _Stamp]] = {}  # app root -> (its files, their stamp when loaded)


def _stamp(paths: list[Path]) -> _Stamp:
    """What changes when a file is edited or replaced (inode, size, mtime); ``None``: missing."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def load_plugins(root: Path) -> None:
    """Import the app's plug-in modules (idempotent): their registrations take effect.

    A site calls this for every message; while the app's ``pyproject.toml`` and plug-in files are
    unchanged since the last call in this process (same inode, size and mtime) nothing is read again
    (reading and hashing them cost ~0.5 ms a message).
    """
    root = Path(root).resolve()
    loaded = _LOADED.get(root)
    if loaded is not None and _stamp(loaded[0]) == loaded[1]:
        return
    pyproject = root / "pyproject.toml"
    stamp = _stamp([pyproject])  # taken before reading: an edit meanwhile is read at the next call
    hooks = app_hooks(root)
    modules = [root / f"{module}.py" for module in hooks.plugins]
    stamp += _stamp(modules)
    for module in hooks.plugins:
        import_app_module(hooks.root, module)
    _LOADED[root] = ([pyproject, *modules], stamp)
