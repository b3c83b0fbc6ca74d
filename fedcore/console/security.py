"""Who may read the console and who may decide: loopback by default, a token beyond it and for every
decision, and a local admin page's headers.

The console binds 127.0.0.1 unless told otherwise. Bound there, it answers only requests whose
``Host`` is a loopback name (a web page elsewhere cannot rebind its own domain to 127.0.0.1 and read
the site's figures: DNS rebinding). Bound anywhere else, it needs a token: every request without it
gets 401. The token travels as ``Authorization: Bearer TOKEN``, or once as ``?token=TOKEN``, which
sets an HttpOnly, SameSite=Strict cookie and redirects to the same page without it.

A decision (approve or deny a job: a form POST) needs a token even on loopback (``decision_token``,
or the token itself): anyone on the machine may read, only the operator who holds the token decides.
A POST also needs its ``Origin`` to be the console's own (a cookie never carries a decision made on
another page) and the form's CSRF field (``csrf_field``: derived from the token, given only to the
token's holder, checked by the handler). Every response carries a strict Content-Security-Policy (no
script at all), no-store caching and a same-origin referrer policy (the browser then sends the
``Origin`` of the console's own forms, and nothing to any other site).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COOKIE", "CSP", "LOOPBACK_NAMES", "ConsoleGuard", "csrf_field", "is_loopback"]

COOKIE = "fedcore_console"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=(), payment=()",
}


def csrf_field(token: str) -> str:
    """The decision forms' CSRF value: an HMAC of a fixed label under the token (never the token)."""
    return hmac.new(token.encode("utf-8"), b"fedcore console decision form", hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost`` or a loopback IP."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class ConsoleGuard:
    """ASGI middleware: the Host check (loopback binds), the token (when set), decisions, the headers.

    Parameters
    ----------
    app
        The console's Starlette app.
    token
        The secret every request must carry; ``None`` only when bound to loopback.
    allowed_hosts
        ``Host`` names accepted (``None``: any, for a bind beyond loopback, where the token guards).
    decision_token
        Without ``token``: the secret a decision (any request but GET and HEAD) must carry; reads stay
        open. ``None`` with no ``token``: the console takes no decisions.

    A request carrying the token has ``request.state.decider`` true and ``request.state.csrf`` (the
    value its forms must send back); every other has ``decider`` false.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Iterable[str] | None,
        decision_token: str | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
        key = token or decision_token
        self.key = key.encode("utf-8") if key else None  # reads (when ``token``) and decisions
        self.csrf = csrf_field(key) if key else ""
        self.allowed = None if allowed_hosts is None else frozenset(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, self._with_headers(send))
            return
        await self.app(scope, receive, self._with_headers(send))

    def _refusal(self, scope: Scope) -> Response | None:
        """The response that ends this request before the app (``None``: let it through)."""
        headers = Headers(scope=scope)
        if self.allowed is not None and _host_name(headers.get("host", "")) not in self.allowed:
            return PlainTextResponse("400: this console answers only at 127.0.0.1 or localhost", 400)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.key is not None and "token" in query:  # the first visit: trade it for a cookie
            return self._exchange(scope, query)
        auth = headers.get("authorization", "")
        bearer = self._valid(auth[7:] if auth[:7].lower() == "bearer " else "")
        cookie = self._valid(_cookie(headers.get("cookie", "")))
        state = scope.setdefault("state", {})
        state["decider"], state["csrf"] = bearer or cookie, self.csrf if bearer or cookie else ""
        if self.token is not None and not (bearer or cookie):
            return _unauthorized()
        if scope["method"] in ("GET", "HEAD") or self.key is None:
            return None  # without any token the app refuses decisions itself (request.state.decider)
        if not (bearer or cookie):
            return _unauthorized()
        origin = headers.get("origin")
        tool = bearer and origin is None  # a client such as curl: no browser, so no cookie to abuse
        if not tool and origin != f"{scope['scheme']}://{headers.get('host', '')}":
            return PlainTextResponse(
                f"403: a decision is taken only from this console's own pages (Origin {origin!r})", 403
            )
        return None

    def _exchange(self, scope: Scope, query: dict[str, list[str]]) -> Response:
        """``?token=``: set the cookie and redirect to the same address without the token."""
        if not self._valid(query["token"][-1]):
            return _unauthorized()
        rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
        target = scope["path"] + (f"?{rest}" if rest else "")
        redirect = RedirectResponse(target, status_code=303)
        assert self.key is not None
        redirect.set_cookie(COOKIE, self.key.decode("utf-8"), httponly=True, samesite="strict", path="/")
        return redirect

    def _valid(self, candidate: str) -> bool:
        return (
            self.key is not None
            and bool(candidate)
            and hmac.compare_digest(candidate.encode("utf-8"), self.key)
        )

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers[key] = value
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
            await send(message)

        return sending


def _cookie(header: str) -> str:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


def _unauthorized() -> Response:
    return PlainTextResponse(
        "401: this console needs its token (Authorization: Bearer TOKEN, or open the URL "
        "`fedcore console` printed, ending in ?token=...)",
        401,
        headers={"WWW-Authenticate": "Bearer"},
    )
