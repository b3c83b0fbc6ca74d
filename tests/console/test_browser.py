"""The console in a real headless Chromium: its figures are `fedcore ledger --json`'s, beyond
loopback nothing is served without the token, and an operator approves one job and denies another.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and the ``selenium`` package (the dev extras); skipped, saying so, only where the browser is missing.
The console runs as ``fedcore console`` does, in its own process, on a free port.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedcore.site.ledger import PrivacyLedger
from tests.adversarial.coordinator import DEFAULT_POLICY, Coordinator, job, make_site
from tests.console.served_site import Site

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
RUN = "import sys; from tests.console.served_site import run_command; sys.exit(run_command(sys.argv[1:]))"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.skip("no Chromium here: apt-get install -y chromium chromium-driver")
    from selenium import webdriver  # in the dev extras: missing, the test fails (only the browser may be)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="fedcore-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def follow(d: Any, element: Any, path: str) -> None:
    """Click a link or submit button and wait for the page it leads to (a click returns before the
    browser has navigated; reading the old page then is a race a loaded machine loses)."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_element("tag name", "html")
    element.click()
    wait = WebDriverWait(d, 60)
    wait.until(ec.staleness_of(old))
    wait.until(
        lambda drv: (
            drv.current_url.endswith(path) and drv.execute_script("return document.readyState") == "complete"
        )
    )


@contextmanager
def console(site: Site, *extra: str) -> Iterator[list[str]]:
    """``fedcore console SITE --port 0 EXTRA`` in its own process; yields what it printed first."""
    argv = ["console", str(site.site_file), "--state-dir", str(site.state_dir), "--port", "0", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip()]
        assert lines[0].startswith("fedcore console of site '") and ": http://" in lines[0], lines
        lines += [proc.stdout.readline().strip() for _ in range(2 if "--host" in extra else 1)]
        yield lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _value(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).get_attribute("data-value"))


