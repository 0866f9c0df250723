"""What the REST layer is configured with: API tokens and request limits.

`memora serve` builds an `ApiSettings` from its config file and the environment; the app factory
(`memora.api.app.create_app`) takes it. With no tokens, the API is open and the server binds to
127.0.0.1 only.
"""

from __future__ import annotations

import enum

import attrs

from memora.core import constants


class Role(enum.StrEnum):
    """What a token may do. Each role includes the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


ALL_NAMESPACES = "*"


@attrs.frozen
class TokenGrant:
    """A bearer token, the namespaces it may touch (`"*"` for all) and its role.

    `principal` is recorded as the author of every write made with the token."""

    token: str
    namespaces: frozenset[str]
    role: Role
    principal: str


@attrs.frozen
class ApiSettings:
    tokens: tuple[TokenGrant, ...] = ()
    body_bytes_max: int = 8 * 1024 * 1024
    request_timeout_s: float = 30.0
    default_namespace: str = constants.namespace_default

    @property
    def open_access(self) -> bool:
        """No tokens configured: every request is allowed (and the server binds to loopback)."""
        return not self.tokens
