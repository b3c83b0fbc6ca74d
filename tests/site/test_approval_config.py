"""Manual approval's keys parse strictly, with the defaults the docs state; the operator's name is checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedcore.analytics.query import parse_queries
from fedcore.config import load_job, load_site
from fedcore.config.job import ADMISSION_WAIT
from fedcore.errors import ConfigError
from fedcore.flower.protocol import ADMISSION_POLL
from fedcore.site.approval_gate import operator_name
from tests.adversarial.coordinator import DEFAULT_POLICY, MEDICAL, make_site

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_defaults_are_what_the_docs_say(tmp_path: Path) -> None:
    site = load_site(make_site(tmp_path))
    assert (site.approval, site.approval_timeout_hours) == ("auto", 24.0)
    assert load_job(MEDICAL / "jobs" / "dp.toml").admission_wait == ADMISSION_WAIT == 300.0
    batch = parse_queries({"query": [{"name": "n", "stat": "count", "epsilon": 1.0}]}, "t")
    assert batch.admission_wait == ADMISSION_WAIT
    privacy = (DOCS / "privacy.md").read_text()
    assert f"every {ADMISSION_POLL:g} s until the job's `[job] admission_wait`" in privacy
    assert f"(default {ADMISSION_WAIT:g} s;" in privacy and "`approval_timeout_hours` (default 24)" in privacy
    site_doc = (DOCS / "site-file.md").read_text()
    assert "| `approval` | string ('auto' \\| 'manual') | `\"auto\"` |" in site_doc


def test_bad_values_are_one_clean_line_naming_the_key(tmp_path: Path) -> None:
    bad = DEFAULT_POLICY + '\n[node]\napproval = "manul"\napproval_timeout_hours = 0\n'
    with pytest.raises(ConfigError) as err:
        load_site(make_site(tmp_path, bad))
    text = str(err.value)
    assert "approval: must be one of 'auto', 'manual', got 'manul' (did you mean 'manual'?)" in text
    assert "approval_timeout_hours: must be > 0, got 0" in text
    with pytest.raises(ConfigError, match=r"admission_wait: must be >= 0, got -1"):
        load_job(MEDICAL / "jobs" / "dp.toml", ["job.admission_wait=-1"])
    assert load_job(MEDICAL / "jobs" / "dp.toml", ["job.admission_wait=0"]).admission_wait == 0.0


def test_the_operators_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert operator_name("  Dr Ana Lima ") == "Dr Ana Lima"
    for bad in ("", "   ", "a\nb", "x" * 81, "tab\there"):
        with pytest.raises(ConfigError, match="1 to 80 printable characters"):
            operator_name(bad)
    monkeypatch.setitem(os.environ, "LOGNAME", "dpo-on-duty")
    monkeypatch.setitem(os.environ, "USER", "dpo-on-duty")
    assert operator_name(None) == "dpo-on-duty"  # the OS user (getpass)
