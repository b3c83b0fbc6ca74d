"""A real site that served real jobs, for the console's tests: what `fedcore node` leaves on disk.

The site's data is a copy of Cleveland's with one canary row whose values occur nowhere else; the copy
is deleted once the jobs ran, so a console that needed the data (or showed a row) fails its tests.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedcore.cli.console import add_console_commands
from fedcore.config import load_site
from fedcore.console import SiteReader
from fedcore.errors import FedcoreError
from tests.adversarial.coordinator import DEFAULT_POLICY, SHARED, Coordinator, job, make_site, statistics

with warnings.catch_warnings():  # its import warns: Starlette 1.x prefers httpx2 (httpx, through flwr,
    warnings.simplefilter("ignore")  # still works), and it names an alias anyio deprecated
    from starlette.testclient import TestClient

CANARY = ("131.4159265", "577.2718281")  # trestbps and chol of one row: nothing else holds these digits
HOSTILE_ID = '<img src=x onerror="alert(1)">|`**x**`'


@dataclass(frozen=True)
class Site:
    site_file: Path
    state_dir: Path
    data_file: Path

    def reader(self, curve_seconds: float = 600.0) -> SiteReader:
        return SiteReader(load_site(self.site_file), self.state_dir, curve_seconds=curve_seconds)

    def ledger_json(self, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
        """What `fedcore ledger SITE --json` prints."""
        from fedcore.cli import main

        capsys.readouterr()
        assert main(["ledger", str(self.site_file), "--state-dir", str(self.state_dir), "--json"]) == 0
        out: dict[str, Any] = json.loads(capsys.readouterr().out)
        return out


def client(app: Any, host: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url=f"http://{host}")


def build_site(root: Path) -> Site:
    """Run a small DP training job (2 rounds, DP evaluations), a statistics batch, a cancelled job and
    two refused ones (one with a hostile id) against a real site, through fedcore's ClientApp."""
    data = root / "cleveland.data"
    rows = (SHARED / "data" / "heart_disease" / "processed.cleveland.data").read_text()
    data.write_text(rows + f"58.0,1.0,4.0,{CANARY[0]},{CANARY[1]},0.0,2.0,150.0,0.0,1.0,2.0,0.0,3.0,1\n")
    site_file = make_site(root, DEFAULT_POLICY + 'evaluation = "dp"\n')
    text = site_file.read_text()
    site_file.write_text(text.replace(text.split("path = ")[1].split("\n")[0], json.dumps(str(data))))
    c = Coordinator(site_file, root / "state")
    request = job("dp", "job.rounds=2", "train.local_steps=2", job_id="train-1")
    assert c.admit(request)["accepted"]
    arrays = c.model(request)
    for server_round in (1, 2):
        c.train(request, server_round, arrays)
        c.evaluate(request, server_round, arrays)
    stats = statistics({"name": "positives", "stat": "count", "where": "num > 0", "epsilon": 0.5})
    assert c.admit_statistics(stats)["accepted"]
    c.answer(stats)
    assert c.admit(job("dp", job_id="cancelled-1"))["accepted"]
    assert c.cancel("cancelled-1") == "cancelled"
    assert not c.admit(job("dp", job_id="refused-1", num_sites=1))["accepted"]
    assert not c.admit(job("dp", job_id=HOSTILE_ID, num_sites=1))["accepted"]
    data.unlink()  # the console must not need the data
    return Site(site_file, root / "state", data)


def run_command(argv: list[str]) -> int:
    """``fedcore ARGV`` through the console's own subcommands, as cli.main runs them (one clean line)."""
    parser = argparse.ArgumentParser(prog="fedcore")
    add_console_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FedcoreError as err:
        print(f"fedcore: error: {err}")
        return 2
