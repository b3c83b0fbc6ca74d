"""A release is one ledger transaction (charge + release row + audit anchor) around the audit append,
and a site reuses one model across messages: a crash inside the release loses and doubles nothing,
and a reused model trains exactly as a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedcore.config.site import load_site
from fedcore.site.guard import SiteGuard
from tests.adversarial.coordinator import Coordinator, Refused, job, make_site

REPO = Path(__file__).resolve().parents[2]

CRASH = """
import os, sys
from pathlib import Path
from fedcore.site.audit import AuditLog
from tests.adversarial.coordinator import Coordinator, job

append = AuditLog.append

def append_then_die(self, **kw):
    rec = append(self, **kw)  # committed in the audit log
    if kw["kind"] == "release":
        os._exit(3)  # the site stops before the ledger's commit
    return rec

site_file, state = Path(sys.argv[1]), Path(sys.argv[2])
c = Coordinator(site_file, state)
assert c.admit(job("dp"))["accepted"]
AuditLog.append = append_then_die
c.train(job("dp"), 1, c.model(job("dp")))
"""


def _kinds(guard: SiteGuard) -> list[str]:
    return [r.kind for r in guard.audit.records()]


def test_a_site_stopped_inside_a_release_charged_nothing_and_pays_once_after(tmp_path: Path) -> None:
    site_file, state = make_site(tmp_path), tmp_path / "state"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASH))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(script), str(site_file), str(state)], env=env, capture_output=True, timeout=120
    )
    assert run.returncode == 3, run.stderr.decode()[-2000:]

    guard = SiteGuard(load_site(site_file), state)  # opens: the anchor (one record behind) is accepted
    assert _kinds(guard)[-2:] == ["admit", "release"]  # the audit line committed before the crash
    assert guard.ledger.job_charge("job-1") is None  # ... but the ledger charged nothing
    plan = guard.plans.plan("job-1")
    assert plan is not None and plan.status == "reserved"
    assert not guard.plans.answered("job-1", "train", 1)
    assert guard.ledger.audit_head()[0] == len(guard.audit.records()) - 1

    c = Coordinator(site_file, state, init=False)  # the site restarts; the coordinator asks again
    first, _ = c.train(job("dp"), 1, c.model(job("dp")))
    charged = c.site.guard.ledger.job_charge("job-1")
    assert charged is not None and charged[0] > 0
    again, _ = c.train(job("dp"), 1, c.model(job("dp")))  # asked again: the stored reply, not recomputed
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert _kinds(c.site.guard)[-1] == "replay"
    assert c.site.guard.ledger.job_charge("job-1") == charged  # charged once
    assert c.site.guard.ledger.audit_head() == c.site.guard.audit.head()  # anchored in the same commit
    assert [r.epsilon > 0 for r in c.site.guard.audit.records() if r.kind == "release"] == [True, True]


def test_a_reused_model_trains_and_scores_as_a_fresh_one(tmp_path: Path) -> None:
    sites = [Coordinator(make_site(tmp_path / n), tmp_path / n / "state") for n in ("a", "b")]
    request = job("fedavg", "job.rounds=3")
    for c in sites:
        assert c.admit(request)["accepted"]
    start = sites[0].model(request, seed=3)
    for c in sites:
        c.train(request, 1, start)
        c.evaluate(request, 1, start)
    reused, fresh = sites
    assert reused.site._models  # the model is kept between messages
    fresh.site._models.clear()
    a_delta, a_metrics = reused.train(request, 2, start)
    fresh.site._models.clear()
    b_delta, b_metrics = fresh.train(request, 2, start)
    assert all(np.array_equal(x, y) for x, y in zip(a_delta, b_delta, strict=True))
    assert a_metrics["train_loss"] == b_metrics["train_loss"]
    fresh.site._models.clear()
    assert reused.evaluate(request, 2, start) == fresh.evaluate(request, 2, start)


def test_a_model_whose_message_failed_is_not_reused(tmp_path: Path) -> None:
    c = Coordinator(make_site(tmp_path), tmp_path / "state")
    request = job("fedavg")
    assert c.admit(request)["accepted"]
    good = c.model(request)
    c.train(request, 1, good)
    bad = tuple(np.full_like(a, np.nan) for a in good)
    with pytest.raises(Refused, match="NaN or inf"):
        c.evaluate(request, 1, bad)
    assert not c.site._models
