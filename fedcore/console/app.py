"""The console's web app (Starlette): one site's budget, jobs and audit chain, pages and JSON, and
the operator's decisions on jobs awaiting approval.

Pages and their JSON twins are built from the same ``SiteReader`` views, so a script or a test sees
exactly the figures a person sees. Reading is GET and HEAD only. The one write is a decision
(``POST /decide``, a plain HTML form: no script), taken by the same function as ``fedcore approve``
and ``fedcore deny`` (``decide_job``), allowed only to the holder of the console's token with the
form's CSRF field and the console's own Origin (``fedcore.console.security``).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fedcore.console.chart import spending_svg
from fedcore.console.decide import DecisionForm, read_form
from fedcore.console.jobs import JOB_STATES, JobView
from fedcore.console.render import STATIC, render, statement_style_hash
from fedcore.console.security import CSP, LOOPBACK_NAMES, ConsoleGuard
from fedcore.console.state import SiteReader
from fedcore.console.statement import data_use_statement, statement_html, statement_markdown
from fedcore.errors import ConfigError, FedcoreError
from fedcore.site.approval_gate import decide_job

__all__ = ["as_json", "create_app"]

RECORDS_SHOWN = 500


def as_json(value: Any) -> Any:
    """Frozen views as plain JSON values (dataclasses to dicts, tuples to lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


def _job_json(job: JobView) -> dict[str, Any]:
    out: dict[str, Any] = as_json(job)
    out["summary"] = job.summary_line
    return out


class _Pages:
    """The route handlers of one site's console (sync: Starlette runs them in its thread pool)."""

    def __init__(self, reader: SiteReader) -> None:
        self.reader = reader

    def _page(
        self, request: Request, name: str, title: str, json_url: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        site, state = self.reader.site, request.state
        html = render(
            f"{name}.html", page=name, title=title, json_url=json_url, site=site.name, dataset=site.dataset,
            now=datetime.now(UTC).isoformat(), site_file=str(site.path), approval=site.approval,
            decider=getattr(state, "decider", False), csrf=getattr(state, "csrf", ""), **context,
        )  # fmt: skip
        return HTMLResponse(html, status_code=status)

    def budget(self, request: Request) -> Response:
        view = self.reader.budget()
        if request.url.path.startswith("/api/"):
            return JSONResponse(as_json(view))
        charts = {
            d.dataset: spending_svg(
                [(p.time, p.epsilon) for p in view.spending[d.dataset]],
                budget=d.budget_epsilon,
                label=f"spent epsilon of {d.dataset} over time",
            )
            for d in view.datasets
        }
        return self._page(request, "budget", "Privacy budget", "/api/budget", view=view, charts=charts)

    def jobs(self, request: Request) -> Response:
        jobs = self.reader.jobs()
        pending = [j for j in jobs if j.state == "pending"]
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"jobs": [_job_json(j) for j in jobs], "pending": [j.job_id for j in pending]}
            )
        return self._page(request, "jobs", "Jobs", "/api/jobs", jobs=jobs, pending=pending, states=JOB_STATES)

    def job(self, request: Request) -> Response:
        job = self.reader.job(_job_id(request))
        if request.url.path.startswith("/api/"):
            return JSONResponse(_job_json(job))
        url = f"/api/job?{request.url.query}"
        return self._page(request, "job", f"Job {job.job_id}", url, job=job, states=JOB_STATES)

    def audit(self, request: Request) -> Response:
        chain = self.reader.chain()
        if request.url.path.startswith("/api/"):
            out = as_json(dataclasses.replace(chain, records=()))
            del out["records"]
            return JSONResponse(out)
        records = list(reversed(chain.records))[:RECORDS_SHOWN]
        return self._page(
            request, "audit", "Audit chain", "/api/audit", chain=chain, records=records, shown=len(records)
        )

    def records(self, request: Request) -> Response:
        """Every audit record as JSON lines: a copy to archive outside the site."""
        lines = (
            json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in self.reader.audit().records()
        )
        name = f"{self.reader.site.name}-audit.jsonl"
        return Response("".join(lines), media_type="application/x-ndjson", headers=_attachment(name))

    def statement(self, request: Request) -> Response:
        fmt = request.query_params.get("format", "md")
        if fmt not in ("md", "html"):
            raise HTTPException(400, f"format must be md or html, got {fmt!r}")
        st = data_use_statement(self.reader, _job_id(request))
        name = f"statement-{_safe_name(st.job.job_id)}.{fmt}"
        if fmt == "md":
            return PlainTextResponse(
                statement_markdown(st), media_type="text/markdown", headers=_attachment(name)
            )
        headers = {
            **_attachment(name),
            "Content-Security-Policy": CSP.replace("style-src 'self'", f"style-src {statement_style_hash()}"),
        }
        return HTMLResponse(statement_html(st), headers=headers)

    async def decide(self, request: Request) -> Response:
        """``POST /decide``: approve or deny a pending job, as ``fedcore approve``/``deny`` would, with
        the operator's name from the form; then back to the job's page (or the reason it failed)."""
        if not getattr(request.state, "decider", False):
            raise HTTPException(
                403, "decisions need the console's token: open the ?token= address it printed"
            )
        form: DecisionForm | None = None
        try:
            body, kind = await request.body(), request.headers.get("content-type", "")
            form = read_form(body, kind, getattr(request.state, "csrf", ""))
            site, folder = self.reader.site, self.reader.state_dir
            await run_in_threadpool(
                decide_job, site, folder, form.job_id, approve=form.approve, by=form.operator,
                reason=form.reason, digest=form.digest, via="console",
            )  # fmt: skip
        except FedcoreError as err:
            job = None if form is None else form.job_id
            status = 400 if form is None else 404 if isinstance(err, ConfigError) else 409  # form, job, state
            return self._page(request, "refused", "Decision not taken", "/api/jobs", status=status,
                              message=str(err), job_id=job)  # fmt: skip
        return RedirectResponse(f"/job?id={urllib.parse.quote(form.job_id, safe='')}", status_code=303)


