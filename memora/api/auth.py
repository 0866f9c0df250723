"""Who is calling and what they may do: bearer tokens, roles and namespaces.

What lives here: finding the `TokenGrant` of a request's `Authorization: Bearer ...` header (in
constant time with respect to every configured token), and the checks of a grant's role and
namespaces. With no tokens configured, every caller is the principal "local" with every right.
What must not: anything about routes or records; the app decides which role an endpoint needs.
"""

from __future__ import annotations

import hmac
from typing import Final

import attrs

from memora.api.errors import ForbiddenError, UnauthenticatedError
from memora.api.settings import ALL_NAMESPACES, ApiSettings, Role, TokenGrant

OPEN_ACCESS_PRINCIPAL: Final = "local"
ROLE_RANK: Final = {Role.READ: 1, Role.WRITE: 2, Role.ADMIN: 3}
assert set(ROLE_RANK) == set(Role)


@attrs.frozen
class Caller:
    """The principal of a request and the grant it holds (None with open access)."""

    principal: str
    grant: TokenGrant | None

    def require(self, role: Role, namespace: str | None) -> None:
        """Raise ForbiddenError unless the caller holds `role` on `namespace` (None: the
        endpoint touches no namespace's data, so only the role counts)."""
        if self.grant is None:
            return
        if ROLE_RANK[self.grant.role] < ROLE_RANK[role]:
            raise ForbiddenError(f"this endpoint needs the {role.value} role", None)
        if namespace is not None and not self.may_see(namespace):
            raise ForbiddenError(
                f"the token does not grant access to namespace {namespace!r}", "namespace"
            )

    def may_see(self, namespace: str) -> bool:
        if self.grant is None:
            return True
        namespaces = self.grant.namespaces
        return ALL_NAMESPACES in namespaces or namespace in namespaces


# The caller of an endpoint that needs no token: no namespaces, the lowest role.
PUBLIC_CALLER: Final = Caller("anonymous", TokenGrant("", frozenset(), Role.READ, "anonymous"))


def identify(settings: ApiSettings, authorization: str | None) -> Caller:
    """The caller named by an Authorization header, or UnauthenticatedError."""
    if settings.open_access:
        return Caller(OPEN_ACCESS_PRINCIPAL, None)
    if authorization is None:
        raise UnauthenticatedError("a bearer token is required (Authorization: Bearer ...)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'")
    grant = _matching_grant(settings.tokens, token.strip())
    if grant is None:
        raise UnauthenticatedError("the bearer token is not valid")
    return Caller(grant.principal, grant)


def _matching_grant(grants: tuple[TokenGrant, ...], token: str) -> TokenGrant | None:
    """The grant of `token`, comparing against every grant so the time taken does not depend on
    which one (if any) matches or how long a prefix matched."""
    presented = token.encode("utf-8", "surrogatepass")
    found = None
    for grant in grants:
        if hmac.compare_digest(grant.token.encode("utf-8", "surrogatepass"), presented):
            found = grant
    return found
