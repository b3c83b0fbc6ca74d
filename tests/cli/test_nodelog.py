"""``fedcore node``'s log: Flower's SuperNode output (lines as Flower 1.42 prints them, colour codes
included) becomes one clean line per event; tracebacks and collapsed lines go to node.log."""

from __future__ import annotations

import io

from fedcore.cli.nodelog import TOKEN_NOTE, NodeLog

G, R, E = "\x1b[92m", "\x1b[91m", "\x1b[0m"
AUTH = "[ApiError:1008] Runtime task-token authentication failed."
START = [
    f"{G}INFO {E}:      Starting Flower SuperNode",
    "INFO:     Started server process [20866]",
    "INFO:     Waiting for application startup.",
    f"{G}INFO {E}:      FastAPI lifespan: startup",
    "INFO:     Application startup complete.",
    "INFO:     Uvicorn running on http://127.0.0.1:9301 (Press CTRL+C to quit)",
    f"{G}INFO {E}:      SuperNode ID: 12928709891074620302",
]
MESSAGE = [
    f"{G}INFO {E}:      ",
    f"{G}INFO {E}:      [RUN 1099167999585895073, ROUND 2]",
    f"{G}INFO {E}:      Receiving: train message (ID: 2083c7e69bdf8268b019ef43cc60f4fbd228b6ab4dfabbfc77f2)",
    f"{G}INFO {E}:      Received successfully",
    f"{G}INFO {E}:      Start `flwr-clientapp` process",
    "fedcore gate: running fedcore's built-in ClientApp for FAB fedcore/app 0.1.0 sha256=ab: not listed",
    "12/07/2026 02:35:39:DEBUG:[flwr-clientapp] Start FAB installation.",
    "12/07/2026 02:35:42:INFO:",
    f"{G}INFO {E}:      Sending: train message (ID: 189b11ce1c27f8cd6f3f825fbc1751945fd2c0c9d8cd7d6dd)",
    f"{G}INFO {E}:      Sent successfully",
]
# a ClientApp process whose task token expired (seen on a loaded machine), its traceback interleaved
# with another process's lines, as the shared stream delivers them
TOKEN = [
    f"{R}ERROR {E}:     [/v1/runtime/pull-task-input]{AUTH}",
    f"{G}INFO {E}:      Task stopped.",
    f"{R}ERROR {E}:     [/v1/runtime/send-task-heartbeat]{AUTH}",
    "Exception in thread Thread-3 (_run):",
    "Traceback (most recent call last):",
    '  File "/x/flwr/supercore/heartbeat.py", line 98, in _run',
    "    self._retry_invoker.invoke(self._heartbeat)",
    "          ^^^^^^^^^^^^^^^^^^^",
    f"{R}ERROR {E}:     Failed to push task output: Client error '401 Unauthorized' for url 'http://127.0.0.1:9301/v1/runtime/push-task-output'",
    "For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
    "httpx.HTTPStatusError: Client error '401 Unauthorized' for url 'http://127.0.0.1:9301/v1/runtime/send-task-heartbeat'",
    "For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/401",
]  # fmt: skip


def _feed(log: NodeLog, lines: list[str]) -> list[str]:
    return [out for line in lines for out in log.feed(line + "\n")]


def test_start_and_a_message_are_one_line_per_event() -> None:
    out = _feed(NodeLog(), START + MESSAGE)
    assert out == [
        "INFO    Starting Flower SuperNode",
        "INFO    SuperNode ID: 12928709891074620302",
        "INFO    run 1099167999585895073 round 2: train message 2083c7e69bdf received",
        "fedcore gate: running fedcore's built-in ClientApp for FAB fedcore/app 0.1.0 sha256=ab: not listed",
        "INFO    reply to the train message sent (189b11ce1c27)",
    ]
    assert not any("\x1b" in line for line in out)


def test_expired_task_tokens_are_one_explained_line_and_kept_in_node_log() -> None:
    raw = io.StringIO()
    clock = [0.0]
    log = NodeLog(raw, clock=lambda: clock[0])
    out = _feed(log, TOKEN)
    assert out == [f"WARNING {TOKEN_NOTE}"]  # no traceback, no 401 line, no "Task stopped."
    assert "Traceback (most recent call last):" in raw.getvalue()
    assert "httpx.HTTPStatusError" in raw.getvalue()
    clock[0] = 30.0  # within the minute: counted, not repeated
    assert _feed(log, TOKEN) == [] and log.token_events >= 4
    clock[0] = 95.0
    assert _feed(log, TOKEN) == [f"WARNING {TOKEN_NOTE}"]


def test_an_unexpected_traceback_is_its_last_line_and_node_log_has_it_all() -> None:
    raw = io.StringIO()
    out = _feed(
        NodeLog(raw),
        [
            "Traceback (most recent call last):",
            '  File "/x/fedcore/clients/runtime.py", line 12, in train',
            "    raise ValueError('bad shape')",
            "ValueError: bad shape",
            f"{G}INFO {E}:      SuperNode ID: 1",
        ],
    )
    assert out == ["ERROR   ValueError: bad shape (traceback in node.log)", "INFO    SuperNode ID: 1"]
    assert 'File "/x/fedcore/clients/runtime.py", line 12' in raw.getvalue()


def test_a_traceback_cut_short_is_named_at_the_end() -> None:
    raw = io.StringIO()
    log = NodeLog(raw)
    assert _feed(log, ["Traceback (most recent call last):", '  File "x.py", line 1']) == []
    assert log.flush() == ["ERROR   a process's output ended inside a traceback (in node.log)"]
    assert 'File "x.py"' in raw.getvalue()
