"""A test client for the REST API that checks every answer against `/openapi.json`.

`ApiClient` sends through a `Transport`: Quart's test client on the app in-process
(`QuartTransport`), or real HTTP to a running server with httpx (`HttpxTransport`) or requests
(`RequestsTransport`, in a worker thread). Every answer it sees is checked: an answer on a
documented operation must have a documented status and, for JSON, a body valid under that status's
schema (jsonschema, Draft 2020-12); an answer off the spec must be a JSON error (404 or 405); the
only 5xx allowed is a documented 503 (the node unavailable or the request timed out). So every test
that goes through it also tests that the spec matches the real behaviour. `seen` records the
(method, path template, status) triples, for the coverage test.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any, Final, Protocol

import attrs
import httpx
import jsonschema
import requests
import trio
from quart_trio import QuartTrio

from memora.api.openapi import spec

SPEC = spec()
# A request to a real server on loopback may take this long before the test fails.
http_timeout_s: Final = 10.0


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def error_code(self) -> str:
        code: str = self.json["error"]["code"]
        return code

    @property
    def error_field(self) -> str | None:
        field: str | None = self.json["error"]["field"]
        return field


def _template_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$")


_TEMPLATES = [(template, _template_pattern(template)) for template in SPEC["paths"]]


def path_template(path: str) -> str | None:
    """The documented path template `path` matches, preferring literal segments."""
    matches = [template for template, pattern in _TEMPLATES if pattern.match(path)]
    if not matches:
        return None
    return min(matches, key=lambda template: template.count("{"))


def response_schema(template: str, method: str, status: int) -> dict[str, Any] | None:
    """The documented JSON schema of an answer, None for a text answer; fails if undocumented."""
    operation = SPEC["paths"][template][method.lower()]
    documented = operation["responses"]
    assert str(status) in documented, f"{method} {template} answered {status}, not documented"
    content = documented[str(status)]["content"]
    media = content.get("application/json")
    return None if media is None else media["schema"]


def check_conformance(method: str, path: str, reply: Reply) -> tuple[str, str, int]:
    """Fail unless `reply` is what the spec says `method path` answers."""
    assert reply.status in (200, 201, 503) or 400 <= reply.status < 500, (method, path, reply)
    if method == "HEAD":  # Served wherever GET is (the HTTP server drops the body).
        template = path_template(path)
        served = template is not None and "get" in SPEC["paths"][template]
        assert served or reply.status in (404, 405), (path, reply)
        return method, template or path, reply.status
    template = path_template(path)
    if template is None or method.lower() not in SPEC["paths"][template]:
        assert reply.status in (404, 405), (method, path, reply.status)
        validate(reply.json, {"$ref": "#/components/schemas/Error"})
        return method, path, reply.status
    schema = response_schema(template, method, reply.status)
    if schema is None:
        assert reply.headers["content-type"].startswith("text/"), reply.headers
    else:
        assert reply.headers["content-type"] == "application/json", reply.headers
        validate(reply.json, schema)
    return method, template, reply.status


def validate(instance: Any, schema: dict[str, Any]) -> None:
    rooted = {**schema, "components": SPEC["components"]}
    jsonschema.Draft202012Validator(rooted).validate(instance)


class Transport(Protocol):
    async def send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        headers: dict[str, str],
        data: bytes | None,
    ) -> Reply: ...


class QuartTransport:
    """The app in-process, through Quart's test client."""

    def __init__(self, app: QuartTrio) -> None:
        self._client = app.test_client()

    async def send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        headers: dict[str, str],
        data: bytes | None,
    ) -> Reply:
        response = await self._client.open(
            path, method=method, data=data, query_string=query, headers=headers
        )
        text = (await response.get_data()).decode()
        return Reply(response.status_code, _lower(response.headers.items()), text)


class HttpxTransport:
    """A running server over real HTTP, with an `httpx.AsyncClient` (keep-alive)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        headers: dict[str, str],
        data: bytes | None,
    ) -> Reply:
        response = await self._client.request(
            method, path, params=query, headers=headers, content=data
        )
        return Reply(response.status_code, _lower(response.headers.items()), response.text)


class RequestsTransport:
    """A running server over real HTTP, with a `requests.Session` run in a worker thread."""

    def __init__(self, session: requests.Session, url: str) -> None:
        self._session = session
        self._url = url

    async def send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        headers: dict[str, str],
        data: bytes | None,
    ) -> Reply:
        response = await trio.to_thread.run_sync(
            functools.partial(
                self._session.request,
                method,
                self._url + path,
                params=query,
                headers=headers,
                data=data,
                timeout=http_timeout_s,
            )
        )
        return Reply(response.status_code, _lower(response.headers.items()), response.text)


def _lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


class ApiClient:
    """Requests to the API, each answer checked against the spec."""

    def __init__(self, transport: Transport | QuartTrio, token: str | None = None) -> None:
        if isinstance(transport, QuartTrio):
            transport = QuartTransport(transport)
        self._transport = transport
        self._token = token
        self.seen: set[tuple[str, str, int]] = set()

    def with_token(self, token: str | None) -> ApiClient:
        other = ApiClient(self._transport, token)
        other.seen = self.seen
        return other

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        if self._token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self._token}")
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        reply = await self._transport.send(method, path, query, all_headers, data)
        self.seen.add(check_conformance(method, path, reply))
        return reply

    async def get(self, path: str, **options: Any) -> Reply:
        return await self.request("GET", path, **options)

    async def post(self, path: str, body: Any = None, **options: Any) -> Reply:
        return await self.request("POST", path, body=body, **options)

    async def patch(self, path: str, body: Any = None, **options: Any) -> Reply:
        return await self.request("PATCH", path, body=body, **options)

    async def delete(self, path: str, **options: Any) -> Reply:
        return await self.request("DELETE", path, **options)
