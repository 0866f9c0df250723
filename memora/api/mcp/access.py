"""Who calls an MCP tool, and in which namespace.

Over stdio the caller is the local user, with every right, in the namespace `memora mcp` was
started with. Over streamable HTTP every request carries its own bearer token (checked by
`memora.api.mcp.http` before the SDK sees the request) and may pick a namespace with the query
parameter `?namespace=`; the grant found for it rides in the ASGI scope to the tool, which
checks the role it needs here. A request's grant is checked on every call, not once per MCP
session, so a session id alone never carries rights.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from memora.api.auth import Caller
from memora.api.settings import Role
from memora.core.errors import MemoraError

SCOPE_KEY: Final = "memora.mcp_access"


@attrs.frozen
class McpAccess:
    """The caller of one MCP request and the namespace it works in."""

    caller: Caller
    namespace: str

    def require(self, role: Role) -> None:
        try:
            self.caller.require(role, self.namespace)
        except MemoraError as error:
            raise ToolError(f"{error.code}: {error}") from error


class AccessResolver:
    """Finds the `McpAccess` of a tool call: from the HTTP request's scope, else the default."""

    def __init__(self, default: McpAccess | None) -> None:
        self._default = default

    def __call__(self, context: Context[Any]) -> McpAccess:
        request = context.request_context.request
        scope = getattr(request, "scope", None)
        if scope is not None:
            access = scope.get(SCOPE_KEY)
            assert isinstance(access, McpAccess), "the HTTP app must authenticate every request"
            return access
        if self._default is None:
            raise ToolError("unauthenticated: this transport carries no caller")
        return self._default
