"""The access token (server/access.py): asked for beyond loopback, nothing changed on loopback,
the Bearer header and the ?token= cookie flow, 401s that say how to get in, cookie-only state
changes from another site refused, and the token in no log line but the start-up link and in
no answer. The page's side (the cookie flow in Chromium) is in test_browser.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_support import ServerProcess
from fastapi.testclient import TestClient

from ponderscope.server.access import COOKIE, AccessError, AccessPolicy, choose_policy, is_loopback, login_links
from ponderscope.server.app import create_app

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "checkpoints" / "fmnist_sact_resnet32"
TOKEN = "3f9c2a7be1d04c55a8e6b0d2c4f1a9e7"
PNG = (ROOT / "static" / "favicon.png").read_bytes()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app([MODEL], device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), execution="masked", access=AccessPolicy(TOKEN))
    yield app
    app.state.dataset_jobs.close()


def client(app) -> TestClient:
    return TestClient(app, follow_redirects=False)


# ------------------------------------------------------------------------------ the policy
@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
                                            ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("my-laptop", False)])
def test_which_addresses_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_policy_per_address_and_setting():
    assert choose_policy("127.0.0.1", None, False, {}) == (AccessPolicy(None), None)   # the default serve: nothing changes
    made = [choose_policy("0.0.0.0", None, False, {})[0].token for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{48}", t) for t in made) and made[0] != made[1]   # a new one each start
    assert choose_policy("0.0.0.0", TOKEN, False, {"PONDERSCOPE_TOKEN": "e" * 20})[0].token == TOKEN  # the flag first
    assert choose_policy("10.0.0.2", None, False, {"PONDERSCOPE_TOKEN": "e" * 20})[0].token == "e" * 20
    assert choose_policy("127.0.0.1", TOKEN, False, {})[0].token == TOKEN   # asked for: asked on loopback too
    policy, warning = choose_policy("0.0.0.0", None, True, {})
    assert policy.token is None and "WITHOUT an access token" in warning and "0.0.0.0" in warning
    assert choose_policy("127.0.0.1", None, True, {}) == (AccessPolicy(None), None)
    with pytest.raises(AccessError, match="contradict"):
        choose_policy("0.0.0.0", None, True, {"PONDERSCOPE_TOKEN": TOKEN})
    for bad in ("short", "has a space in it 123", "x" * 15):
        with pytest.raises(AccessError, match="at least 16"):
            choose_policy("0.0.0.0", bad, False, {})


def test_start_up_links():
    policy = AccessPolicy(TOKEN)
    assert login_links(policy, "0.0.0.0", 8000, "box") == [f"http://box:8000/?token={TOKEN}", f"http://127.0.0.1:8000/?token={TOKEN}"]
    assert login_links(policy, "10.1.2.3", 81, "box") == [f"http://10.1.2.3:81/?token={TOKEN}"]
    assert login_links(AccessPolicy(None), "127.0.0.1", 8000, "box") == ["http://127.0.0.1:8000/"]


def test_comparison_takes_only_the_exact_token():
    policy = AccessPolicy(TOKEN)
    assert policy.accepts(TOKEN)
    for wrong in (None, "", TOKEN[:-1], TOKEN + "0", TOKEN.upper(), " " + TOKEN):
        assert not policy.accepts(wrong)


# ------------------------------------------------------------------------------ loopback
def test_without_a_policy_nothing_is_asked(tmp_path):
    app = create_app([MODEL], device="cpu", cache_dir=tmp_path, execution="masked")
    with client(app) as c:
        assert c.get("/api/models").status_code == 200
        page = c.get("/", headers={"accept": "text/html"})
        assert page.status_code == 200 and "set-cookie" not in page.headers
        assert c.post("/api/images", files={"file": ("a.png", PNG, "image/png")}, headers={"origin": "http://elsewhere.example"}).status_code == 200
        assert "securitySchemes" not in app.openapi().get("components", {})


# ------------------------------------------------------------------------------ with a token
def test_health_is_open_and_everything_else_asks(app):
    c = client(app)
    assert c.get("/api/health").status_code == 200
    for method, path in [("GET", "/api/models"), ("GET", "/"), ("GET", "/static/app.js"), ("GET", "/openapi.json"), ("GET", "/docs"),
                         ("GET", "/favicon.ico"), ("POST", "/api/images"), ("POST", "/api/health")]:
        answer = c.request(method, path)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"] == 'Bearer realm="ponderscope"'
        assert "Authorization: Bearer TOKEN" in answer.json()["detail"] and "?token=" in answer.json()["detail"]


def test_a_browser_opening_the_page_without_the_token_gets_the_message_as_a_page(app):
    answer = client(app).get("/?view=image", headers={"accept": "text/html,application/xhtml+xml"})
    assert answer.status_code == 401 and answer.headers["content-type"].startswith("text/html")
    assert "access token" in answer.text and "Authorization: Bearer TOKEN" in answer.text and "<script" not in answer.text


def test_bearer_header(app):
    c = client(app)
    assert c.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/api/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200  # the scheme is case-insensitive
    wrong = c.get("/api/models", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
    assert wrong.status_code == 401 and "not this server's" in wrong.json()["detail"]
    assert c.get("/api/models", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert "set-cookie" not in wrong.headers


def test_token_in_the_address_sets_the_cookie_and_redirects_without_it(app):
    c = client(app)
    login = c.get(f"/?view=image&token={TOKEN}&model=fmnist_sact_resnet32")
    assert login.status_code == 303
    assert login.headers["location"] == "/?view=image&model=fmnist_sact_resnet32"   # the rest of the address kept, the token gone
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}_default={TOKEN};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
    page = c.get(login.headers["location"], headers={"accept": "text/html"})
    assert page.status_code == 200 and 'id="models-data"' in page.text
    assert c.get("/api/models").status_code == 200 and c.get("/static/app.js").status_code == 200


def test_the_cookie_is_per_port(app):
    """Two servers on one machine (two containers): a browser sends a host's cookies to every
    port; each server reads its own."""
    c = client(app)
    login = c.get(f"/?token={TOKEN}", headers={"host": "box:8001"})
    assert login.headers["set-cookie"].startswith(f"{COOKIE}_8001=")
    other = {"cookie": f"{COOKIE}_8002={TOKEN}", "host": "box:8001"}
    assert TestClient(app).get("/api/models", headers=other).status_code == 401
    assert TestClient(app).get("/api/models", headers={"cookie": f"{COOKIE}_8001={TOKEN}", "host": "box:8001"}).status_code == 200


def test_a_wrong_token_in_the_address_sets_nothing(app):
    answer = client(app).get("/?token=not-the-token-at-all", headers={"accept": "text/html"})
    assert answer.status_code == 401 and "set-cookie" not in answer.headers and "not this server" in answer.text


def test_state_changes_with_the_cookie_from_another_site_are_refused(app):
    c = client(app)
    c.get(f"/?token={TOKEN}")
    upload = {"files": {"file": ("a.png", PNG, "image/png")}}
    refused = c.post("/api/images", headers={"origin": "http://evil.example"}, **upload)
    assert refused.status_code == 403 and "another site" in refused.json()["detail"]
    assert c.post("/api/images", headers={"origin": "http://testserver.attacker.example"}, **upload).status_code == 403
    assert c.post("/api/images", headers={"origin": "null"}, **upload).status_code == 403
    assert c.post("/api/images", headers={"sec-fetch-site": "cross-site"}, **upload).status_code == 403
    assert c.post("/api/images", headers={"sec-fetch-site": "same-site"}, **upload).status_code == 403   # another port or subdomain
    stored = c.post("/api/images", headers={"origin": "http://testserver"}, **upload)                # the page itself
    assert stored.status_code == 200 and len(stored.json()["hash"]) == 64
    assert c.post("/api/images", headers={"sec-fetch-site": "same-origin"}, **upload).status_code == 200
    assert c.get("/api/models", headers={"origin": "http://evil.example"}).status_code == 200        # reading changes nothing
    # a script holding the token itself may come from anywhere (a notebook's page, say)
    bearer = client(app).post("/api/images", headers={"origin": "http://notebook.example", "Authorization": f"Bearer {TOKEN}"}, **upload)
    assert bearer.status_code == 200


def test_the_document_declares_the_token(app):
    schema = client(app).get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert schema["components"]["securitySchemes"]["token"] == {"type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["token"]["description"]}
    assert schema["security"] == [{"token": []}]
    assert schema["paths"]["/api/health"]["get"]["security"] == []
    for path, operations in schema["paths"].items():
        if path != "/api/health":
            assert all("401" in op["responses"] for op in operations.values()), path


def test_no_answer_carries_the_token(app):
    """Bodies and headers of every kind of answer, the login's Set-Cookie aside (the cookie is
    the token's one way back)."""
    c = client(app)
    answers = [c.get("/api/models"), c.get("/", headers={"accept": "text/html"}), c.get("/?token=wrong-wrong-wrong-wrong"),
               c.get("/api/health")]
    login = c.get(f"/?token={TOKEN}")
    answers += [c.get("/", headers={"accept": "text/html"}), c.get("/api/models"), c.get("/api/models/fmnist_sact_resnet32"),
                c.get("/openapi.json"), c.post("/api/models/fmnist_sact_resnet32/image", json={"sample": 3}, headers={"origin": "http://testserver"}),
                c.post("/api/models/fmnist_sact_resnet32/image", json={"image": "0" * 64}, headers={"origin": "http://testserver"}),
                c.get("/api/models/nope")]
    assert {a.status_code for a in answers} >= {200, 401, 404}
    for answer in answers:
        assert TOKEN not in answer.text and TOKEN not in str(answer.headers), answer.request.url
    assert TOKEN not in login.headers["location"] and TOKEN in login.headers["set-cookie"]


