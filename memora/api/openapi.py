"""The catalogue of every endpoint, and the OpenAPI 3.1 document built from it.

What lives here: `ENDPOINTS` (all of them, including `/openapi.json` and the `/docs` page, which
renders the document offline with the app's own HTML and JavaScript), `build_spec`, and the
error answers each endpoint can give. The app registers exactly `ENDPOINTS` and the document
describes exactly `ENDPOINTS`, so the two cannot disagree on what exists. What must not: request
handling beyond serving these two documents.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any, Final

from memora.api import (
    endpoints_cluster,
    endpoints_node,
    endpoints_queries,
    endpoints_records,
    schemas,
)
from memora.api.routing import Answer, Call, Endpoint, Parameter, Tenancy

_ERROR_DESCRIPTIONS: Final = {
    400: "The request does not match this document: a wrong type, a value out of range, a "
    "missing or unknown field, malformed JSON (code invalid or bad_encoding); `field` names it.",
    401: "No bearer token, or an unknown one (code unauthenticated).",
    403: "The token's role or namespaces do not cover this request (code forbidden).",
    404: "A record or namespace that does not exist, or a path that names no resource (code "
    "not_found).",
    409: "A duplicate id or unique name, or a superseded client sequence (code conflict); a "
    "membership change that does not fit the configuration (invalid_configuration_change) or "
    "is asked of a node running alone (not_clustered).",
    413: "The request body is larger than the server's limit (code body_too_large).",
    422: "The request matches this document but is refused: a text over its limit in UTF-8 bytes "
    "or another limit (code too_large), a vector whose length is not the namespace's dimension "
    "(code wrong_dimension), or a rule joining fields or the state (code unprocessable: fields "
    "that exclude each other, an as_of after the applied index, a min_commit_index no write has "
    "returned, a node without a vector).",
    503: "Unavailable, no leader, or the request timed out; retry after Retry-After seconds "
    "(codes unavailable, not_leader, timeout). A write's outcome is then unknown: retry with "
    "the same client session headers to apply it once.",
}


def error_statuses(endpoint: Endpoint) -> tuple[int, ...]:
    """The error statuses an endpoint can answer with."""
    statuses = {503}
    if endpoint.parameters or endpoint.body is not None:
        statuses |= {400, 422}
    if endpoint.body is not None:
        statuses.add(413)
    if endpoint.role is not None:
        statuses |= {401, 403}
    in_path = any(parameter.location == "path" for parameter in endpoint.parameters)
    if endpoint.tenancy is not Tenancy.NODE or endpoint.writes or in_path:
        statuses.add(404)  # A path segment that does not route is not found, too.
    if endpoint.writes or endpoint.conflicts:
        statuses.add(409)
    return tuple(sorted(statuses))


def _parameter_spec(parameter: Parameter) -> dict[str, Any]:
    return {
        "name": parameter.name,
        "in": parameter.location,
        "required": parameter.required,
        "description": parameter.description,
        "schema": parameter.schema,
    }


def _success_content(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.answer:
        return {endpoint.media_type: {"schema": schemas.ref(endpoint.answer)}}
    return {endpoint.media_type: {"schema": {"type": "string"}}}


def _operation_spec(endpoint: Endpoint) -> dict[str, Any]:
    error = {"application/json": {"schema": schemas.ref("Error")}}
    responses: dict[str, Any] = {
        str(endpoint.status): {"description": "Success.", "content": _success_content(endpoint)}
    }
    for status in error_statuses(endpoint):
        responses[str(status)] = {"description": _ERROR_DESCRIPTIONS[status], "content": error}
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "parameters": [_parameter_spec(parameter) for parameter in endpoint.parameters],
        "responses": responses,
    }
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.body is not None:
        content = {"application/json": {"schema": schemas.ref(endpoint.body)}}
        operation["requestBody"] = {"required": True, "content": content}
    operation["security"] = [] if endpoint.role is None else [{"bearer": []}]
    return operation


def build_spec(endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operations = paths.setdefault(endpoint.path, {})
        assert endpoint.method.lower() not in operations, (endpoint.method, endpoint.path)
        operations[endpoint.method.lower()] = _operation_spec(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Memora REST API",
            "version": "1",
            "description": _API_DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": schemas.COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_API_DESCRIPTION: Final = (
    "A replicated hybrid graph + vector database. Every record lives in a namespace, chosen by "
    "the `namespace` query parameter (the server's default namespace when absent). Every write "
    "answers with `commit_index`; pass it as `min_commit_index` to a later read. Writes may "
    "carry `X-Memora-Client-Id` and `X-Memora-Sequence` so that a retry applies once. Errors "
    'are `{"error": {"code", "message", "field"}}`. With tokens configured, every endpoint '
    "but health, this document and /docs needs `Authorization: Bearer <token>`; roles are read "
    "< write < admin."
)


@functools.cache
def spec() -> dict[str, Any]:
    return build_spec(ENDPOINTS)


@functools.cache
def _docs_page() -> str:
    return importlib.resources.files("memora.api").joinpath("static/docs.html").read_text()


async def openapi_document(call: Call) -> Answer:
    return Answer(200, spec())


async def docs_page(call: Call) -> Answer:
    return Answer(200, _docs_page(), "text/html; charset=utf-8")


_OWN_ENDPOINTS: Final = (
    Endpoint("GET", "/openapi.json", "openapi", "This document", None, openapi_document,
             "OpenApiDocument", tenancy=Tenancy.NODE),
    Endpoint("GET", "/docs", "docs", "This document as a web page, offline", None, docs_page,
             "", tenancy=Tenancy.NODE, media_type="text/html"),
)  # fmt: skip

ENDPOINTS: Final = (
    *endpoints_node.ENDPOINTS,
    *endpoints_cluster.ENDPOINTS,
    *endpoints_records.ENDPOINTS,
    *endpoints_queries.ENDPOINTS,
    *_OWN_ENDPOINTS,
)
