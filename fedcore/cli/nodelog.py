"""What ``fedcore node`` prints: Flower's SuperNode output as one clean line per event.

A SuperNode, its SuperExec and every ClientApp process share one output stream. Left alone it
mixes colour codes, the web server's start-up chatter, four lines per message received, and full
tracebacks for conditions that are expected (a ClientApp process whose task token expired: see
``TOKEN_NOTE``). An operator cannot tell a failure from noise. :class:`NodeLog` turns the stream
into one line per event: a message received, a ClientApp's verdict (the gate), a failure with its
exception's last line; tracebacks and the raw lines behind a collapsed event go to the site's
``node.log`` (``raw``), where nothing is lost.

Pure text processing, no processes: ``fedcore.cli.deploy`` feeds it the child's lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["TOKEN_NOTE", "NodeLog"]

TOKEN_NOTE = (
    "a ClientApp process was replaced: it did not reach this node within Flower's 30 s start window "
    "(task token expired; a slow start on a loaded machine) or was asked to stop, and Flower runs the "
    "message again in a new process. Harmless when rare; if every message shows it, see "
    "docs/deployment.md, 'Slow starts'"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s?(.*)$")
_DROP = re.compile(
    r"^(Received successfully|Start `flwr-clientapp` process|Started server process.*"
    r"|Waiting for application (startup|shutdown)\.|Application (startup|shutdown) complete\."
    r"|Finished server process.*|Shutting down|FastAPI lifespan: .*|Uvicorn running on .*"
    r"|For more information check: https://developer\.mozilla\.org/\S*)$"
)
# opacus calls logging.basicConfig() on import: in a ClientApp process every Flower record is printed a
# second time by the root logger, as "12/07/2026 02:35:39:DEBUG:message"
_ROOT_COPY = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:(DEBUG|INFO|WARNING|ERROR|CRITICAL):(.*)$")
_SENDING = re.compile(r"^Sending: (\w+) message \(ID: ([0-9a-f]+)\)$")
_RUN = re.compile(r"^\[RUN (\d+)(?:, ROUND (\S+))?\]$")
_RECEIVING = re.compile(r"^Receiving: (\w+) message \(ID: ([0-9a-f]+)\)$")
_TOKEN = re.compile(r"task-token authentication failed|401 Unauthorized|Failed to push task output")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")
_TRACE_STARTS = (
    "Traceback (most recent call last):",
    "Exception in thread",
    "The above exception was the direct cause",
    "During handling of the above exception",
)
_TOKEN_QUIET = 60.0  # one TOKEN_NOTE per minute at most; the others are counted in node.log


class NodeLog:
    """Feed it the SuperNode's output line by line; print what :meth:`feed` returns.

    ``raw`` (the site's ``node.log``) receives every traceback and every collapsed line as it was.
    """

    def __init__(self, raw: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.raw, self.clock = raw, clock
        self._run: tuple[str, str | None] | None = None  # a [RUN r, ROUND g] header, until its message
        self._sending: tuple[str, str] | None = None  # a reply being sent, until it is
        self._trace: list[str] = []  # the traceback being read (lines of other processes interleave)
        self._token_at = -1e18  # when TOKEN_NOTE was last printed
        self.token_events = 0

    def feed(self, text: str) -> list[str]:
        """The clean lines for one line of output (usually one or none)."""
        line = _ANSI.sub("", text).rstrip("\r\n")
        if self._trace and (line[:1] in (" ", "\t", "^") or not line.strip()):
            self._trace.append(line)
            return []
        if line.startswith(_TRACE_STARTS):
            self._trace.append(line)
            return []
        if self._trace and _EXCEPTION.match(line):
            return self._end_trace(line)
        level = _LEVEL.match(line) or _ROOT_COPY.match(line)
        if level is None:  # a line of its own (the gate's, or a message's continuation)
            return [line] if line.strip() and not _DROP.match(line.strip()) else []
        if level.re is _ROOT_COPY and level.group(1) in ("DEBUG", "INFO"):
            return []  # Flower's own handler printed it already (or it is a debug line)
        return self._event(level.group(1), level.group(2).strip(), line)

    def _event(self, level: str, message: str, line: str) -> list[str]:
        if not message or _DROP.match(message):
            return []
        if _TOKEN.search(message) or (message == "Task stopped." and self._token_recent()):
            self._keep([line])
            return self._token()
        if run := _RUN.match(message):
            self._run = (run.group(1), run.group(2))
            return []
        if sending := _SENDING.match(message):
            self._sending = (sending.group(1), sending.group(2))
            return []
        if message == "Sent successfully" and self._sending is not None:
            kind, ident = self._sending
            self._sending = None
            return [f"{level:<7} reply to the {kind} message sent ({ident[:12]})"]
        if (got := _RECEIVING.match(message)) and self._run is not None:
            run_id, group = self._run
            self._run = None
            where = f"run {run_id}" + (f" round {group}" if group else "")
            return [f"{level:<7} {where}: {got.group(1)} message {got.group(2)[:12]} received"]
        return [f"{level:<7} {message}"]

    def _end_trace(self, last: str) -> list[str]:
        trace, self._trace = [*self._trace, last], []
        self._keep(trace)
        if _TOKEN.search(last):
            return self._token()
        return [f"ERROR   {last} (traceback in node.log)"]

    def _token_recent(self) -> bool:
        return self.clock() - self._token_at < _TOKEN_QUIET

    def _token(self) -> list[str]:
        self.token_events += 1
        if self._token_recent():
            return []
        self._token_at = self.clock()
        return [f"WARNING {TOKEN_NOTE}"]

    def _keep(self, lines: list[str]) -> None:
        if self.raw is not None:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            self.raw.write("".join(f"--- {stamp} {ln}\n" for ln in lines))
            self.raw.flush()

    def flush(self) -> list[str]:
        """At the end of the stream: a traceback cut short is kept, and named in one line."""
        if not self._trace:
            return []
        trace, self._trace = self._trace, []
        self._keep(trace)
        return ["ERROR   a process's output ended inside a traceback (in node.log)"]
