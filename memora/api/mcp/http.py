"""MCP over streamable HTTP, inside `memora serve`.

What lives here: the ASGI front of the SDK's streamable HTTP app. It authenticates every request
with the REST API's bearer tokens and tenants (`memora.api.auth`), picks the namespace
(`?namespace=NAME`, else the server's MCP namespace), refuses a namespace the token does not
grant, and hands the SDK the request with the caller in its scope (`memora.api.mcp.access`).
It answers the ASGI lifespan itself: the SDK's session manager is run by `memora serve` in the
node's nursery (`session_manager_running`), not by the app.

DNS-rebinding protection (the SDK's Host and Origin checks) is always on. The allowed host
names are the loopback names, the address the server listens on, this machine's host name, the
cluster members' host names, and whatever `mcp_allowed_hosts` adds (a proxy's public name).
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from memora.api.auth import identify
from memora.api.errors import ForbiddenError
from memora.api.mcp.access import SCOPE_KEY, McpAccess
from memora.api.settings import ApiSettings
from memora.core import validate
from memora.core.errors import MemoraError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MCP_PATH: Final = "/mcp"
LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")


def allowed_host_names(
    listen_host: str, peer_hosts: Iterable[str], extra: Iterable[str]
) -> list[str]:
    """The host names an MCP request's Host header may carry (without the port)."""
    names = [*LOOPBACK_NAMES]
    if listen_host not in _WILDCARD_HOSTS:
        names.append(f"[{listen_host}]" if ":" in listen_host else listen_host)
    names.append(socket.gethostname())
    names.extend(f"[{host}]" if ":" in host else host for host in peer_hosts)
    names.extend(extra)
    return list(dict.fromkeys(names))


def transport_security(host_names: Iterable[str]) -> TransportSecuritySettings:
    names = list(host_names)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:*" for name in names] + names,
        allowed_origins=[
            f"{scheme}://{name}{port}"
            for name in names
            for scheme in ("http", "https")
            for port in (":*", "")
        ],
    )


def mcp_http_app(
    server: MCPServer[Any],
    settings: ApiSettings,
    namespace: str,
    host_names: Iterable[str],
) -> McpHttpApp:
    """The ASGI app serving `server` at /mcp, behind the REST API's tokens."""
    sdk_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=transport_security(host_names),
        max_request_body_size=settings.body_bytes_max,
    )
    return McpHttpApp(sdk_app, settings, namespace)


class McpHttpApp:
    """Authenticates a request and names its namespace, then passes it to the SDK's app."""

    def __init__(self, sdk_app: Any, settings: ApiSettings, namespace: str) -> None:
        self._sdk_app = sdk_app
        self._settings = settings
        self._namespace = namespace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            access = self._access(scope)
        except MemoraError as error:
            await _error(send, error)
            return
        await self._sdk_app({**scope, SCOPE_KEY: access}, receive, send)

    def _access(self, scope: Scope) -> McpAccess:
        headers = {key.decode("latin-1").lower(): value for key, value in scope["headers"]}
        authorization = headers.get("authorization")
        caller = identify(
            self._settings, None if authorization is None else authorization.decode("latin-1")
        )
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        namespace = validate.namespace_name(query.get("namespace", [self._namespace])[-1])
        if not caller.may_see(namespace):
            message = f"the token does not grant access to namespace {namespace!r}"
            raise ForbiddenError(message, "namespace")
        return McpAccess(caller, namespace)


_STATUS: Final = {"unauthenticated": 401, "forbidden": 403}


async def _error(send: Send, error: MemoraError) -> None:
    status = _STATUS.get(error.code, 400)
    body = json.dumps(
        {"error": {"code": error.code, "message": error.message, "field": error.field}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="memora"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
