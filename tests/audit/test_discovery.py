"""audit/discovery.py: only safe requests are derived from an OpenAPI document."""

from __future__ import annotations

from stalwart.audit.discovery import Routes, discover

JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {}}}}


def test_reads_item_reads_and_json_bodies_api_routes_first() -> None:
    document = {
        "paths": {
            "/": {"get": {}},
            "/api/v1/notes": {"get": {}, "post": JSON_BODY},
            "/api/v1/notes/{note_id}": {"get": {}, "patch": JSON_BODY, "delete": {}},
            "/api/v1/me/export": {"get": {}},
            "/api/v1/auth/logout": {"post": {}},
            "/api/monitor": {"get": {}},
            "/health": {"get": {}},
            "/upload": {"post": {"requestBody": {"required": True, "content": {"multipart/form-data": {}}}}},
            "/optional": {"post": {"requestBody": {"content": {"application/json": {}}}}},
        }
    }
    assert discover(document) == Routes(
        reads=["/api/v1/notes", "/"],
        item_reads=["/api/v1/notes/audit-0"],
        json_bodies=[("POST", "/api/v1/notes"), ("PATCH", "/api/v1/notes/audit-0")],
    )


def test_at_most_limit_of_each_kind() -> None:
    paths = {f"/api/r{i}": {"get": {}, "post": JSON_BODY} for i in range(10)}
    routes = discover({"paths": paths}, limit=3)
    assert len(routes.reads) == 3
    assert len(routes.json_bodies) == 3


def test_anything_else_finds_nothing() -> None:
    odd = {"//x:y": {"get": {}}, "//[::1": {"get": {}}, "/a b": {"get": {}}, "/\u00e9": {"get": {}}}
    for document in (None, [], "x", {"paths": []}, {"paths": {"/a": None, "b": {"get": {}}}}, {"paths": odd}):
        assert discover(document) == Routes()
