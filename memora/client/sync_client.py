"""`memora.Client`: the blocking client of a Memora server or cluster, on `httpx.Client`.

What lives here: the `Client` class, whose methods are the operations of
`memora.client.writes` and `memora.client.reads` (the embedded `memora.Memora`'s, by name,
arguments and return types), and the blocking loop that runs one `memora.client.calls.Call`
over HTTP. What must not: any decision about retries, routing or answers (the sans-I/O core
makes them), or anything `memora.AsyncClient` would need too (`memora.client.base` has it), so
the two behave the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

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


def _blocking(build: Callable[P, Exchange[T]]) -> Callable[Concatenate[Client, P], T]:
    """A method of `Client` that runs the exchange `build` makes, with `build`'s signature."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._perform(build(*args, **kwargs))

    return operation_method(build, method)


class Client(ClientBase):
    """A blocking client of a Memora server or cluster, over its REST API.

    `Client(["http://127.0.0.1:8081", "http://127.0.0.1:8082"], token=...)`; best as a context
    manager. It has the embedded `memora.Memora`'s operations, with the same names, arguments
    and return types, and these differences (`tests/client/test_client.py` checks them):
    - reads also take `consistency` and `min_commit_index`; writes of text take `embed`;
    - missing, as REST lacks them: `open`, `get_node_by_name`, `state_hash`, `content_hash`,
      `stats`, `applied_index` (see `health()`, `get_namespace()`, `metrics()`);
    - `query_related*` return at most `list_limit_max` nodes (REST's page), the default limit;
    - `query_similar` by vector takes no `ef`; `batch` cannot create a namespace;
    - REST only: `get_observation`, `query_hybrid_by_text`, `get_namespace`,
      `list_namespaces`, `health`, `metrics`.

    - Failover: a call that meets a refused connection, a timeout or a 503 tries the next URL,
      sleeping between rounds (`RetryPolicy`), until `policy.deadline_s`; then it raises
      `UnavailableError`. A refusal (4xx) is raised at once as its typed error.
    - Exactly once: every write carries this client's id and the next sequence number; a retry
      of the write reuses its number, so the server applies it once. Writes of one client are
      therefore sent one at a time; use several clients to write in parallel. A `client_id`
      given to resume a session needs the `last_sequence` it used.
    - Leader: any node serves any request, but writes go to the node whose health says it
      leads (one hop less), looked up before the first write and after a failover.
    - Read your writes: `lease` and `follower` reads carry the highest commit index this
      client's writes returned as `min_commit_index`; `linearizable` reads see them anyway.

    Thread-safe: threads share the connections and take turns to write.
    """

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`namespace` None uses the server's default namespace; `consistency` is the default
        of reads; `transport` replaces httpx's (tests use it to lose answers)."""
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
        self._http = httpx.Client(transport=transport, follow_redirects=False, trust_env=False)
        self._write_turn = threading.Lock()

    # -- Closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- Running a call ---------------------------------------------------------------------------

    def _perform(self, exchange: Exchange[T]) -> T:
        call = self._start(exchange, time.monotonic())
        if not call.writes:
            value: T = self._drive(call)
            return value
        with self._write_turn:
            if self._state.router.probe_due:
                self._drive(LeaderProbe(self._state, time.monotonic()))
            value = self._drive(call)
            return value

    def _drive(self, machine: Machine) -> Any:
        while True:
            action = machine.next_action(time.monotonic())
            if isinstance(action, Done):
                return action.value
            if isinstance(action, Sleep):
                time.sleep(action.seconds)
                continue
            try:
                request = http_request(self._http, action, self._state.policy)
                response = self._http.send(request)
            except httpx.TransportError as error:
                report_failure(machine, error, time.monotonic())
                continue
            report_answer(machine, response, time.monotonic())

    # -- Operations (the embedded store's, by name, arguments and return type) ---------------------

    create_namespace = _blocking(writes.create_namespace)
    insert_node = _blocking(writes.insert_node)
    update_node = _blocking(writes.update_node)
    delete_node = _blocking(writes.delete_node)
    insert_vector = _blocking(writes.insert_vector)
    insert_edge = _blocking(writes.insert_edge)
    update_edge = _blocking(writes.update_edge)
    delete_edge = _blocking(writes.delete_edge)
    add_observation = _blocking(writes.add_observation)
    delete_observation = _blocking(writes.delete_observation)
    batch = _blocking(writes.batch)

    get_node = _blocking(reads.get_node)
    get_edge = _blocking(reads.get_edge)
    get_observation = _blocking(reads.get_observation)
    node_history = _blocking(reads.node_history)
    edges_of = _blocking(reads.edges_of)
    observations_of = _blocking(reads.observations_of)
    list_nodes = _blocking(reads.list_nodes)
    query_related = _blocking(reads.query_related)
    query_related_nodes = _blocking(reads.query_related_nodes)
    query_similar = _blocking(reads.query_similar)
    query_hybrid = _blocking(reads.query_hybrid)
    query_hybrid_by_vector = _blocking(reads.query_hybrid_by_vector)
    query_hybrid_by_text = _blocking(reads.query_hybrid_by_text)

    get_namespace = _blocking(reads.get_namespace)
    list_namespaces = _blocking(reads.list_namespaces)
    health = _blocking(reads.health)
    metrics = _blocking(reads.metrics)
    snapshot = _blocking(reads.snapshot)
