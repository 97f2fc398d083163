"""Who may use the server: an access token when it listens beyond this machine, as Jupyter does.

Bound to a loopback address (the default `serve`) nothing is asked. Bound to any other address
every route but `GET /api/health` (Docker's HEALTHCHECK, load balancers) needs the token:

- `Authorization: Bearer TOKEN` (scripts, notebooks, curl), or
- the cookie that opening the page once with `?token=TOKEN` sets (HttpOnly, SameSite=Strict),
  after which the server redirects to the same address without the token, so that it does not
  stay in the address bar, the history or a copied link.

A request that changes something (an upload, an analysis, a study) and carries only the cookie is
refused when the browser says it comes from another site (`Origin`, else `Sec-Fetch-Site`): the
cookie alone does not prove that the person at the page sent it.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from starlette.requests import cookie_parser

COOKIE = "ponderscope_token"  # + "_PORT": a browser sends a host's cookies to all its ports, and two servers
                              # on one machine (two containers, say) must not overwrite each other's
TOKEN_ENV = "PONDERSCOPE_TOKEN"
OPEN_PATHS = frozenset({"/api/health"})  # answered to anyone (GET only): the HEALTHCHECK's
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOW_TO_GET_IN = ("this ponderscope server asks for its access token: open the link with ?token= that the server printed "
                 "when it started (its log; `docker logs CONTAINER` for the image), or send the header 'Authorization: Bearer TOKEN'; "
                 "the token is the one given by --token or $PONDERSCOPE_TOKEN, else a new one each start")


class AccessError(ValueError):
    """A token setting `serve` cannot run with."""


def is_loopback(host: str) -> bool:
    """True for the addresses only this machine reaches: 127.0.0.0/8, ::1, `localhost`."""
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def new_token() -> str:
    return secrets.token_hex(24)  # 192 bits, URL-safe as it is


@dataclass(frozen=True)
class AccessPolicy:
    """token None: nothing is asked (loopback, or `--no-token`)."""
    token: str | None = None

    def accepts(self, offered: str | None) -> bool:
        # compare_digest: the time taken does not tell how many leading characters were right
        return self.token is None or (offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()))


def choose_policy(host: str, token: str | None, no_token: bool, environ: dict) -> tuple[AccessPolicy, str | None]:
    """The policy `serve --host HOST [--token T | --no-token]` runs with, and a warning for the log.
    A token given (flag, else $PONDERSCOPE_TOKEN) is asked for on any address; on loopback with
    none given, nothing is asked; elsewhere a new random one is made."""
    given = token or environ.get(TOKEN_ENV) or None
    if no_token:
        if given:
            raise AccessError("--no-token and a token (--token or $PONDERSCOPE_TOKEN) contradict each other; give one of them")
        warning = None if is_loopback(host) else (
            f"serving on {host} WITHOUT an access token (--no-token): anyone who can reach this port can upload, run the models "
            "and read the model cards")
        return AccessPolicy(None), warning
    if given:
        if len(given) < 16 or not given.isprintable() or any(c.isspace() for c in given):
            raise AccessError("the access token must be at least 16 printable characters without spaces")
        return AccessPolicy(given), None
    return AccessPolicy(None if is_loopback(host) else new_token()), None


def login_links(policy: AccessPolicy, host: str, port: int, hostname: str) -> list[str]:
    """The ready-to-open addresses printed at start-up: the machine's name, and 127.0.0.1 (the one
    that works from the host of a container started with `-p PORT:PORT`)."""
    suffix = f"/?token={policy.token}" if policy.token else "/"
    if host in ("0.0.0.0", "::", ""):
        names = [hostname, "127.0.0.1"]
    else:
        names = [f"[{host}]" if ":" in host else host]
    return [f"http://{name}:{port}{suffix}" for name in dict.fromkeys(names)]


class RedactTokens(logging.Filter):
    """Takes `token=...` out of log records (uvicorn's access log writes each request's query
    string): after the start-up link the token appears in no log line."""
    PATTERN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self.PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        return True


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def cookie_name(headers: dict[str, str]) -> str:
    """COOKIE_PORT, the port the browser addressed (the Host header's: a container's published one)."""
    host = headers.get("host", "")
    port = host.rsplit(":", 1)[1] if ":" in host and not host.endswith("]") else ""
    return f"{COOKIE}_{port if port.isdigit() else 'default'}"


def _cookie(headers: dict[str, str]) -> str | None:
    # Starlette's lenient parser: a browser sends every cookie of the host (other local apps'
    # too, on other ports), and one malformed among them must not hide ours (SimpleCookie drops all)
    return cookie_parser(headers.get("cookie", "")).get(cookie_name(headers))


def _cross_site(scope, headers: dict[str, str]) -> bool:
    """Whether the browser says this request comes from a page of another site."""
    origin = headers.get("origin")
    if origin is not None:  # host and port must be the request's (the scheme may differ behind a TLS proxy)
        return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


class AccessToken:
    """Pure ASGI middleware enforcing an AccessPolicy (pure: the body stays the app's to read)."""

    def __init__(self, app, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if self.policy.token is None or scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # a websocket (none is served today): refused, never let through unchecked
            return await send({"type": "websocket.close", "code": 1008})
        method, path = scope["method"], scope["path"]
        if path in OPEN_PATHS and method in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        offered = next((value for name, value in query if name == "token"), None)
        if offered is not None and method in ("GET", "HEAD"):
            if not self.policy.accepts(offered):
                return await self._refuse(scope, send, headers, 401, "the token in this address is not this server's; " + HOW_TO_GET_IN)
            return await self._login(scope, send, headers, query)
        bearer, cookie = _bearer(headers), _cookie(headers)
        if bearer is not None and self.policy.accepts(bearer):
            return await self.app(scope, receive, send)
        if cookie is not None and self.policy.accepts(cookie):
            if method not in SAFE_METHODS and _cross_site(scope, headers):
                return await self._refuse(scope, send, headers, 403, "refused: this request changes the server's state and comes from "
                                          "another site's page; open the dashboard itself, or send 'Authorization: Bearer TOKEN'")
            return await self.app(scope, receive, send)
        wrong = " (the token sent is not this server's)" if (bearer or cookie) else ""
        return await self._refuse(scope, send, headers, 401, HOW_TO_GET_IN + wrong)

    async def _login(self, scope, send, headers: dict[str, str], query) -> None:
        """`?token=` right: the cookie, and a redirect to the same address without the token."""
        rest = urlencode([(name, value) for name, value in query if name != "token"])
        # the path as sent (re-escaped: it arrives decoded), with one leading slash (never "//host": an
        # address on another site); uvicorn's path already holds any --root-path prefix
        location = "/" + quote(scope["path"], safe="/:@!$&'()*+,;=-._~").lstrip("/") + (f"?{rest}" if rest else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{cookie_name(headers)}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict{secure}"
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope, send, headers: dict[str, str], status: int, message: str) -> None:
        """JSON for the API ({"detail": message}, as every error here); a page for a browser
        opening an address, which shows the message instead of a broken dashboard."""
        wants_page = scope["method"] == "GET" and not scope["path"].startswith("/api/") and "text/html" in headers.get("accept", "")
        if wants_page:
            body = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ponderscope: access token needed</title>"
                    f"</head><body style=\"font-family: sans-serif; max-width: 44em; margin: 3em auto\"><main><h1>ponderscope</h1>"
                    f"<p id=\"access-message\">{escape(message[0].upper() + message[1:])}.</p></main></body></html>").encode()
            kind = b"text/html; charset=utf-8"
        else:
            body, kind = json.dumps({"detail": message}).encode(), b"application/json"
        extra = [(b"www-authenticate", b'Bearer realm="ponderscope"')] if status == 401 else []
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"), *extra]})
        await send({"type": "http.response.body", "body": body})
