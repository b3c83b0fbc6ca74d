"""Who may read the console: loopback by default, a token beyond it, strict headers on every answer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fedcore.cli.console import listen, read_token, serve_settings
from fedcore.console import create_app
from fedcore.console.security import is_loopback
from fedcore.errors import ConfigError
from tests.console.served_site import Site, client

TOKEN = "s3cret-token-0123456789abcdef"


def test_loopback_console_answers_only_loopback_host_names(served: Site) -> None:
    c = client(create_app(served.reader()))
    for host in ("127.0.0.1", "127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert c.get("/api/audit", headers={"host": host}).status_code == 200, host
    for host in ("attacker.example", "attacker.example:8765", "10.0.0.5", "127.0.0.1.attacker.example"):
        answer = c.get("/api/budget", headers={"host": host})  # DNS rebinding: a page elsewhere named like us
        assert answer.status_code == 400 and "spent" not in answer.text, host


def test_beyond_loopback_every_request_without_the_token_is_refused(served: Site) -> None:
    app = create_app(served.reader(), token=TOKEN, allowed_hosts=None)
    c = client(app, "192.0.2.10:8765")
    for url in ("/", "/jobs", "/audit", "/api/budget", "/api/jobs", "/static/console.css", "/nowhere"):
        answer = c.get(url)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", url
    assert c.get("/api/budget", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert c.get("/api/budget", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/?token=wrong-token-0123456789", follow_redirects=False).status_code == 401
    first = c.get(f"/jobs?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/jobs"  # the token leaves the URL
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert c.get("/jobs").status_code == 200  # the cookie now carries it
    with pytest.raises(ConfigError, match="needs a token"):
        create_app(served.reader(), token=None, allowed_hosts=None)


def test_every_answer_carries_the_local_admin_headers(served: Site) -> None:
    c = client(create_app(served.reader(), token=TOKEN, allowed_hosts=None))
    for answer in (c.get("/"), c.get("/", headers={"Authorization": f"Bearer {TOKEN}"})):
        h = answer.headers
        assert h["content-security-policy"].startswith("default-src 'none'")
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert (h["x-frame-options"], h["x-content-type-options"]) == ("DENY", "nosniff")
        assert (h["referrer-policy"], h["cache-control"]) == ("same-origin", "no-store")
        assert "server" not in h
    ok = client(create_app(served.reader()))
    assert ok.post("/").status_code == 405 and ok.delete("/api/budget").status_code == 405  # reads only
    assert ok.post("/decide").status_code == 403  # no token at all: no decision


def test_statement_html_allows_only_its_own_inline_style(served: Site) -> None:
    answer = client(create_app(served.reader())).get("/statement?id=train-1&format=html")
    csp = answer.headers["content-security-policy"]
    assert "style-src 'sha256-" in csp and "unsafe-inline" not in csp and "script" not in csp


def test_serve_settings_token_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.10", "console.example")] == [False] * 4
    local = serve_settings("127.0.0.1", 8765, None)
    assert local.token is None and local.decision_token is not None and len(local.decision_token) >= 40
    made = serve_settings("0.0.0.0", 8765, None)
    assert made.generated and made.token is not None and len(made.token) >= 40
    assert serve_settings("0.0.0.0", 8765, None).token != made.token
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 644\); run `chmod 600"):
        read_token(file)
    file.chmod(0o600)
    assert serve_settings("0.0.0.0", 1, file).token == TOKEN
    assert serve_settings("127.0.0.1", 1, file).token == TOKEN  # given on loopback: required there too
    assert serve_settings("127.0.0.1", 1, file).decision_token == TOKEN
    file.write_text("short")
    with pytest.raises(ConfigError, match="16 to 512 characters"):
        read_token(file)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        read_token(tmp_path / "missing")


def test_a_busy_port_is_one_clean_error() -> None:
    taken = listen("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*choose another --port"):
            listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    free = listen("127.0.0.1", 0)
    assert free.family == socket.AF_INET and free.getsockname()[1] > 0
    free.close()
