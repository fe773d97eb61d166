"""The OpenAPI document: one submission schema per task type, problem+json for every error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from spillway.api.auth import PUBLIC_PATHS
from spillway.api.schemas import submission_schemas
from spillway.app import Spillway

__all__ = ["openapi_builder"]


def openapi_builder(api: FastAPI, app: Spillway) -> Callable[[], dict[str, Any]]:
    """OpenAPI with one submission schema per task type and problem+json for every error."""

    def build() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        doc = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        single, item, defs = submission_schemas(app.tasks)
        schemas.update(defs)
        schemas["NewTask"] = single
        max_batch = app.settings.max_batch
        schemas["NewBatch"] = {
            "type": "object",
            "title": "NewBatch",
            "required": ["tasks"],
            "additionalProperties": False,
            "properties": {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_batch,
                    "items": {"$ref": "#/components/schemas/NewBatchItem"},
                }
            },
        }
        schemas["NewBatchItem"] = item
        default_type = app.settings.default_task_type
        if default_type is not None:
            payload = app.resolve(default_type).adapter.json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(payload.pop("$defs", {}))
            schemas["ProcessPayload"] = payload
        problem = {"$ref": "#/components/schemas/ProblemDoc"}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                for code, response in operation.get("responses", {}).items():
                    if code.isdigit() and int(code) >= 400:
                        response["content"] = {"application/problem+json": {"schema": problem}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        if app.settings.api_keys or app.settings.admin_keys:
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            doc["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in PUBLIC_PATHS & doc["paths"].keys():
                for operation in doc["paths"][path].values():
                    operation["security"] = []
        api.openapi_schema = doc
        return doc

    return build
