"""`memora.AsyncClient`: the async client of a Memora server or cluster, on `httpx.AsyncClient`.

What lives here: the `AsyncClient` class, whose methods are coroutines of the same operations,
with the same signatures, as `memora.Client`'s, and the loop that runs one
`memora.client.calls.Call` over HTTP. It runs on trio (and on asyncio) through anyio, which
httpx uses. What must not: any decision about retries, routing or answers (the sans-I/O core
makes them), or anything `memora.Client` would need too (`memora.client.base` has it), so the
two behave the same.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import httpx

from memora.client import configure, reads, writes
from memora.client.base import ClientBase, http_request, report_answer, report_failure
from memora.client.calls import LeaderProbe
from memora.client.protocol import (
    Consistency,
    Done,
    Exchange,
    Machine,
    RetryPolicy,
    Sleep,
    operation_method,
)

P = ParamSpec("P")
T = TypeVar("T")


def _awaitable(
    build: Callable[P, Exchange[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    """A coroutine method of `AsyncClient` that runs the exchange `build` makes."""

    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._perform(build(*args, **kwargs))

    return operation_method(build, method)


class AsyncClient(ClientBase):
    """The async twin of `memora.Client`: the same arguments, operations and behaviour (see
    there), each operation a coroutine. `async with AsyncClient(urls) as client: ...`.

    Tasks share the connections and take turns to write (one session, one sequence)."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        token: str | None = None,
        namespace: str | None = None,
        consistency: Consistency = "linearizable",
        client_id: str | int | None = None,
        last_sequence: int = 0,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        state = configure.client_state(
            urls,
            token=token,
            namespace=namespace,
            consistency=consistency,
            client_id=client_id,
            last_sequence=last_sequence,
            policy=policy or RetryPolicy(),
        )
        super().__init__(state)
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
        self._write_turn = anyio.Lock()

    # -- Closing ----------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._http.aclose()

    async def close(self) -> None:
        """`aclose`, under the embedded store's name."""
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- Running a call ---------------------------------------------------------------------------

    async def _perform(self, exchange: Exchange[T]) -> T:
        call = self._start(exchange, anyio.current_time())
        if not call.writes:
            value: T = await self._drive(call)
            return value
        async with self._write_turn:
            if self._state.router.probe_due:
                await self._drive(LeaderProbe(self._state, anyio.current_time()))
            value = await self._drive(call)
            return value

    async def _drive(self, machine: Machine) -> Any:
        while True:
            action = machine.next_action(anyio.current_time())
            if isinstance(action, Done):
                return action.value
            if isinstance(action, Sleep):
                await anyio.sleep(action.seconds)
                continue
            try:
                request = http_request(self._http, action, self._state.policy)
                response = await self._http.send(request)
            except httpx.TransportError as error:
                report_failure(machine, error, anyio.current_time())
                continue
            report_answer(machine, response, anyio.current_time())

    # -- Operations (the embedded store's, by name, arguments and return type) ---------------------

    create_namespace = _awaitable(writes.create_namespace)
    insert_node = _awaitable(writes.insert_node)
    update_node = _awaitable(writes.update_node)
    delete_node = _awaitable(writes.delete_node)
    insert_vector = _awaitable(writes.insert_vector)
    insert_edge = _awaitable(writes.insert_edge)
    update_edge = _awaitable(writes.update_edge)
    delete_edge = _awaitable(writes.delete_edge)
    add_observation = _awaitable(writes.add_observation)
    delete_observation = _awaitable(writes.delete_observation)
    batch = _awaitable(writes.batch)

    get_node = _awaitable(reads.get_node)
    get_edge = _awaitable(reads.get_edge)
    get_observation = _awaitable(reads.get_observation)
    node_history = _awaitable(reads.node_history)
    edges_of = _awaitable(reads.edges_of)
    observations_of = _awaitable(reads.observations_of)
    list_nodes = _awaitable(reads.list_nodes)
    query_related = _awaitable(reads.query_related)
    query_related_nodes = _awaitable(reads.query_related_nodes)
    query_similar = _awaitable(reads.query_similar)
    query_hybrid = _awaitable(reads.query_hybrid)
    query_hybrid_by_vector = _awaitable(reads.query_hybrid_by_vector)
    query_hybrid_by_text = _awaitable(reads.query_hybrid_by_text)

    get_namespace = _awaitable(reads.get_namespace)
    list_namespaces = _awaitable(reads.list_namespaces)
    health = _awaitable(reads.health)
    metrics = _awaitable(reads.metrics)
    snapshot = _awaitable(reads.snapshot)
