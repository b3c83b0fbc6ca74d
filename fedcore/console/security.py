"""Who may read the console: loopback by default, a token beyond it, and a local admin page's headers.

The console binds 127.0.0.1 unless told otherwise. Bound there, it answers only requests whose
``Host`` is a loopback name (a web page elsewhere cannot rebind its own domain to 127.0.0.1 and read
the site's figures: DNS rebinding). Bound anywhere else, it needs a token: every request without it
gets 401. The token travels as ``Authorization: Bearer TOKEN``, or once as ``?token=TOKEN``, which
sets an HttpOnly, SameSite=Strict cookie and redirects to the same page without it. Every response
carries a strict Content-Security-Policy (no script at all), no-store caching and no-referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COOKIE", "CSP", "LOOPBACK_NAMES", "ConsoleGuard", "is_loopback"]

COOKIE = "fedcore_console"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=(), payment=()",
}


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
    """ASGI middleware: the Host check (loopback binds), the token (when set), the headers.

    Parameters
    ----------
    app
        The console's Starlette app.
    token
        The secret every request must carry; ``None`` only when bound to loopback.
    allowed_hosts
        ``Host`` names accepted (``None``: any, for a bind beyond loopback, where the token guards).
    """

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: Iterable[str] | None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token else None
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
        if self.token is None:
            return None
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:  # the first visit: trade the token for a cookie, drop it from the address
            if not self._valid(query["token"][-1]):
                return _unauthorized()
            rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
            target = scope["path"] + (f"?{rest}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            token = self.token.decode("utf-8")
            redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return redirect
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        cookie = _cookie(headers.get("cookie", ""))
        if self._valid(bearer) or self._valid(cookie):
            return None
        return _unauthorized()

    def _valid(self, candidate: str) -> bool:
        assert self.token is not None
        return bool(candidate) and hmac.compare_digest(candidate.encode("utf-8"), self.token)

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
