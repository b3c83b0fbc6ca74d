"""docs/deployment.md as something to run: its ``# guide: NAME`` blocks, its table of what to replace on
one machine, and the processes the blocks start (each marked, so that a scan of /proc finds every
process they left behind, however deep in the tree).

A block is a fenced ``bash`` or ``toml`` block whose first line is ``# guide: NAME`` with an optional
``(service)`` (a long-running command, started in the background) or ``(file PATH)`` (a file to write).
Nothing else in the guide is run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "deployment.md"
MARKER = "FEDCORE_GUIDE_TEST"  # in the environment of every process a block starts, and their children

_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>bash|toml)\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
_TAG = re.compile(r"^# guide: (?P<name>[\w-]+)(?: \((?P<kind>service|file (?P<path>\S+))\))?$")


@dataclass(frozen=True)
class Block:
    name: str
    text: str  # the block without its tag line
    kind: str = "run"  # run | service | file
    path: str = ""  # for a file block: where the guide says it goes


def blocks(text: str) -> dict[str, Block]:
    """Every tagged block of the guide, by name, in the guide's order."""
    found: dict[str, Block] = {}
    for m in _FENCE.finditer(text):
        body = textwrap.dedent(m.group("body"))
        first, _, rest = body.partition("\n")
        tag = _TAG.match(first.strip())
        if tag is None:
            continue
        kind = "run" if tag.group("kind") is None else tag.group("kind").split()[0]
        assert tag.group("name") not in found, f"{GUIDE}: two blocks named {tag.group('name')!r}"
        found[tag.group("name")] = Block(tag.group("name"), rest, kind, tag.group("path") or "")
    return found


def replaced_values(text: str) -> list[str]:
    """The values the guide's table "Trying it on one machine" says to replace (left column)."""
    section = text.split("## Trying it on one machine", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    return [v for row in rows for v in re.findall(r"`([^`]+)`", row.split("|")[1])]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each key of ``values`` replaced, longest first (``/etc/fedcore/site.toml`` before
    ``/etc/fedcore``), in one pass (a replacement is never replaced again)."""
    keys = sorted(values, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys))
    return pattern.sub(lambda m: values[m.group(0)], text)


@dataclass
class Runner:
    """Runs blocks with an environment, logs each process's output under ``logs``."""

    env: dict[str, str]
    logs: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def run(self, block: Block, values: Mapping[str, str], *, cwd: Path, timeout: float = 300) -> str:
        """A ``run`` block to its end (it must succeed); its output."""
        script = substitute(block.text, values)
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, (
            f"guide block {block.name!r} failed ({proc.returncode}):\n{script}\n{out}"
        )
        return out

    def start(
        self, block: Block, values: Mapping[str, str], *, cwd: Path, tag: str
    ) -> subprocess.Popen[bytes]:
        """A ``service`` block (or a long ``run`` block) in the background; its output in logs/TAG.log."""
        script = substitute(block.text, values)
        env = {**self.env, MARKER: f"{self.env[MARKER]}:{tag}"}
        log = (self.logs / f"{tag}.log").open("ab")
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", f"exec {script}"], cwd=cwd, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.started.append((tag, proc))
        return proc

    def log(self, tag: str) -> str:
        path = self.logs / f"{tag}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def marked(marker: str) -> dict[int, str]:
    """Live processes (zombies are dead) whose environment holds ``MARKER=marker...``: pid -> command."""
    found = {}
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            environ = (entry / "environ").read_bytes()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(v.startswith(needle) for v in environ.split(b"\0")):
            found[int(entry.name)] = cmd[:160]
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float, *, context: Callable[[], str]) -> None:
    """Poll ``check`` until true; on timeout fail with ``what`` and ``context()`` (logs to read)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        time.sleep(1)


def stop_all(runner: Runner, marker: str, grace: float = 20) -> dict[int, str]:
    """SIGTERM to every process the blocks started (each one's own group), SIGKILL after ``grace``;
    returns what was still alive after the SIGTERM phase (it should be nothing)."""
    for _, proc in reversed(runner.started):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = marked(marker)
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _, proc in runner.started:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    return left
