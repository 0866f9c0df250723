"""The vocabulary of the client's sans-I/O core: requests, exchanges and what a driver does next.

What lives here: `Request` (one REST request as an operation states it, before the client adds
its URL, namespace, session headers and read floor), `ReadOptions`, `Exchange` (an operation as
a generator: it yields requests, is sent each answer's JSON, and returns the typed value; an
error answer is thrown into it, so it may turn a 404 into `None`), the actions a driver carries
out (`Send`, `Sleep`, `Done`), the client's limits, and `operation_method`, which gives the sync
and async methods the name, docstring and signature of the operation they run. What must not:
I/O, clocks or randomness of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from typing import Any, Final, Generic, Literal, Protocol, TypeAlias, TypeVar

import attrs

Json: TypeAlias = dict[str, Any]
Consistency: TypeAlias = Literal["linearizable", "lease", "follower"]
T = TypeVar("T")
Method = TypeVar("Method", bound=Callable[..., Any])

CONSISTENCIES: Final = ("linearizable", "lease", "follower")
urls_max: Final = 64
sequence_max: Final = 2**63 - 1  # The server's X-Memora-Sequence maximum (memora.api.routing).


@attrs.frozen
class ReadOptions:
    """What a read asks of the server's read barrier, and the commit index to read as of."""

    consistency: Consistency | None = None  # None: the client's default.
    min_commit_index: int | None = None
    as_of: int | None = None


@attrs.frozen
class Request:
    """One request of an operation. `namespace` None means the client's namespace, when the
    endpoint takes one at all (`namespaced`). A `write` carries the client session headers;
    a `read` gets the read-your-writes floor, in the query or (`read_in_body`) in the body."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    body: Json | None = None
    namespace: str | None = None
    namespaced: bool = True
    write: bool = False
    read: ReadOptions | None = None
    read_in_body: bool = False

    def __attrs_post_init__(self) -> None:
        assert self.method in ("GET", "POST", "PATCH", "DELETE"), self.method
        assert self.path.startswith("/"), self.path
        assert not (self.write and self.read is not None), "a request writes or reads"
        assert not self.read_in_body or self.body is not None, "read options need a body"


Exchange: TypeAlias = Generator[Request, Json, T]
"""An operation: yields each request, is sent the JSON of its answer, returns the value."""


@attrs.frozen
class Send:
    """Send this request to `urls[url_index]` and report the answer or the failure."""

    method: str
    url: str
    url_index: int
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    content: bytes | None
    timeout_s: float


@attrs.frozen
class Sleep:
    seconds: float


@attrs.frozen
class Done(Generic[T]):
    value: T


Action: TypeAlias = Send | Sleep | Done[Any]


@attrs.frozen
class RetryPolicy:
    """How long one call may take, and how it waits between rounds of failed attempts.

    A call gives up with `UnavailableError` at `deadline_s` after it began. One attempt waits
    at most `attempt_timeout_s` (and `connect_timeout_s` to connect), so that a node that
    swallows requests costs one attempt, not the whole call. After every URL failed once in a
    row, the call sleeps `backoff_initial_s`, doubling each round up to `backoff_max_s`, with
    jitter; a Retry-After answer stretches that sleep to its seconds (capped at
    `retry_after_max_s`). Looking for the leader before a write takes at most
    `probe_timeout_s`, counted in the write's deadline."""

    deadline_s: float = 10.0
    attempt_timeout_s: float = 5.0
    connect_timeout_s: float = 1.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    retry_after_max_s: float = 2.0
    probe_timeout_s: float = 1.0  # Of the whole search for the leader, before a write.

    def __attrs_post_init__(self) -> None:
        assert 0 < self.connect_timeout_s <= self.attempt_timeout_s, self
        assert self.deadline_s > 0 and self.probe_timeout_s > 0, self
        assert 0 < self.backoff_initial_s <= self.backoff_max_s, self
        assert self.retry_after_max_s >= 0, self


def operation_method(build: Callable[..., Exchange[Any]], method: Method) -> Method:
    """`method`, a client's method that runs the exchange `build` makes, under the name,
    docstring and signature of `build`."""
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    method.__signature__ = method_signature(build)  # type: ignore[attr-defined]
    return method


def method_signature(build: Callable[..., Exchange[Any]]) -> inspect.Signature:
    """The signature of the client method running `build`: `self` first, and the value the
    exchange returns as the return annotation (`Exchange[Node]` becomes `Node`)."""
    signature = inspect.signature(build)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    returned = signature.return_annotation
    if isinstance(returned, str) and returned.startswith("Exchange[") and returned.endswith("]"):
        returned = returned[len("Exchange[") : -1]
    return signature.replace(
        parameters=[self_parameter, *signature.parameters.values()], return_annotation=returned
    )


class Machine(Protocol):
    """What a driver runs: a `Call`, or the `LeaderProbe`."""

    def next_action(self, now: float) -> Action: ...

    def answered(
        self, status: int, retry_after: str | None, content: bytes, now: float
    ) -> None: ...

    def failed(self, cause: str, now: float) -> None: ...
