"""The per-site ledger: composition, budget rules, atomic charging, fail-closed files."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from fedcore.errors import BudgetExceededError, LedgerError, PolicyError
from fedcore.privacy.accounting import dpsgd_event, epsilon, gaussian_event
from fedcore.site.ledger import PrivacyLedger

DELTA = 1e-5
ROUND = gaussian_event(noise_multiplier=3.0)
SMALL = gaussian_event(noise_multiplier=10.0)  # ~17 fit in epsilon 2


def _ledger(tmp_path: Path, eps: float = 2.0) -> PrivacyLedger:
    ledger = PrivacyLedger.create(tmp_path / "site-a" / "ledger.sqlite", site="site-a")
    ledger.set_budget("heart", epsilon=eps, delta=DELTA)
    return ledger


def _max_fitting(event: object, eps: float) -> int:
    k = 0
    while epsilon([event] * (k + 1), delta=DELTA) <= eps:  # type: ignore[list-item]
        k += 1
    return k


def test_created_explicitly_private_and_reopened(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"no privacy ledger .*`fedcore ledger SITE_FILE --init`"):
        PrivacyLedger(tmp_path / "site-a" / "ledger.sqlite", site="site-a")
    ledger = _ledger(tmp_path)
    assert ledger.path.stat().st_mode & 0o777 == 0o600
    assert ledger.path.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(LedgerError, match="never replaced"):
        PrivacyLedger.create(ledger.path, site="site-a")
    ledger.charge("heart", "job-1", [ROUND])
    again = PrivacyLedger(ledger.path, site="site-a")
    assert again.spent("heart")[0] == pytest.approx(epsilon([ROUND], delta=DELTA))
    with pytest.raises(LedgerError, match="belongs to site 'site-a'"):
        PrivacyLedger(ledger.path, site="site-b")


def test_spent_composes_stored_events(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, eps=50.0)
    sgd = dpsgd_event(noise_multiplier=1.0, sample_rate=0.05, steps=50)
    ledger.charge("heart", "job-1", [ROUND, ROUND])
    ledger.charge("heart", "job-2", [sgd])
    spent, delta = ledger.spent("heart")
    assert delta == DELTA
    assert spent == pytest.approx(epsilon([ROUND, ROUND, sgd], delta=DELTA), rel=1e-6)
    separately = epsilon([ROUND, ROUND], delta=DELTA) + epsilon([sgd], delta=DELTA)
    assert spent < separately
    assert ledger.remaining("heart")[0] == pytest.approx(50.0 - spent)


def test_check_then_charge_and_refusal(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    k = _max_fitting(ROUND, 2.0)
    assert k >= 2
    for i in range(k):
        decision = ledger.check("heart", [ROUND])
        assert decision.allowed, decision.reason
        ledger.charge("heart", f"job-{i}", [ROUND])
    decision = ledger.check("heart", [ROUND])
    assert not decision.allowed and decision.projected_epsilon > 2.0
    with pytest.raises(BudgetExceededError, match=r"job 'too-much' refused.*left"):
        ledger.charge("heart", "too-much", [ROUND])
    assert len(ledger.summary().charges) == k
    assert ledger.spent("heart")[0] <= 2.0


def test_budget_rules(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, eps=2.0)
    ledger.set_budget("heart", epsilon=2.0, delta=DELTA)  # same: no-op
    ledger.set_budget("heart", epsilon=1.0, delta=DELTA)  # lowering: allowed
    with pytest.raises(PolicyError, match="must be explicit"):
        ledger.set_budget("heart", epsilon=3.0, delta=DELTA)
    with pytest.raises(PolicyError, match="must be explicit"):
        ledger.set_budget("heart", epsilon=1.0, delta=1e-3)
    ledger.set_budget("heart", epsilon=3.0, delta=DELTA, allow_increase=True)
    assert ledger.summary().datasets[0].budget_epsilon == 3.0
    with pytest.raises(PolicyError, match=r"epsilon.*delta"):
        ledger.set_budget("heart", epsilon=-1.0, delta=2.0)
    with pytest.raises(PolicyError, match="no privacy budget for dataset 'other'"):
        ledger.charge("other", "job", [ROUND])


def test_lowered_budget_below_spent_refuses_everything(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, eps=5.0)
    ledger.charge("heart", "job", [ROUND])
    ledger.set_budget("heart", epsilon=0.1, delta=DELTA)
    assert ledger.remaining("heart")[0] == 0.0
    with pytest.raises(BudgetExceededError):
        ledger.charge("heart", "job-2", [gaussian_event(noise_multiplier=100.0)])


def test_summary(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.set_budget("fraud", epsilon=1.0, delta=1e-6)
    ledger.charge("heart", "job-1", [ROUND])
    summary = ledger.summary()
    assert summary.site == "site-a"
    assert [d.dataset for d in summary.datasets] == ["fraud", "heart"]
    heart = summary.datasets[1]
    assert heart.num_charges == 1 and heart.remaining_epsilon == pytest.approx(2.0 - heart.spent_epsilon)
    assert summary.charges[0].job_id == "job-1"
    assert summary.datasets[0].spent_epsilon == 0.0


def _charge_loop(path: str, n: int, name: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    ledger = PrivacyLedger(path, site="site-a")
    accepted = 0
    for i in range(n):
        try:
            ledger.charge("heart", f"{name}-{i}", [SMALL])
            accepted += 1
        except BudgetExceededError:
            pass
    out.put(accepted)


def test_two_processes_never_overspend(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, eps=2.0)
    k = _max_fitting(SMALL, 2.0)
    assert k >= 10
    ctx = mp.get_context("spawn")  # fork after BLAS/torch threads started can deadlock the child
    out = ctx.Queue()
    procs = [ctx.Process(target=_charge_loop, args=(str(ledger.path), k, name, out)) for name in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    accepted = out.get() + out.get()
    assert accepted == k  # 2k attempts, exactly k fit
    assert len(ledger.summary().charges) == k
    assert ledger.spent("heart")[0] <= 2.0


def test_garbage_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(LedgerError, match=r"ledger.sqlite.*restore this file from a backup"):
        PrivacyLedger(path, site="site-a")


def test_empty_file_is_not_treated_as_new(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"")
    with pytest.raises(LedgerError, match="table 'meta'"):
        PrivacyLedger(path, site="site-a")


def test_missing_table_fails_closed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("DROP TABLE charges")
    conn.close()
    with pytest.raises(LedgerError, match="table 'charges'"):
        PrivacyLedger(ledger.path, site="site-a")


def test_unparseable_event_fails_closed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.charge("heart", "job-1", [ROUND])
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("DROP TRIGGER charges_no_update")
        conn.execute('UPDATE charges SET event_json = \'{"type": "gauss\' WHERE id = 1')
    conn.close()
    reopened = PrivacyLedger(ledger.path, site="site-a")
    for call in (
        lambda: reopened.spent("heart"),
        lambda: reopened.check("heart", [ROUND]),
        lambda: reopened.charge("heart", "job-2", [ROUND]),
    ):
        with pytest.raises(LedgerError, match="charge id 1 has an unreadable event"):
            call()


def test_charges_are_append_only(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.charge("heart", "job-1", [ROUND])
    with sqlite3.connect(ledger.path) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM charges")
    conn.close()
