"""``fedcore approve``, ``fedcore deny`` and ``fedcore requests``: the operator's decisions on the jobs
a site with ``[node] approval = "manual"`` holds for approval (``fedcore.site.approval_gate``).

Each decision is one audit record whose actor is the operator (``--as NAME``, default the OS user).
Bad input ends in one clean line (a ``FedcoreError`` the CLI prints), never a traceback.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

__all__ = ["add_approval_commands"]


def _decide(args: argparse.Namespace, *, approve: bool) -> int:
    from fedcore.config import load_site
    from fedcore.site.approval_gate import decide_job, operator_name

    by = operator_name(args.by)
    reason = " ".join(str(getattr(args, "reason", "") or "").split())
    rec = decide_job(load_site(args.site), args.state_dir, args.job_id, approve=approve, by=by, reason=reason)
    if approve:
        print(
            f"job {rec.job_id!r} approved by {rec.decided_by} at {rec.decided}: the site admits it "
            "(reserving its plan, budget permitting) when the coordinator next asks"
        )
    else:
        print(
            f"job {rec.job_id!r} denied by {rec.decided_by} at {rec.decided}"
            + (f" ({rec.reason})" if rec.reason else "")
            + ": the site refuses it; nothing was reserved or charged"
        )
    return 0


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, approve=True)


def _deny(args: argparse.Namespace) -> int:
    return _decide(args, approve=False)


def _requests(args: argparse.Namespace) -> int:
    from fedcore.config import load_site
    from fedcore.site.approvals import ApprovalBook
    from fedcore.site.guard import state_paths
    from fedcore.site.ledger import PrivacyLedger

    site = load_site(args.site)
    ledger = PrivacyLedger(state_paths(site, args.state_dir).ledger, site=site.name, read_only=True)
    book = ApprovalBook(ledger)
    shown = book.all() if args.all else book.pending()
    if args.json:
        print(json.dumps([asdict(r) | {"overdue": r.overdue()} for r in shown], indent=1))
        return 0
    if not shown:
        print(f"site {site.name!r}: no {'' if args.all else 'pending '}approval request")
    for r in shown:
        decided = (
            f", {r.decided_by} at {r.decided}" + (f": {r.reason}" if r.reason else "") if r.decided else ""
        )
        print(f"{r.job_id}  {r.status}{decided}  (asked {r.requested}, until {r.deadline_iso})\n  {r.text}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("site", type=Path, help="the site file")
    p.add_argument("--state-dir", type=Path, help="folder of the site's state (simulation: RUN_DIR/sites)")


def add_approval_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``approve``, ``deny`` and ``requests`` to the CLI's subparsers."""
    for name, func, text in (
        ("approve", _approve, "approve a job waiting for this site's approval (audited with your name)"),
        ("deny", _deny, "deny a job waiting for this site's approval (audited; charges nothing)"),
    ):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("job_id", help="the job's id (`fedcore requests SITE_FILE` lists them)")
        p.add_argument("--as", dest="by", metavar="NAME", help="who decides (default: your user name)")
        if name == "deny":
            p.add_argument("--reason", default="", help="why (shown to the coordinator and in the audit log)")
        p.set_defaults(func=func)
    req = sub.add_parser("requests", help="the jobs waiting for this site's approval ([node] approval)")
    _common(req)
    req.add_argument("--all", action="store_true", help="every request, decided ones too")
    req.add_argument("--json", action="store_true", help="as JSON")
    req.set_defaults(func=_requests)
