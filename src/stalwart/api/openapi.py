"""The OpenAPI document, made true to what the service sends."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["install_openapi"]

_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
_VALIDATION_PROBLEM = "#/components/schemas/ValidationProblem"


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for code, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if code.isdigit() and int(code) >= 400 and "application/json" in content:
                            content["application/problem+json"] = content.pop("application/json")
                        problem = content.get("application/problem+json", {})
                        if problem.get("schema") == _FASTAPI_422:
                            # FastAPI adds its own 422 model to operations with parameters;
                            # the error handlers answer with ValidationProblem instead.
                            problem["schema"] = {"$ref": _VALIDATION_PROBLEM}
            components = schema.get("components", {}).get("schemas", {})
            if _FASTAPI_422["$ref"] not in str(schema.get("paths")):
                components.pop("HTTPValidationError", None)
                components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
