"""The client library of a Memora server or cluster: `Client` (blocking) and `AsyncClient`
(trio or asyncio), over the REST API, with the embedded `memora.Memora`'s operations.

What lives here: the public names. The package is a sans-I/O core and two thin drivers:
- `protocol`: requests, exchanges, the driver's actions, `RetryPolicy`;
- `writes`, `reads`: every operation as an exchange (request out, JSON in, records back);
- `records`: JSON to and from `memora.core.types`; `errors`: the typed errors;
- `calls`: one call's retries and failover, the exactly-once session, the leader hint;
- `configure`: the checks of a client's arguments;
- `base`: what both clients share, all but the I/O;
- `sync_client` on `httpx.Client`, `async_client` on `httpx.AsyncClient`.
What must not: import the server's layers (`memora.api`, `memora.net`, `memora.service`): a
client needs only httpx, numpy and `memora.core`'s types.
"""

from memora.client.async_client import AsyncClient
from memora.client.errors import (
    BadAnswerError,
    ClientClosedError,
    ClientError,
    ForbiddenError,
    UnauthenticatedError,
    UnavailableError,
    UnprocessableError,
)
from memora.client.protocol import RetryPolicy
from memora.client.sync_client import Client

__all__ = [
    "AsyncClient",
    "BadAnswerError",
    "Client",
    "ClientClosedError",
    "ClientError",
    "ForbiddenError",
    "RetryPolicy",
    "UnauthenticatedError",
    "UnavailableError",
    "UnprocessableError",
]
