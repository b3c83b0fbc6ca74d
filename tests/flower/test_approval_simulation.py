"""Manual approval through Flower's simulation engine: the coordinator waits for a site whose operator
approves each job; `fedcore approve` lets the job run; a job that operator denies, or does not decide
within the job's admission_wait, runs nowhere and charges no site anything (every ledger unchanged,
no reservation left)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedcore.cli import main
from fedcore.config import load_site
from fedcore.errors import PolicyError
from fedcore.harness.runner import run_app
from fedcore.site.approvals import ApprovalBook
from fedcore.site.guard import state_paths
from fedcore.site.ledger import PrivacyLedger

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parents[2] / "examples" / "medical"
SITES = ("cleveland", "hungary", "switzerland", "va")
SETS = ["train.local_steps=2", "job.admission_wait=300"]


def _app(tmp_path: Path) -> Path:
    """The medical app, its data paths absolute, Cleveland's operator approving every job."""
    app = tmp_path / "medical"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for f in (app / "sites").glob("*.toml"):
        text = f.read_text().replace("../../../../shared", str(APP.parents[2] / "shared"))
        f.write_text(text + ('\n[node]\napproval = "manual"\n' if f.stem == "cleveland" else ""))
    return app


@contextmanager
def operator(site_file: Path, state: Path, *decision: str) -> Iterator[list[tuple[str, int, float]]]:
    """Cleveland's operator, beside the running job: waits for its pending request, then runs
    ``fedcore DECISION SITE JOB_ID ...``; yields (job id, exit code, seconds waited)."""
    done: list[tuple[str, int, float]] = []
    ledger_file = state_paths(load_site(site_file), state).ledger
    stop = threading.Event()

    def watch() -> None:
        started = time.monotonic()
        while not stop.is_set():
            pending = []
            if ledger_file.is_file():
                pending = ApprovalBook(PrivacyLedger(ledger_file, site="cleveland", read_only=True)).pending()
            if pending:
                code = main(
                    [decision[0], str(site_file), pending[0].job_id, "--state-dir", str(state), *decision[1:]]
                )
                done.append((pending[0].job_id, code, time.monotonic() - started))
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=60)


def _ledgers(app: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = {}
    for site in SITES:
        capsys.readouterr()
        assert main(["ledger", str(app / "sites" / f"{site}.toml"), "--state-dir", str(state), "--json"]) == 0
        out[site] = json.loads(capsys.readouterr().out)
    return out


def test_a_job_waits_for_approval_and_a_denied_one_charges_no_site(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _app(tmp_path)
    cleveland = app / "sites" / "cleveland.toml"
    first, state = tmp_path / "approved", tmp_path / "approved" / "sites"
    with operator(cleveland, state, "approve", "--as", "Dr Ana Lima") as approved:
        run_app(app, job="dp", out_dir=first, rounds=1, sets=SETS, baselines=False)
    assert [code for _, code, _ in approved] == [0]
    admission = json.loads((first / "admission.json").read_text())
    assert all(admission[s]["accepted"] for s in SITES)
    ledgers = _ledgers(app, state, capsys)
    job_id = approved[0][0]
    for site in SITES:  # the job ran at every site: each charged for it
        assert {c["job_id"] for c in ledgers[site]["charges"]} == {job_id}, site
    records = PrivacyLedger(state_paths(load_site(cleveland), state).ledger, site="cleveland")
    audit = [(r.kind, r.actor) for r in _audit(cleveland, state) if r.job_id == job_id]
    assert audit[:3] == [("request", "coordinator"), ("approve", "Dr Ana Lima"), ("admit", "coordinator")]
    assert records.job_charge(job_id) is not None

    deny = ("deny", "--as", "dpo", "--reason", "not this study")
    denied_run = tmp_path / "denied"
    with (
        operator(cleveland, state, *deny) as denied,
        pytest.raises(PolicyError, match="refused, nothing was run") as refused,
    ):
        run_app(app, job="dp", out_dir=denied_run, rounds=1, sets=SETS, baselines=False, state=state)
    assert [code for _, code, _ in denied] == [0]
    assert "was denied by its operator dpo" in str(refused.value) and "not this study" in str(refused.value)
    after = _ledgers(app, state, capsys)
    for site in SITES:  # no site charged anything for the denied job, and none holds budget for it
        assert after[site]["charges"] == ledgers[site]["charges"], site
        guard_ledger = PrivacyLedger(
            state_paths(load_site(app / "sites" / f"{site}.toml"), state).ledger, site=site
        )
        assert (
            guard_ledger.check("heart_disease", []).spent_epsilon
            == after[site]["datasets"][0]["spent_epsilon"]
        )

    # nobody decides: at its admission_wait the coordinator counts Cleveland as refusing and cancels
    with pytest.raises(PolicyError, match="no decision from the site's operator within 2 s") as late:
        run_app(app, job="dp", out_dir=tmp_path / "late", rounds=1, sets=["job.admission_wait=2"],
                baselines=False, state=state)  # fmt: skip
    assert "refused, nothing was run" in str(late.value)
    book = ApprovalBook(PrivacyLedger(state_paths(load_site(cleveland), state).ledger, site="cleveland"))
    expired = [r for r in book.all() if r.status == "expired"]
    assert len(expired) == 1 and expired[0].decided_by == "coordinator"  # told to cancel: it expired
    last = _ledgers(app, state, capsys)
    for site in SITES:  # and charged nobody
        assert (last[site]["charges"], last[site]["datasets"]) == (
            after[site]["charges"],
            after[site]["datasets"],
        )


def _audit(site_file: Path, state: Path) -> list[Any]:
    from fedcore.site.audit import AuditLog

    return AuditLog(state_paths(load_site(site_file), state).audit, read_only=True).records()
