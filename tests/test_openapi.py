"""The OpenAPI document tells the truth: schemathesis generates requests from it (bounded
examples per operation) and checks every answer: no server error, a documented status code and
content type, a body that matches the documented schema, and requests valid by the document
accepted. The server runs as beyond loopback, asking for its access token (server/access.py):
every request carries it, as a client following the document's security scheme does."""
from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from ponderscope.server.access import AccessPolicy
from ponderscope.server.app import create_app

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
TOKEN = "openapi-check-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    app = create_app([CHECKPOINTS], device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), access=AccessPolicy(TOKEN))
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers=BEARER)
    app.state.dataset_jobs.close()  # the dataset jobs the generated requests started


def operations():
    app = create_app([CHECKPOINTS], device="cpu", access=AccessPolicy(TOKEN))
    return [result.ok().label for result in schemathesis.openapi.from_asgi("/openapi.json", app, headers=BEARER).get_all_operations()]


@pytest.mark.parametrize("label", operations())
def test_every_answer_is_as_documented(api_schema, label):
    """Hypothesis drives each operation directly (schemathesis' pytest plugin does not load under
    this pytest); failures are shrunk to the smallest request and reported with a curl line."""
    operation = next(result.ok() for result in api_schema.get_all_operations() if result.ok().label == label)

    # An upload valid by the document may still be no image: what a file holds, JSON Schema cannot
    # say, so those two operations are not held to "valid by the document is accepted".
    excluded = [positive_data_acceptance] if label in ("POST /api/images", "POST /api/models/{model_id}/image") else []

    @given(case=operation.as_strategy())
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def answers_as_documented(case):
        case.call_and_validate(headers=BEARER, excluded_checks=excluded)

    answers_as_documented()
