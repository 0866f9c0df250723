"""What `memora.Client` and `memora.AsyncClient` share: everything but the I/O.

What lives here: `ClientBase`, the client's session and cluster as properties and the start of
a call (a closed client sends nothing), and the parts of one attempt that neither block nor
await: the httpx request a `Send` action stands for, and its answer or failure reported to the
sans-I/O core. What must not: send, sleep or take a lock; the two drivers do that, one blocking
and one awaiting, and nothing else.
"""

from __future__ import annotations

from typing import TypeVar

import httpx

from memora.client.calls import Call, ClientState
from memora.client.errors import ClientClosedError
from memora.client.protocol import Exchange, Machine, RetryPolicy, Send

T = TypeVar("T")


class ClientBase:
    """The state both clients keep, and what a call needs before its first request."""

    def __init__(self, state: ClientState) -> None:
        self._state = state
        self._closed = False  # Set by the driver's close; a closed client starts no call.

    # -- The session and the cluster, as this client knows them -----------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        return self._state.router.urls

    @property
    def namespace(self) -> str | None:
        return self._state.namespace

    @property
    def client_id(self) -> str:
        return self._state.session.client_id

    @property
    def last_sequence(self) -> int:
        """The sequence number of this session's latest write (0 before the first)."""
        return self._state.session.sequence

    @property
    def commit_index(self) -> int:
        """The highest commit index a write of this client returned (0 before the first)."""
        return self._state.session.commit_index

    @property
    def leader_url(self) -> str | None:
        """The URL whose health last said it leads, if one did since the last failover."""
        leader = self._state.router.leader
        return None if leader is None else self._state.router.urls[leader]

    # -- Starting a call --------------------------------------------------------------------------

    def _start(self, exchange: Exchange[T], now: float) -> Call[T]:
        """The call that runs `exchange`; bad arguments raise here, before any request."""
        if self._closed:
            exchange.close()
            raise ClientClosedError("the client is closed")
        return Call(exchange, self._state, now)


def http_request(
    http: httpx.Client | httpx.AsyncClient, action: Send, policy: RetryPolicy
) -> httpx.Request:
    """The request of one attempt: `action.timeout_s` in all, and to connect at most the
    policy's `connect_timeout_s`."""
    connect_s = min(policy.connect_timeout_s, action.timeout_s)
    return http.build_request(
        action.method,
        action.url,
        params=action.query,
        headers=action.headers,
        content=action.content,
        timeout=httpx.Timeout(action.timeout_s, connect=connect_s),
    )


def report_answer(machine: Machine, response: httpx.Response, now: float) -> None:
    retry_after = response.headers.get("Retry-After")
    machine.answered(response.status_code, retry_after, response.content, now)


def report_failure(machine: Machine, error: httpx.TransportError, now: float) -> None:
    """A transport error in words (its class, and its message when it has one) to `machine`."""
    detail = str(error)
    machine.failed(f"{type(error).__name__}: {detail}" if detail else type(error).__name__, now)