def test_console_in_chromium(served: Site, browser: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    ledger = served.ledger_json(capsys)
    spent = ledger["datasets"][0]["spent_epsilon"]
    with console(served) as lines:
        url = lines[0].rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        d.get(url)
        for _ in range(20):  # the spending curve is composed over a few reads under a busy CPU
            if "still lacks" not in d.find_element(By.TAG_NAME, "main").text:
                break
            d.refresh()
        assert float(_value(d, 'td[data-field="spent_epsilon"]')) == spent  # the exact float, printed by repr
        assert (
            float(_value(d, 'td[data-field="remaining_epsilon"]'))
            == ledger["datasets"][0]["remaining_epsilon"]
        )
        assert d.find_element(By.ID, "audit-head").text == ledger["audit_head"]
        dots = d.find_elements(By.CSS_SELECTOR, "svg.chart circle.dot")
        assert len(dots) == ledger["datasets"][0]["num_charges"]
        header = d.find_element(By.TAG_NAME, "header")
        assert header.value_of_css_property("background-color") == "rgba(255, 255, 255, 1)"  # CSS loaded
        follow(d, d.find_element(By.LINK_TEXT, "Jobs"), "/jobs")
        row = d.find_element(By.CSS_SELECTOR, 'tr[data-job="train-1"]')
        assert row.get_attribute("data-state") == "finished"
        rw = PrivacyLedger(served.state_dir / "cleveland" / "ledger.db", site="cleveland")
        charged = rw.job_charge("train-1")
        assert charged is not None
        assert float(_value(row, 'td[data-field="charged_epsilon"]')) == charged[0]
        follow(d, row.find_element(By.LINK_TEXT, "train-1"), "job?id=train-1")
        assert d.find_element(By.ID, "job-id").text == "train-1"
        assert len(d.find_elements(By.CSS_SELECTOR, "#releases tbody tr")) == 4
        follow(d, d.find_element(By.LINK_TEXT, "Audit chain"), "/audit")
        assert d.find_element(By.ID, "chain-status").get_attribute("data-ok") == "true"
        assert d.find_element(By.ID, "head").text == ledger["audit_head"]


def test_beyond_loopback_chromium_gets_nothing_without_the_token(served: Site, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    with console(served, "--host", "0.0.0.0") as lines:
        port = lines[0].rsplit(":", 1)[1].strip("/")
        assert lines[1].startswith("token (shown once, keep it): ")
        token = lines[1].rsplit(" ", 1)[1]
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/jobs", "/api/budget", "/audit/records.jsonl", "/static/console.css"):
            d.get(base + path)
            body = d.find_element(By.TAG_NAME, "body").text
            assert body.startswith("401: this console needs its token") and "spent" not in body, path
        d.get(f"{base}/?token={token}")
        assert d.current_url == f"{base}/"  # the token left the address bar
        assert _value(d, 'td[data-field="spent_epsilon"]')
        d.get(f"{base}/jobs")  # the cookie carries the token from now on
        assert d.find_element(By.CSS_SELECTOR, 'tr[data-job="train-1"]')


def test_an_operator_approves_one_job_and_denies_another_in_chromium(
    tmp_path: Path, browser: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Manual approval end to end: two jobs wait; in the console the operator approves one and
    denies the other; the site then runs the approved one and refuses the denied one, which charges
    nothing; ledger, audit log and console agree."""
    from selenium.webdriver.common.by import By

    from fedcore.cli import main

    site_file = make_site(tmp_path, DEFAULT_POLICY + '\n[node]\napproval = "manual"\n')
    c = Coordinator(site_file, tmp_path / "state")
    approve = job("dp", "job.rounds=1", "train.local_steps=2", job_id="approve-me")
    deny = job("dp", "job.rounds=1", "train.local_steps=2", job_id="deny-me")
    for request in (approve, deny):
        assert not c.admit(request)["accepted"]
    site = Site(site_file, tmp_path / "state", tmp_path / "unused")
    d = browser
    with console(site) as lines:
        url, token_url = lines[0].rsplit(" ", 1)[1], lines[1].rsplit(" ", 1)[1]
        assert token_url.startswith(f"{url}?token=")
        d.get(url + "jobs")
        assert len(d.find_elements(By.CSS_SELECTOR, "div.request")) == 2
        assert not d.find_elements(By.CSS_SELECTOR, "form.decide")  # reading needs no token, deciding does
        d.get(token_url)
        assert d.current_url == url  # the token traded for a cookie, gone from the address bar
        for job_id, name, reason, button in (
            ("approve-me", "Dr Ana Lima", "", "approve"),
            ("deny-me", "dpo", "outside the consent", "deny"),
        ):
            d.get(url + "jobs")
            form = d.find_element(By.CSS_SELECTOR, f'form.decide[data-job="{job_id}"]')
            form.find_element(By.NAME, "operator").send_keys(name)
            form.find_element(By.NAME, "reason").send_keys(reason)
            follow(d, form.find_element(By.CSS_SELECTOR, f"button.{button}"), f"job?id={job_id}")
            assert d.current_url == f"{url}job?id={job_id}"  # the decision taken, its job's page shown
            status = "approved" if button == "approve" else "denied"
            assert d.find_element(By.ID, "approval").get_attribute("data-status") == status
            assert d.find_element(By.ID, "decided-by").text == name
        assert c.admit(approve)["accepted"]  # the coordinator asks again
        c.train(approve, 1, c.model(approve))
        c.evaluate(approve, 1, c.model(approve))
        refused = c.admit(deny)
        assert not refused["accepted"] and "denied by its operator dpo" in refused["reason"]
        ledger = site.ledger_json(capsys)
        assert {ch["job_id"] for ch in ledger["charges"]} == {"approve-me"}  # the denied job: nothing
        d.get(url)
        assert (
            float(_value(d, 'td[data-field="spent_epsilon"]')) == ledger["datasets"][0]["spent_epsilon"] > 0
        )
        d.get(url + "jobs")
        states = {
            r.get_attribute("data-job"): r.get_attribute("data-state")
            for r in d.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")
        }
        assert states == {"approve-me": "finished", "deny-me": "denied"}
    assert main(["audit", "verify", str(site_file), "--state-dir", str(tmp_path / "state")]) == 0
    decisions = [
        (r.kind, r.actor, r.job_id, r.released)
        for r in c.site.guard.audit.records()
        if r.kind in ("approve", "deny")
    ]
    assert decisions == [
        ("approve", "Dr Ana Lima", "approve-me", "approved (console)"),
        ("deny", "dpo", "deny-me", "denied (console): outside the consent"),
    ]
