"""`/openapi.json` against the app: the routes served and the operations documented are the same
set, the schemas are valid JSON Schema with every reference resolving, the conformance check
that every other test relies on does reject a wrong answer, and `/docs` works offline."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from api_client import SPEC, ApiClient, Reply, check_conformance

from memora.api.app import create_app
from memora.api.settings import ApiSettings
from memora.net.driver import NodeDriver


def served_operations(node: NodeDriver) -> set[tuple[str, str]]:
    app = create_app(node, ApiSettings())
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<([a-z_]+)>", r"{\1}", rule.rule)
        served |= {(method, path) for method in rule.methods or () if method != "HEAD"}
    return served


@pytest.mark.trio
async def test_every_route_served_is_documented_and_every_documented_one_served(
    node: NodeDriver,
) -> None:
    documented = {
        (method.upper(), path) for path, methods in SPEC["paths"].items() for method in methods
    }
    assert served_operations(node) == documented
    assert ("POST", "/api/v1/query/hybrid") in documented
    assert ("GET", "/metrics") in documented


def test_the_document_is_valid_json_schema_with_resolving_references() -> None:
    assert SPEC["openapi"] == "3.1.0"
    for schema in SPEC["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(SPEC)
    for reference in set(re.findall(r'"\$ref": "#/components/schemas/([A-Za-z]+)"', text)):
        assert reference in SPEC["components"]["schemas"], reference
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            assert operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                assert 200 <= int(status) < 600 and response["content"], (method, path, status)
            names = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
            assert names == re.findall(r"\{([a-z_]+)\}", path), (method, path)


def test_the_conformance_check_rejects_answers_the_spec_does_not_describe() -> None:
    json_headers = {"content-type": "application/json"}
    good = json.dumps({"snapshot_index": 3})
    assert check_conformance("POST", "/api/v1/snapshot", Reply(200, json_headers, good))
    wrong_shape = Reply(200, json_headers, json.dumps({"snapshot_index": "3"}))
    undocumented_status = Reply(418, json_headers, good)
    server_error = Reply(500, json_headers, good)
    for reply in (wrong_shape, undocumented_status, server_error):
        with pytest.raises((AssertionError, jsonschema.ValidationError)):
            check_conformance("POST", "/api/v1/snapshot", reply)


@pytest.mark.trio
async def test_the_docs_page_renders_the_spec_with_nothing_from_elsewhere(
    client: ApiClient,
) -> None:
    page = await client.get("/docs")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("/openapi.json")' in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert "http://" not in page.text and "https://" not in page.text
    document = await client.get("/openapi.json")
    assert document.json == SPEC
