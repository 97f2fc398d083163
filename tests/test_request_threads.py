"""How many requests to the model routes the server works on at once (create_app's
request_threads, serve --request-threads; server/deps.py's AnswerRoute waits for a place): never
more, the others wait in line, and meanwhile GET /api/health and the static files answer."""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from conftest import uvicorn_in_thread
from fastapi.testclient import TestClient

from ponderscope.cli import build_parser
from ponderscope.server.app import create_app, default_request_threads
from ponderscope.server.deps import AnswerRoute


def no_models(tmp_path) -> list:
    """A checkpoints folder with nothing in it: the cap does not depend on the models."""
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    return [tmp_path / "checkpoints"]


def test_health_says_how_many(tmp_path):
    with TestClient(create_app(no_models(tmp_path), device="cpu", cache_dir=tmp_path, request_threads=3)) as client:
        assert client.get("/api/health").json() | {"load_errors": []} == {
            "status": "ok", "models": 0, "device": "cpu", "load_errors": [], "request_threads": 3}
    with TestClient(create_app(no_models(tmp_path), device="cpu", cache_dir=tmp_path)) as client:
        assert client.get("/api/health").json()["request_threads"] == default_request_threads() >= 2


def test_serve_refuses_a_cap_below_one():
    parser = build_parser()
    assert parser.parse_args(["serve", "--request-threads", "2"]).request_threads == 2
    assert parser.parse_args(["serve"]).request_threads is None
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--request-threads", "0"])


@pytest.mark.parametrize("cap", [1, 3])
def test_at_most_that_many_requests_run_at_once(tmp_path, cap):
    app = create_app(no_models(tmp_path), device="cpu", cache_dir=tmp_path, request_threads=cap)
    running, most, lock = [0], [0], threading.Lock()

    def slow() -> dict:  # a sync model route, as image, text and parity analysis are
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {}

    app.router.add_api_route("/slow", slow, methods=["GET"], route_class_override=AnswerRoute)

    statuses = []

    def get(port: int, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    with uvicorn_in_thread(app, timeout=30) as port:
        clients = [threading.Thread(target=lambda: statuses.append(get(port, "/slow").status)) for _ in range(6)]
        for client in clients:
            client.start()
        time.sleep(0.1)  # the first requests are in the route now, the rest in line
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/health")
        health = json.loads(conn.getresponse().read())
        conn.request("GET", "/static/vendor/plotly.min.js")  # ~4.6 MB, read in chunks by worker threads
        script = conn.getresponse()
        script_bytes = len(script.read())
        health_ms = (time.perf_counter() - start) * 1000
        conn.close()
        for client in clients:
            client.join(30)
    assert statuses == [200] * 6
    assert most[0] == cap  # never more at once, and the line was long enough to fill every place
    assert health["request_threads"] == cap
    assert script.status == 200 and script_bytes > 1_000_000
    assert health_ms < 150  # both answered while the slow requests ran and waited (6 x 200 ms / cap)