# ------------------------------------------------------------------------------ `ponderscope serve`, as started
def start_serve(tmp_path, *args, env=None) -> ServerProcess:
    """`ponderscope serve --host 0.0.0.0` as a user starts it, only the token the test gives in its environment."""
    inherited = {"PONDERSCOPE_TOKEN": ""} if "PONDERSCOPE_TOKEN" in os.environ and "PONDERSCOPE_TOKEN" not in (env or {}) else {}
    server = ServerProcess([], str(tmp_path / "cache"), str(tmp_path / "serve.log"), env={**inherited, **(env or {})},
                           serve_args=["--host", "0.0.0.0", "--checkpoints", str(MODEL), "--execution", "masked", *args])
    server.wait_ready(timeout=90)
    return server


def status_of(request: urllib.request.Request) -> tuple[int, bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serve_beyond_loopback_prints_a_link_and_logs_the_token_nowhere_else(tmp_path):
    server = start_serve(tmp_path)
    url = server.url
    try:
        text = (tmp_path / "serve.log").read_text()
        token = re.search(r"http://127\.0\.0\.1:\d+/\?token=([0-9a-f]{48})\b", text).group(1)
        assert status_of(urllib.request.Request(url + "/api/models"))[0] == 401
        assert status_of(urllib.request.Request(url + "/api/models", headers={"Authorization": f"Bearer {token}"}))[0] == 200
        code, body = status_of(urllib.request.Request(f"{url}/?token={token}&view=text"))
        assert code == 303
        assert status_of(urllib.request.Request(f"{url}/?token=wrong{token}"))[0] == 401
        code, body = status_of(urllib.request.Request(url + "/api/models/fmnist_sact_resnet32/image", method="POST", data=b'{"sample": 1}',
                                                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}))
        assert code == 200 and token.encode() not in body
    finally:
        server.stop()
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert any("GET /?token=[redacted]&view=text" in line for line in lines)   # the access log kept the request, not the token
    with_token = [line for line in lines if token in line]
    assert with_token and all(re.fullmatch(rf"    http://[^ ]+:\d+/\?token={token}", line) for line in with_token), with_token
    first_other = next(i for i, line in enumerate(lines) if "Uvicorn running" in line or "Application startup complete" in line)
    assert all(i < first_other for i, line in enumerate(lines) if token in line)   # printed at start-up, and never again