def _job_id(request: Request) -> str:
    job_id = request.query_params.get("id", "")
    if not job_id:
        raise HTTPException(400, "name the job: ?id=JOB_ID")
    return job_id


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80] or "job"


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def create_app(
    reader: SiteReader,
    *,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES,
    decision_token: str | None = None,
) -> ConsoleGuard:
    """The console of ``reader``'s site, wrapped in its guard (``fedcore.console.security``).

    ``token``: required on every request when set (``fedcore console`` sets it for any bind beyond
    loopback). ``allowed_hosts``: the ``Host`` names answered (``None``: any; only with a token).
    ``decision_token``: without ``token``, what a decision needs (reads stay open); with neither,
    the console takes no decisions.
    """
    if allowed_hosts is None and token is None:
        raise ConfigError(
            "a console reachable beyond loopback needs a token; give --token-file or let it make one"
        )
    pages = _Pages(reader)
    get = ["GET", "HEAD"]
    routes = [
        Route("/", pages.budget, methods=get),
        Route("/jobs", pages.jobs, methods=get),
        Route("/job", pages.job, methods=get),
        Route("/audit", pages.audit, methods=get),
        Route("/audit/records.jsonl", pages.records, methods=get),
        Route("/statement", pages.statement, methods=get),
        Route("/decide", pages.decide, methods=["POST"]),
        Route("/api/budget", pages.budget, methods=get),
        Route("/api/jobs", pages.jobs, methods=get),
        Route("/api/job", pages.job, methods=get),
        Route("/api/audit", pages.audit, methods=get),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={FedcoreError: _error})  # type: ignore[dict-item]
    return ConsoleGuard(app, token=token, allowed_hosts=allowed_hosts, decision_token=decision_token)


def _error(request: Request, exc: FedcoreError) -> Response:
    """A site state the console cannot read, or an unknown job: one clear line, never a traceback."""
    status = 404 if isinstance(exc, ConfigError) else 503
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    return PlainTextResponse(f"{status}: {exc}", status_code=status)
