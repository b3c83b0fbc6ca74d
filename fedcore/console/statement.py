"""A data-use statement per job, for the site's data-access committee (Markdown or HTML).

What the site released for the job, to whom, when, under which plan (its digest), at what epsilon and
delta, who approved it (manual approval), and the audit head that covers every record of it. Built
only from the site's ledger and audit log (``SiteReader``): never from its data. A statement is issued
only over an audit chain that verifies and is anchored in the ledger: over a broken one it would vouch
for records nobody can trust.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from fedcore.console.jobs import JOB_STATES, JobView
from fedcore.console.render import eps, render, statement_style
from fedcore.console.state import SiteReader
from fedcore.errors import AuditError, ConfigError

__all__ = [
    "Statement",
    "StatementFormat",
    "data_use_statement",
    "statement_html",
    "statement_markdown",
    "write_statement",
]

StatementFormat = Literal["md", "html"]


@dataclass(frozen=True)
class Statement:
    """Everything a statement says: the job as the site saw it, and the audit head covering it."""

    site: str
    dataset: str
    job: JobView
    head: str  # SEQ:HASH of the verified audit log when the statement was made
    issued: str
    site_file: str

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(r.seq for r in self.job.records)


def data_use_statement(reader: SiteReader, job_id: str) -> Statement:
    """The statement for ``job_id``; ``AuditError`` when the audit chain does not verify."""
    chain = reader.chain()
    if not chain.ok:
        raise AuditError(
            f"no statement is issued over a broken audit log ({'; '.join(chain.problems)}); restore the log "
            "from a backup and check it with `fedcore audit verify SITE_FILE`"
        )
    job = reader.job(job_id)
    issued = datetime.now(UTC).isoformat(timespec="seconds")
    return Statement(reader.site.name, reader.site.dataset, job, chain.head, issued, str(reader.site.path))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def _md(text: object) -> str:
    """Untrusted text as inert Markdown inside a line or a table cell: one line, markup escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _code(text: object) -> str:
    """An identifier (job id, digest, head) as a code span that no text can close or split."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


def statement_markdown(st: Statement) -> str:
    """The statement in Markdown (every text from the ledger or audit log escaped)."""
    job = st.job
    charged = (
        "nothing"
        if job.charged_epsilon is None
        else f"epsilon {eps(job.charged_epsilon, 6)} at delta {job.charged_delta:g} (its charges composed)"
    )
    lines = [
        f"# Data-use statement: job {_code(job.job_id)}",
        "",
        f"Site **{_md(st.site)}**, dataset **{_md(st.dataset)}**; issued {st.issued} from the site's own "
        "ledger and audit log (never from its data: no data row is in this statement).",
        "",
        "| | |",
        "|---|---|",
        f"| Job | {_code(job.job_id)} |",
        f"| Requested by | {_md(', '.join(job.requested_by))} (as the site's audit log records it) |",
        f"| What | {_md(job.summary_line)} |",
        f"| State | {job.state}: {_md(job.reason)} |",
        f"| Plan digest | {_code(job.digest) if job.digest else '-'} (SHA-256 of the job's settings: "
        "another setting, another job) |",
        *([f"| Approval | {_approval(job)} |"] if job.approval else []),
        f"| Admitted | {job.admitted or '-'} |",
        f"| Planned at most | {_plan_cost(job)} |",
        f"| Charged | {charged} |",
        "",
    ]
    lines += _md_releases(job) + _md_plan(job) + _md_evidence(st)
    return "\n".join(lines) + "\n"


def _approval(job: JobView) -> str:
    """The operator's decision (manual approval): who, when, why."""
    a = job.approval
    assert a is not None
    if a.status == "pending":
        return f"requested {a.requested}, not decided yet (until {a.deadline_iso})"
    why = f": {_md(a.reason)}" if a.reason else ""
    return f"{a.status} by {_md(a.decided_by)} at {a.decided}{why}"


def _plan_cost(job: JobView) -> str:
    if job.planned_epsilon is None:
        return "-"
    unit = f" per {_md(job.unit)}" if job.unit else ""
    return f"epsilon {eps(job.planned_epsilon, 6)}{unit} at delta {job.delta:g}"


def _md_releases(job: JobView) -> list[str]:
    out = ["## What was released, to the coordinator of this job", ""]
    if not job.releases:
        return [*out, "Nothing: the site gave no answer for this job.", ""]
    out += ["| # | time (UTC) | release | epsilon of its charge |", "|---|---|---|---|"]
    for i, r in enumerate(job.releases, 1):
        out.append(f"| {i} | {r.time} | {_md(r.kind)} round {r.round} | {eps(r.epsilon, 6)} |")
    out += [
        "",
        "Each charge's epsilon is its own, at the plan's delta; the job's total above composes them "
        "(privacy loss distributions), which is less than their sum.",
        "",
    ]
    return out


def _md_plan(job: JobView) -> list[str]:
    if not job.plan_releases:
        return []
    out = [
        "## The plan the site admitted",
        "",
        "| release | how many | protection | epsilon |",
        "|---|---|---|---|",
    ]
    for r in job.plan_releases:
        what, how = _md(r.get("what", "")), _md(r.get("protection", "-"))
        out.append(f"| {what} | {r.get('count', 1)} | {how} | {eps(r.get('epsilon'), 4)} |")
    return [*out, ""]


def _md_evidence(st: Statement) -> list[str]:
    seqs = st.seqs
    covered = f"records {seqs[0]}-{seqs[-1]}" if seqs else "no record"
    return [
        "## Evidence",
        "",
        f"The site's audit log holds {covered} of this job (state {st.job.state}: "
        f"{JOB_STATES[st.job.state]}). It verified when this statement was issued, anchored in the "
        f"ledger, at head `{st.head}`, which covers them all.",
        "",
        "Keep that head outside the site. Anyone can later check that no record was edited, removed or "
        f"replaced since: {_code(f'fedcore audit verify {st.site_file} --head {st.head}')}.",
    ]


def statement_html(st: Statement) -> str:
    """The statement as one standalone HTML page (autoescaped; its style inline, no script)."""
    return render("statement.html", st=st, job=st.job, states=JOB_STATES, style=statement_style())


def write_statement(
    reader: SiteReader, job_id: str, *, fmt: StatementFormat = "md", out: Path | None = None
) -> str:
    """The statement's text; written to ``out`` (atomically) when given."""
    if fmt not in ("md", "html"):
        raise ConfigError(f"--format must be md or html, got {fmt!r}")
    st = data_use_statement(reader, job_id)
    text = statement_markdown(st) if fmt == "md" else statement_html(st)
    if out is not None:
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ConfigError(
                f"cannot write the statement to {out}: {err.strerror}; choose another --out"
            ) from err
    return text
