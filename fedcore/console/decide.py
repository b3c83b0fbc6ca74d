"""The console's decision form (``POST /decide``): parsed strictly, its CSRF field checked.

A plain HTML form, URL-encoded (no script, no multipart): the job, the digest of the request the
operator saw, approve or deny, the operator's name (required: the audit record's actor) and a reason.
Every problem is one ``ConfigError`` line; nothing is decided unless the whole form is valid.
"""

from __future__ import annotations

import hmac
import urllib.parse
from dataclasses import dataclass

from fedcore.errors import ConfigError
from fedcore.site.approval_gate import operator_name

__all__ = ["MAX_BODY", "MAX_REASON", "DecisionForm", "read_form"]

MAX_BODY = 8192
MAX_REASON = 500
FIELDS = ("csrf", "job_id", "digest", "decision", "operator", "reason")


@dataclass(frozen=True)
class DecisionForm:
    """One decision as the form sent it, checked."""

    job_id: str
    digest: str
    approve: bool
    operator: str
    reason: str


def read_form(body: bytes, content_type: str, csrf: str) -> DecisionForm:
    """The decision in ``body`` (``application/x-www-form-urlencoded``), whose ``csrf`` field must be
    ``csrf`` (the value the console gave the token's holder); ``ConfigError`` naming what is wrong."""
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise ConfigError(f"a decision is a form (application/x-www-form-urlencoded), got {content_type!r}")
    if len(body) > MAX_BODY:
        raise ConfigError(f"the decision form is {len(body)} bytes, more than {MAX_BODY}")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"the decision form is not URL-encoded UTF-8 ({err})") from err
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key not in FIELDS or key in fields:
            raise ConfigError(f"the decision form has an unknown or repeated field {key[:40]!r}")
        fields[key] = value
    sent = fields.get("csrf", "")
    if not csrf or not hmac.compare_digest(sent.encode("utf-8"), csrf.encode("utf-8")):
        raise ConfigError(
            "the decision form's CSRF field is missing or wrong: reload the page and decide again"
        )
    decision = fields.get("decision", "")
    if decision not in ("approve", "deny"):
        raise ConfigError(f"decision must be approve or deny, got {decision[:40]!r}")
    if not fields.get("job_id") or not fields.get("digest"):
        raise ConfigError("the decision form names no job_id or digest: decide from the job's page")
    if not fields.get("operator", "").strip():
        raise ConfigError("give your name: the audit log records who decided")
    reason = " ".join(fields.get("reason", "").split())
    if len(reason) > MAX_REASON:
        raise ConfigError(f"the reason is {len(reason)} characters; keep it under {MAX_REASON}")
    return DecisionForm(
        fields["job_id"], fields["digest"], decision == "approve", operator_name(fields["operator"]), reason
    )
