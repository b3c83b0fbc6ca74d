"""``fedcore keys|estimate|ledger|audit`` (``certs|node``: ``cli_deploy``): the site operator's commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedcore.errors import AuditError, ConfigError

__all__ = ["add_admin_commands"]

console = Console()

COMPOSITION_NOTE = (
    "each charge's ε is that charge alone; epsilons compose (PLD, dp_accounting) rather than add, so "
    "'composed so far' (every charge up to that line, of its job and of its dataset) is less than the sum; "
    "a dataset holding a secure-aggregation noise charge (zCDP, accountant 'rdp' on its line) is composed "
    "whole by RDP, a looser bound that never under-charges"
)


def _guard(site_file: Path, state_dir: Path | None):  # type: ignore[no-untyped-def]
    from fedcore.config import load_site
    from fedcore.site.guard import SiteGuard

    return SiteGuard(load_site(site_file), state_dir)


def _site_count(text: str) -> int:
    """``--max-sites``: an integer >= 1 (argparse reports anything else as a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _keys_init(args: argparse.Namespace) -> int:
    from fedcore.he import init_keys
    from fedcore.he.params import params_for_sites

    params = params_for_sites(args.max_sites)
    keyset = init_keys(args.out, params=params)
    console.print(f"key set [bold]{keyset}[/] written to {args.out}:")
    console.print(
        f"  max_sites {params.max_sites} (the most sites one encrypted sum may hold; checked at job start), "
        f"N={params.poly_modulus_degree}, coefficient primes {list(params.coeff_mod_bit_sizes)} bits, "
        f"|weight * value| <= {params.max_abs_value:.6g} per site, resolution {params.resolution:.3g}"
    )
    console.print(
        f"  {args.out / 'secret.ctx'}  -> every site, out of band (mode 0600); never the coordinator"
    )
    console.print(f"  {args.out / 'public.ctx'}  -> the coordinator (no secret key in it)")
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from fedcore.cli.estimate import estimate_job

    est = estimate_job(args.job, num_sites=args.sites)
    table = Table(title=f"HE cost per round: {args.job}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in est.items():
        table.add_row(k, f"{v:,.3f}" if isinstance(v, float) else str(v))
    console.print(table)
    return 0


def _ledger(args: argparse.Namespace) -> int:
    if args.init:
        from fedcore.config import load_site
        from fedcore.site.guard import init_site_state

        paths = init_site_state(load_site(args.site), args.state_dir)
        console.print(
            f"created the ledger {paths.ledger} and the audit log {paths.audit} (0600, folder 0700)"
        )
    if args.raise_budget:
        from fedcore.config import load_site
        from fedcore.site.guard import raise_budget

        raise_budget(load_site(args.site), args.state_dir)
    guard = _guard(args.site, args.state_dir)
    summary = guard.ledger.summary()
    totals = {t.charge_id: t for t in guard.ledger.running_totals()}
    head = f"{summary.audit_head[0]}:{summary.audit_head[1]}"

    def released(job_id: str) -> dict[str, int]:
        """What the charged job released, by kind (train, evaluate, query)."""
        plan = guard.plans.plan(job_id)
        return {} if plan is None else dict(plan.released)

    if args.json:
        print(
            json.dumps(
                {
                    "site": summary.site,
                    "path": summary.path,
                    "audit_head": head,
                    "datasets": [d.__dict__ for d in summary.datasets],
                    "charges": [
                        {
                            **c.__dict__,
                            "released": released(c.job_id),
                            "composed_epsilon": totals[c.id].dataset_epsilon,
                            "job_epsilon": totals[c.id].job_epsilon,
                        }
                        for c in summary.charges
                    ],
                    "composition": COMPOSITION_NOTE,
                },
                indent=2,
            )
        )
        return 0
    table = Table(title=f"privacy ledger of {summary.site} ({summary.path})")
    for col in ("dataset", "budget ε", "δ", "spent ε", "remaining ε", "charges"):
        table.add_column(col, justify="right")
    for d in summary.datasets:
        table.add_row(
            d.dataset,
            f"{d.budget_epsilon:.3f}",
            f"{d.delta:g}",
            f"{d.spent_epsilon:.3f}",
            f"{d.remaining_epsilon:.3f}",
            str(d.num_charges),
        )
    console.print(table)
    if summary.charges:
        console.print(COMPOSITION_NOTE)
    for c in summary.charges:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(released(c.job_id).items()))
        t = totals[c.id]
        console.print(
            f"  {c.time}  job {c.job_id}  ε={c.epsilon:.3f} δ={c.delta:g} ({c.accountant})  composed so "
            f"far: job {t.job_epsilon:.3f}, {c.dataset} {t.dataset_epsilon:.3f}  released: {kinds or '-'}"
        )
    console.print(f"audit head (keep a copy outside the site; `fedcore audit verify --head`): {head}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    guard = _guard(args.site, args.state_dir)  # checks the chain and the ledger's anchor
    expected = None
    if args.head:
        seq, _, digest = args.head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise ConfigError(f"--head {args.head!r} must look like SEQ:HASH (as `fedcore ledger` prints it)")
        expected = (int(seq), digest)
    report = guard.audit.verify(expected_head=expected)
    if not report.ok:
        raise AuditError(
            f"audit log {guard.audit.path} is broken at record {report.first_bad_seq}: "
            + "; ".join(report.problems)
        )
    console.print(
        f"audit log {guard.audit.path}: [green]OK[/], {report.num_records} records, anchored in the ledger, "
        f"head {report.head_seq}:{report.head_hash}"
    )
    return 0


def _accept_rollback(args: argparse.Namespace) -> int:
    from fedcore.config import load_site
    from fedcore.site.guard import accept_rollback

    lost = accept_rollback(load_site(args.site), args.state_dir)
    console.print(
        f"rollback accepted: the lost spending is charged as epsilon {lost:.4g} (the head copy's whole "
        "spending, conservatively); the site starts from its restored state. `fedcore ledger` shows it"
    )
    return 0


SITE_FILE_DOC_HEAD = """# The site file (`site.toml`): every key

Written by `fedcore site-schema` from the parser itself (`fedcore/config/site.py`, the mechanisms'
own tables included), so it lists exactly what a site file may hold. An unknown key is an error
with a suggestion. Examples: `examples/medical/sites/*.toml`, `examples/finance/sites/*.toml`; the
privacy keys are explained in `docs/privacy.md`.
"""


def site_file_doc() -> str:
    """``docs/site-file.md``: the heading and the parser's reference."""
    from fedcore.config.site import site_reference

    return f"{SITE_FILE_DOC_HEAD}\n{site_reference()}"


def _site_schema(args: argparse.Namespace) -> int:
    print(site_file_doc(), end="")
    return 0


def _app_digest(args: argparse.Namespace) -> int:
    from fedcore.flower.fab import app_digest

    print(app_digest(args.app))
    return 0


def add_admin_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    schema = sub.add_parser("site-schema", help="every key a site file may hold: type, default, meaning")
    schema.set_defaults(func=_site_schema)

    digest = sub.add_parser(
        "app-digest", help="the sha256 of an app's FAB, as `flwr run` uploads it (for [node] trusted_apps)"
    )
    digest.add_argument("app", type=Path, help="the app directory `flwr run` would upload")
    digest.set_defaults(func=_app_digest)

    keys = sub.add_parser("keys", help="HE key ceremony")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    init = ksub.add_parser("init", help="create a key set: secret.ctx (sites) and public.ctx (coordinator)")
    init.add_argument("--out", type=Path, required=True, help="an empty folder for the key set")
    init.add_argument(
        "--max-sites",
        type=_site_count,
        default=64,
        help="the most sites a job may sum under these keys (default 64); larger values pick larger "
        "BFV parameters and shrink each site's value range",
    )
    init.set_defaults(func=_keys_init)

    est = sub.add_parser("estimate", help="HE cost of a job's rounds, before running it")
    est.add_argument("job", type=Path, help="a job file, e.g. examples/medical/jobs/he.toml")
    est.add_argument("--sites", type=int, help="number of sites (default: the sites the job's app lists)")
    est.set_defaults(func=_estimate)

    led = sub.add_parser("ledger", help="a site's privacy budget, spent and remaining")
    led.add_argument("site", type=Path, help="the site file")
    led.add_argument("--state-dir", type=Path, help="folder of the ledger (simulation: RUN_DIR/sites)")
    led.add_argument("--json", action="store_true", help="print the ledger as JSON")
    led.add_argument(
        "--init", action="store_true", help="create the site's ledger and audit log (a new site's first step)"
    )
    led.add_argument(
        "--raise-budget", action="store_true", help="apply a budget raised in the site file (audited)"
    )
    led.set_defaults(func=_ledger)

    aud = sub.add_parser("audit", help="a site's audit log")
    asub = aud.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser("verify", help="check the hash chain (edited, removed, reordered records)")
    ver.add_argument("site", type=Path, help="the site file")
    ver.add_argument("--state-dir", type=Path, help="folder of the site's state (simulation: RUN_DIR/sites)")
    ver.add_argument("--head", help="SEQ:HASH kept outside the site (printed by `fedcore ledger`)")
    ver.set_defaults(func=_audit_verify)
    acc = asub.add_parser(
        "accept-rollback",
        help="start a site whose state folder was restored behind its head copy, its newest state lost: "
        "charges the lost spending (see docs/privacy.md)",
    )
    acc.add_argument("site", type=Path, help="the site file")
    acc.add_argument("--state-dir", type=Path, help="folder of the site's state (simulation: RUN_DIR/sites)")
    acc.set_defaults(func=_accept_rollback)

    from fedcore.cli.deploy import add_deploy_commands

    add_deploy_commands(sub)
