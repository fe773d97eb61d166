"""The API description: each task type's payload schema, and a schemathesis run over it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from tests.api.servers import ApiServer, serving

from spillway.embedded import EmbeddedRedis


async def test_openapi_shows_each_task_types_payload_keyed_by_type(
    http: httpx.AsyncClient,
) -> None:
    doc = (await http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]

    new_task = schemas["NewTask"]
    assert new_task["discriminator"]["propertyName"] == "type"
    assert set(new_task["discriminator"]["mapping"]) == {"echo", "explode", "resize"}
    resize = schemas["ResizeSubmission"]
    assert resize["properties"]["type"]["const"] == "resize"
    assert resize["properties"]["payload"]["$ref"] == "#/components/schemas/Resize"
    assert schemas["Resize"]["properties"]["width"]["exclusiveMinimum"] == 0
    body = doc["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NewTask"}
    assert schemas["ProcessPayload"]["properties"] == schemas["Resize"]["properties"]


async def test_every_error_response_is_documented_as_problem_json(
    http: httpx.AsyncClient,
) -> None:
    doc = (await http.get("/openapi.json")).json()

    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method, path, code,
                    )  # fmt: skip


async def test_docs_page_is_served(http: httpx.AsyncClient) -> None:
    response = await http.get("/docs")

    assert response.status_code == 200
    assert "swagger" in response.text.lower()


@pytest.fixture(scope="module")
def fuzzed_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A server of its own: the tasks schemathesis submits must not reach other tests."""
    yield from serving(redis_server.url, tmp_path_factory.mktemp("api"))


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_request_the_schema_allows_or_breaks_gets_a_5xx(
    fuzzed_server: ApiServer, mode: GenerationMode
) -> None:
    """Schemathesis: valid and invalid requests for every operation; none may be a 5xx."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    server_errors: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # Err raises, as it should

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=fuzzed_server.url, timeout=10)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path}: {response.text}")

        try:
            call()
        except Unsatisfiable:
            # Nothing to break: no body and only unconstrained parameters (e.g. /healthz).
            assert mode is GenerationMode.NEGATIVE
            assert not operation.body
            assert not operation.query

    assert calls >= 100
    assert server_errors == []