def test_serve_with_a_given_token_and_with_none(tmp_path):
    server = start_serve(tmp_path, env={"PONDERSCOPE_TOKEN": TOKEN})
    try:
        assert f"/?token={TOKEN}" in (tmp_path / "serve.log").read_text()
        assert status_of(urllib.request.Request(server.url + "/api/models", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200
        assert status_of(urllib.request.Request(server.url + "/api/models"))[0] == 401
    finally:
        server.stop()
    (tmp_path / "serve.log").rename(tmp_path / "first.log")
    server = start_serve(tmp_path, "--no-token")
    try:
        assert status_of(urllib.request.Request(server.url + "/api/models"))[0] == 200
    finally:
        server.stop()
    text = (tmp_path / "serve.log").read_text()
    assert "WARNING" in text and "WITHOUT an access token" in text and "token=" not in text
    contradiction = subprocess.run([sys.executable, "-m", "ponderscope", "serve", "--host", "0.0.0.0", "--no-token", "--token", TOKEN],
                                   capture_output=True, text=True, timeout=60)
    assert contradiction.returncode == 2 and "not allowed with argument" in contradiction.stderr


def test_other_cookies_of_the_host_do_not_hide_ours(app):
    """A browser sends the host's cookies of every port and app; malformed ones among them are skipped."""
    c = client(app)
    for others in ("a=b c", 'x={"a":1}', "a(b)=1", "plain", "=empty"):
        for header in (f"{others}; {COOKIE}_default={TOKEN}", f"{COOKIE}_default={TOKEN}; {others}"):
            assert c.get("/api/models", headers={"cookie": header}).status_code == 200, header


def test_the_login_redirect_stays_on_this_site_and_keeps_the_path_escaped(app):
    c = client(app)
    cases = {f"/a%20b?token={TOKEN}": "/a%20b", f"/%E2%82%AC?token={TOKEN}&x=1": "/%E2%82%AC?x=1", f"/a%3Fb?token={TOKEN}": "/a%3Fb"}
    for address, location in cases.items():
        answer = c.get(address)
        assert answer.status_code == 303 and answer.headers["location"] == location, address
    # a path of "//host/..." (no HTTP client sends it as a path: straight to the middleware) stays here
    import asyncio

    from ponderscope.server.access import AccessToken

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "//evil.example/x", "query_string": f"token={TOKEN}".encode(), "headers": []}
    asyncio.run(AccessToken(None, AccessPolicy(TOKEN))(scope, None, send))
    assert sent[0]["status"] == 303 and dict(sent[0]["headers"])[b"location"] == b"/evil.example/x"


def test_an_https_origin_behind_a_tls_proxy_is_this_site(app):
    c = client(app)
    c.get(f"/?token={TOKEN}")
    upload = {"files": {"file": ("a.png", PNG, "image/png")}}
    assert c.post("/api/images", headers={"origin": "https://testserver"}, **upload).status_code == 200
    assert c.post("/api/images", headers={"origin": "https://testserver:444"}, **upload).status_code == 403
