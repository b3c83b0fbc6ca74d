"""The node's gate on Flower's Deployment Engine: a submitter's client code runs only if the site trusts
its FAB digest; otherwise fedcore's built-in ClientApp answers.

One real SuperLink and one SuperNode on loopback (insecure), the SuperNode with the gate's
``flwr-clientapp`` first on PATH and ``FEDCORE_SITE_FILE`` set, as ``fedcore node`` runs it. Each test
submits its own throwaway app with ``flwr run``; the site file's trust list is re-read per message, so
both tests share the federation and only rewrite ``[node] trusted_apps``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcore.flower.fab import app_digest
from fedcore.flower.gate import (
    ENV_SITE_FILE,
    SHIM_NAME,
    gate_path_dir,
)
from tests.flower.federation import BIN, free_port, processes, write_flwr_home

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SITE_TEMPLATE = REPO / "examples" / "medical" / "sites" / "cleveland.toml"


def _init_site_state(site_file: Path, state_dir: Path) -> None:
    """A new site's first step: `fedcore ledger SITE --init` (state is never created implicitly)."""
    cmd = [str(BIN / "fedcore"), "ledger", str(site_file), "--state-dir", str(state_dir), "--init"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@dataclass
class Node:
    env: dict[str, str]
    site_file: Path
    site_text: str  # the site file without a [node] table
    node_log: Path
    logs: Path
    node_tmp: Path  # TMPDIR of the SuperNode: where each ClientApp process's private FLWR_HOME goes

    def trust(self, *digests: str) -> None:
        listed = ", ".join(f'"{d}"' for d in digests)
        self.site_file.write_text(f"{self.site_text}\n[node]\ntrusted_apps = [{listed}]\n")

    def leftover_homes(self) -> list[str]:
        """Private FLWR_HOMEs not yet removed (polls a little: the ClientApp process may still exit)."""
        deadline = time.monotonic() + 15
        while True:
            left = sorted(p.name for p in self.node_tmp.glob("fedcore-clientapp-*"))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("gate")
    gate_dir = gate_path_dir(root / "private")
    assert (gate_dir / SHIM_NAME).stat().st_mode & 0o777 == 0o700
    assert gate_dir.stat().st_mode & 0o777 == 0o700

    data = shared_data / "heart_disease" / "processed.cleveland.data"
    site_text = re.sub(r"(?m)^path = .*$", f'path = "{data.resolve()}"', SITE_TEMPLATE.read_text(), count=1)
    site_file = root / "cleveland.toml"
    site_file.write_text(site_text)
    _init_site_state(site_file, root / "state")

    env = {
        **os.environ,
        "FLWR_HOME": str(root / "flwr"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    # what `fedcore node` adds for flower-supernode: the gate first on PATH, and the site file
    node_env = {**env, "PATH": f"{gate_dir}:{env['PATH']}", ENV_SITE_FILE: str(site_file)}
    # the node's own FLWR_HOME and TMPDIR, apart from the SuperLink's (which unpacks every FAB for
    # its ServerApp), so the test can see what the node itself unpacked and left behind
    node_tmp = root / "node-tmp"
    node_tmp.mkdir()
    node_env.update(FLWR_HOME=str(root / "node-home"), TMPDIR=str(node_tmp))
    link_port, state = free_port(), root / "state"
    write_flwr_home(root / "flwr", link_port)
    with processes(root / "logs") as procs:
        procs.superlink(env, link_port, root / "state.db")
        time.sleep(2)
        procs.start(
            "supernode", node_env, "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
            "--port", str(free_port()), "--node-config", f"site-file='{site_file}' state-dir='{state}'",
        )  # fmt: skip
        yield Node(env, site_file, site_text, root / "logs" / "supernode.log", root / "logs", node_tmp)


def _probe_app(where: Path) -> tuple[Path, Path]:
    """A submitter's app: its ClientApp leaves marker files (on import, and when it handles the query)."""
    app = where / "gate-probe"
    markers = where / "markers"
    app.mkdir(parents=True)
    markers.mkdir()
    (app / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "gate-probe"
            version = "1.0.0"
            dependencies = []

            [tool.hatch.build.targets.wheel]
            packages = ["."]

            [tool.flwr.app]
            publisher = "fedcoretest"

            [tool.flwr.app.components]
            serverapp = "probe_server:app"
            clientapp = "probe_client:app"

            [tool.flwr.app.config]
            reply-file = ""
            """
        )
    )
    (app / "probe_client.py").write_text(
        textwrap.dedent(
            f"""\
            from pathlib import Path

            from flwr.app import ConfigRecord, Context, Message, RecordDict
            from flwr.clientapp import ClientApp

            MARKERS = Path({str(markers)!r})
            (MARKERS / "imported").write_text("the submitter's client module was imported")

            app = ClientApp()


            @app.query()
            def query(msg: Message, context: Context) -> Message:
                (MARKERS / "handled").write_text("the submitter's query handler ran")
                return Message(RecordDict({{"probe": ConfigRecord({{"from": "submitter"}})}}), reply_to=msg)
            """
        )
    )
    (app / "probe_server.py").write_text(
        textwrap.dedent(
            """\
            import json
            import time
            from pathlib import Path

            from flwr.app import ConfigRecord, Context, Message, RecordDict
            from flwr.serverapp import Grid, ServerApp

            app = ServerApp()


            @app.main()
            def main(grid: Grid, context: Context) -> None:
                out = Path(str(context.run_config["reply-file"]))
                deadline = time.monotonic() + 60
                nodes = list(grid.get_node_ids())
                while not nodes and time.monotonic() < deadline:
                    time.sleep(1)
                    nodes = list(grid.get_node_ids())
                if not nodes:
                    out.write_text(json.dumps({"nodes": 0}))
                    return
                msg = Message(
                    RecordDict({"config": ConfigRecord({"action": "describe"})}),
                    dst_node_id=nodes[0],
                    message_type="query",
                )
                replies = list(grid.send_and_receive([msg], timeout=120))
                record = {"nodes": len(nodes), "replies": []}
                for r in replies:
                    if r.has_error():
                        record["replies"].append({"error": r.error.code, "reason": r.error.reason})
                    else:
                        record["replies"].append(
                            {k: dict(v) for k, v in r.content.config_records.items()}
                        )
                out.write_text(json.dumps(record, default=str))
            """
        )
    )
    return app, markers


def _submit(node: Node, app: Path, reply_file: Path) -> dict[str, object]:
    cmd = [
        str(BIN / "flwr"),
        "run",
        str(app),
        "local",
        "--stream",
        "--run-config",
        f"reply-file='{reply_file}'",
    ]
    proc = subprocess.run(cmd, env=node.env, capture_output=True, timeout=240, check=False)
    tail = proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    assert proc.returncode == 0, f"{tail}\nlogs in {node.logs}"
    assert reply_file.is_file(), f"the ServerApp wrote no reply file\n{tail}\nlogs in {node.logs}"
    reply: dict[str, object] = json.loads(reply_file.read_text())
    return reply


def _gate_lines(node: Node, digest: str) -> list[str]:
    return [ln for ln in node.node_log.read_text(errors="replace").splitlines() if f"sha256={digest}" in ln]


def test_untrusted_app_gets_fedcores_client_app(node: Node, tmp_path: Path) -> None:
    app, markers = _probe_app(tmp_path)
    digest = app_digest(app)
    node.trust("0" * 64)  # some other app is trusted; this one is not
    reply = _submit(node, app, tmp_path / "reply.json")

    assert not (markers / "imported").exists(), "the submitter's client module was imported"
    assert not (markers / "handled").exists(), "the submitter's query handler ran"
    assert reply["nodes"] == 1, reply
    assert isinstance(reply["replies"], list) and len(reply["replies"]) == 1, reply
    answer = reply["replies"][0]
    assert "probe" not in answer and "error" not in answer, answer
    # fedcore's built-in query handler answered with its description of the site: name, schema
    # fingerprint, features (under "site" in older fedcore; under "describe" where "site" carries the
    # answering site and its audit head)
    info = answer.get("describe", answer["site"])
    assert answer["site"]["site"] == info["site"] == "cleveland", answer
    assert info["schema"] and "age" in json.loads(str(info["features"])), answer
    # the digest the node saw for `flwr run APP` is app_digest(APP), and the gate said what it did
    lines = _gate_lines(node, digest)
    assert lines and all("running fedcore's built-in ClientApp" in ln for ln in lines), lines
    assert all("not in [node] trusted_apps" in ln for ln in lines), lines
    # the node never unpacked the untrusted FAB, and removed the process's private FLWR_HOME
    assert f"gate-probe.1.0.0.{digest[:8]}" not in node.node_log.read_text(errors="replace")
    assert node.leftover_homes() == []


def test_trusted_app_runs_its_own_client_app(node: Node, tmp_path: Path) -> None:
    app, markers = _probe_app(tmp_path)
    digest = app_digest(app)
    node.trust(digest)
    reply = _submit(node, app, tmp_path / "reply.json")

    assert (markers / "handled").exists(), f"the trusted app's query handler did not run: {reply}"
    assert reply["replies"] == [{"probe": {"from": "submitter"}}], reply
    lines = _gate_lines(node, digest)
    assert lines and all("running the FAB's own ClientApp" in ln for ln in lines), lines
    assert node.leftover_homes() == []


def test_unreadable_trust_list_fails_closed_with_an_error_reply(node: Node, tmp_path: Path) -> None:
    app, markers = _probe_app(tmp_path)
    digest = app_digest(app)
    node.site_file.write_text(f'{node.site_text}\n[node]\ntrusted_apps = ["{digest[:12]}"]\n')
    reply = _submit(node, app, tmp_path / "reply.json")

    assert list(markers.iterdir()) == [], "the submitter's client code ran"
    assert isinstance(reply["replies"], list) and len(reply["replies"]) == 1, reply
    answer = reply["replies"][0]
    assert "site" not in answer and "probe" not in answer, answer  # neither ClientApp answered
    assert "ConfigError" in answer["reason"] and "not a sha256 hex digest" in answer["reason"], answer
    lines = _gate_lines(node, digest)
    assert lines and all("refusing to run any ClientApp" in ln for ln in lines), lines
