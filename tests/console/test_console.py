"""The site's console against a real site after real jobs: same figures as the CLI, no data row."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedcore.console import create_app
from fedcore.console.curve import curve_grid
from fedcore.console.state import SiteReader
from fedcore.console.statement import write_statement
from fedcore.privacy.accounting import epsilon, event_from_json
from fedcore.site.ledger import PrivacyLedger
from tests.console.served_site import CANARY, HOSTILE_ID, Site, client, run_command

PAGES = ["/", "/jobs", "/audit", "/api/budget", "/api/jobs", "/api/audit", "/audit/records.jsonl"]


def _job_pages(site: Site) -> list[str]:
    from urllib.parse import quote

    ids = [j.job_id for j in site.reader().jobs()]
    return [f"{p}?id={quote(i)}" for i in ids for p in ("/job", "/api/job")] + [
        f"/statement?id={quote(i)}&format={f}" for i in ids for f in ("md", "html")
    ]


def test_budget_equals_fedcore_ledger_json(served: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = served.ledger_json(capsys)
    page = client(create_app(served.reader())).get("/api/budget")
    assert page.status_code == 200
    got = page.json()
    assert got["site"] == ledger["site"] == "cleveland" and got["audit_head"] == ledger["audit_head"]
    (mine,), (theirs,) = got["datasets"], ledger["datasets"]
    for key in ("dataset", "budget_epsilon", "delta", "spent_epsilon", "remaining_epsilon", "num_charges"):
        assert mine[key] == theirs[key], key  # exactly: the same function on the same rows
    assert theirs["spent_epsilon"] > 1.0 and theirs["num_charges"] == 5  # 2 train, 2 evaluate, 1 statistic
    assert mine["reserved_epsilon"] == 0.0 and mine["available_epsilon"] == mine["remaining_epsilon"]
    html = client(create_app(served.reader())).get("/").text
    assert f'data-field="spent_epsilon" data-value="{theirs["spent_epsilon"]!r}"' in html


def test_spending_curve_composes_the_charges_in_order(
    served: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = served.ledger_json(capsys)
    points = served.reader().budget().spending["heart_disease"]
    charges = ledger["charges"]
    assert [p.charge_id for p in points] == [c["id"] for c in charges]
    assert points[-1].epsilon == ledger["datasets"][0]["spent_epsilon"]
    events = [event_from_json(c["event_json"]) for c in charges]
    for k, p in enumerate(points, 1):  # each point: what the ledger said right after that charge
        assert p.epsilon == epsilon(events[:k], delta=1e-5)
    assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(points))
    svg = client(create_app(served.reader())).get("/").text
    assert svg.count('<circle class="dot"') == len(points) and "<script" not in svg


def test_a_slow_curve_comes_in_later_reads_never_approximated(served: Site) -> None:
    reader = served.reader(curve_seconds=0.0)  # no time to compose: only the ledger's own figure
    first = reader.budget()
    (point,) = first.spending["heart_disease"]
    assert point.epsilon == first.datasets[0].spent_epsilon and first.curve_pending == {"heart_disease": 4}
    assert any("still lacks 4 of its points" in note for note in first.notes)
    reader.curve_seconds = 600.0
    full = reader.budget()
    assert len(full.spending["heart_disease"]) == 5 and full.curve_pending == {"heart_disease": 0}
    reader.curve_seconds = 0.0  # composed points are kept: nothing left to compose
    assert reader.budget().spending == full.spending


def test_curve_grid_is_bounded_and_stable_as_charges_accrue() -> None:
    assert curve_grid(0) == [] and curve_grid(5) == [1, 2, 3, 4, 5]
    assert curve_grid(64) == list(range(1, 65))
    strides = []
    for n in range(1, 2000, 7):
        ks = curve_grid(n)
        stride = ks[0]
        assert ks[-1] == n and len(ks) <= 65 and stride & (stride - 1) == 0  # a power of two
        assert ks[:-1] == list(range(stride, n + 1, stride))[: len(ks) - 1]
        strides.append(stride)
    assert strides == sorted(strides)  # a stride only grows: a point once drawn is reused until it doubles


def test_jobs_state_plan_releases_and_charge(served: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = served.ledger_json(capsys)
    jobs = {j["job_id"]: j for j in client(create_app(served.reader())).get("/api/jobs").json()["jobs"]}
    assert {k: j["state"] for k, j in jobs.items()} == {
        "train-1": "finished", "stats-1": "finished", "cancelled-1": "cancelled",
        "refused-1": "refused", HOSTILE_ID: "refused",
    }  # fmt: skip
    train = jobs["train-1"]
    assert train["kind"] == "training" and train["mechanisms"] == ["dpsgd"] and train["rounds"] == 2
    assert train["requested_by"] == ["coordinator"] and len(train["digest"]) == 64
    mine = [c for c in ledger["charges"] if c["job_id"] == "train-1"]
    assert [(r["kind"], r["round"]) for r in train["releases"]] == [
        ("train", 1), ("evaluate", 1), ("train", 2), ("evaluate", 2),
    ]  # fmt: skip
    assert [r["epsilon"] for r in train["releases"]] == [c["epsilon"] for c in mine]  # each release's charge
    rw = PrivacyLedger(served.state_dir / "cleveland" / "ledger.db", site="cleveland")
    assert (train["charged_epsilon"], train["charged_delta"]) == rw.job_charge("train-1")
    # every planned answer given: the charges compose to the plan (up to the PLD's composition order)
    assert train["charged_epsilon"] == pytest.approx(train["planned_epsilon"], rel=1e-6)
    assert jobs["stats-1"]["kind"] == "statistics" and jobs["stats-1"]["mechanisms"] == ["positives"]
    assert jobs["cancelled-1"]["charged_epsilon"] is None and jobs["cancelled-1"]["releases"] == []
    assert "min_sites" in jobs["refused-1"]["reason"] and jobs["refused-1"]["charged_epsilon"] is None


def test_no_data_row_anywhere_and_the_data_file_is_not_needed(served: Site) -> None:
    assert not served.data_file.exists()  # deleted after the jobs: the console reads state only
    c = client(create_app(served.reader()))
    for url in PAGES + _job_pages(served):
        body = c.get(url)
        assert body.status_code == 200, url
        for value in CANARY:
            assert value not in body.text and value[:7] not in body.text, (url, value)


def test_hostile_job_id_is_text_never_markup(served: Site) -> None:
    c = client(create_app(served.reader()))
    jobs = c.get("/jobs")
    assert "<img src=x" not in jobs.text and "&lt;img src=x onerror=" in jobs.text
    assert "script-src" not in jobs.headers["content-security-policy"]  # default-src 'none': no script
    md = c.get("/statement", params={"id": HOSTILE_ID, "format": "md"}).text
    assert "`<img src=x onerror=\"alert(1)\">\\|'**x**'`" in md  # a code span nothing can close
    html = c.get("/statement", params={"id": HOSTILE_ID, "format": "html"})
    assert "<img" not in html.text and html.headers["content-disposition"].startswith("attachment")


def test_audit_chain_is_the_audit_verify_check(
    served: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcore.cli import main

    chain = client(create_app(served.reader())).get("/api/audit").json()
    assert (
        chain["ok"] and chain["problems"] == [] and chain["head"] == served.ledger_json(capsys)["audit_head"]
    )
    assert main(["audit", "verify", str(served.site_file), "--state-dir", str(served.state_dir)]) == 0
    assert chain["head"] in capsys.readouterr().out.replace("\n", "")
    broken = tmp_path / "state"
    shutil.copytree(served.state_dir, broken)
    with sqlite3.connect(broken / "cleveland" / "audit.db") as conn:  # an insider edits one record
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("UPDATE records SET released = 'nothing to see' WHERE seq = 2")
    reader = SiteReader(served.reader().site, broken)
    view = client(create_app(reader)).get("/api/audit").json()
    assert not view["ok"] and "seq 2: hash mismatch" in view["problems"][0]
    assert main(["audit", "verify", str(served.site_file), "--state-dir", str(broken)]) == 2
    refused = client(create_app(reader)).get("/statement?id=train-1")
    assert refused.status_code == 503 and "broken audit log" in refused.text


def test_statement_says_what_when_under_which_plan_and_the_head(served: Site, tmp_path: Path) -> None:
    reader = served.reader()
    job = reader.job("train-1")
    out = tmp_path / "statement.md"
    assert run_command(["statement", str(served.site_file), "train-1", "--state-dir", str(served.state_dir),
                        "--out", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    head = reader.chain().head
    assert job.digest in text and head in text and f"--head {head}" in text
    for r in job.releases:
        assert f"| {r.time} | {r.kind} round {r.round} |" in text
    assert f"epsilon {job.charged_epsilon:.6g} at delta 1e-05" in text
    html = write_statement(reader, "train-1", fmt="html")
    assert job.digest in html and head in html and "<script" not in html


def test_cli_errors_are_one_clean_line(served: Site, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state-dir", str(served.state_dir)]
    assert run_command(["statement", str(served.site_file), "no-such-job", *state]) == 2
    out = capsys.readouterr().out
    assert (
        out.startswith("fedcore: error: site 'cleveland' has seen no job 'no-such-job'")
        and "Traceback" not in out
    )
    assert run_command(["statement", str(served.site_file), "train-1", "--state-dir", "/nonexistent"]) == 2
    assert "no privacy ledger at /nonexistent/cleveland/ledger.db" in capsys.readouterr().out


def test_views_are_frozen_and_json_round_trips(served: Site) -> None:
    view = served.reader().budget()
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.site = "other"  # type: ignore[misc]
    assert json.loads(json.dumps(client(create_app(served.reader())).get("/api/jobs").json()))
