"""The client's sans-I/O core: one call's retries and failover, the session, the leader hint.

What lives here:
- `Session`: the client id, the last sequence number given to a write, and the highest commit
  index a write returned (the read-your-writes floor).
- `Router`: the URLs, the last one that answered, and the one whose health said it leads.
- `Call`: one public method call, as a state machine a driver runs. `next_action(now)` says
  what to do (send, sleep, or done with a value) or raises the call's typed error; the driver
  reports each answer (`answered`) or transport failure (`failed`). A write keeps its
  sequence number across every retry, so the server applies it once however many attempts
  reached it.
- `LeaderProbe`: asks each URL's health, in turn, which one leads.
What must not: I/O, clocks or threads: time comes in as `now` (seconds, monotonic), and the
jitter of backoff from a `random.Random` the driver seeds.

Retry rule: a transport failure (refused, reset, timed out) or a 503 moves the call to the next
URL at once; after every URL failed once in a row, the call sleeps (exponential backoff with
jitter, at least the Retry-After the server asked for) and starts the next round. A call that
cannot finish before its deadline raises `UnavailableError` naming the last cause, without
sleeping past the deadline. Any other answer that is not a success is raised at once as its
typed error: the server refused the request, and sending it again would not change that.
"""

from __future__ import annotations

import json
import random
from typing import Any, Generic, TypeVar

import attrs

from memora.client.errors import BadAnswerError, UnavailableError, error_from_answer
from memora.client.protocol import (
    Action,
    Done,
    Exchange,
    Json,
    ReadOptions,
    Request,
    RetryPolicy,
    Send,
    Sleep,
    sequence_max,
)
from memora.core.errors import ValidationError

T = TypeVar("T")

CLIENT_ID_HEADER = "X-Memora-Client-Id"
SEQUENCE_HEADER = "X-Memora-Sequence"
# Statuses worth another attempt: the server's own 503, and a proxy's 502 and 504.
RETRY_STATUSES = frozenset((502, 503, 504))


class Session:
    """The exactly-once session of one client, and what it has seen of the commit log.

    The server remembers, per client id, the last sequence number it applied and its answer: a
    write with that number again gets that answer, a higher one is new, a lower one is refused
    as superseded. So a client sends its writes one at a time, each with the next number."""

    def __init__(self, client_id: str, sequence: int) -> None:
        assert client_id and 0 <= sequence < sequence_max, (client_id, sequence)
        self.client_id = client_id
        self.sequence = sequence  # The last number given to a write; 0 before the first.
        self.commit_index = 0  # The highest commit_index a write of this client returned.

    def next_sequence(self) -> int:
        self.sequence += 1
        assert self.sequence <= sequence_max, "sequence numbers ran out"
        return self.sequence

    def saw_commit(self, index: Any) -> None:
        if isinstance(index, int) and not isinstance(index, bool):
            self.commit_index = max(self.commit_index, index)


class Router:
    """Which URL to try: the one that answered last (reads), the leader when known (writes).

    Any node serves any request, so the leader is only a hint that saves writes a forwarding
    hop. It is forgotten when its URL fails, and looked for again (`probe_due`) before the next
    write after a failover."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        assert urls, "a client needs at least one URL"
        self.urls = urls
        self.current = 0  # The URL that answered last.
        self.leader: int | None = None  # The URL whose health said role=leader.
        self.leader_id: int | None = None  # That node's id.
        self.probe_due = True

    def choose(self, write: bool) -> int:
        return self.leader if write and self.leader is not None else self.current

    def succeeded(self, index: int) -> None:
        self.current = index

    def failed(self, index: int) -> None:
        """Move on from a URL that failed: the next attempt takes the one after it."""
        if self.leader == index:
            self.leader = self.leader_id = None
        if self.leader is None:
            self.probe_due = True
        self.current = (index + 1) % len(self.urls)

    def found_leader(self, index: int, leader_id: Any) -> None:
        self.leader = self.current = index
        self.leader_id = leader_id if isinstance(leader_id, int) else None


class Call(Generic[T]):
    """One public method call: its exchange, its deadline, and its attempts so far."""

    def __init__(
        self,
        exchange: Exchange[T],
        client: ClientState,
        now: float,
    ) -> None:
        self._exchange = exchange
        self._client = client
        self._deadline = now + client.policy.deadline_s
        self._sequence: int | None = None  # A write's, given at its first attempt.
        self._done: Done[T] | None = None
        self._url_index = -1  # The URL of the attempt in flight.
        self._failed_in_round = 0
        self._rounds = 0
        self._retry_after_s = 0.0
        self._sleep_s = 0.0
        self._last_cause = ""
        self._query: tuple[tuple[str, str], ...] = ()
        self._content: bytes | None = None
        self._begin(next(exchange))  # Builds the request: bad arguments raise here.

    @property
    def writes(self) -> bool:
        """Whether the call writes (and so must hold the client's write turn)."""
        return self._request.write

    def next_action(self, now: float) -> Action:
        if self._done is not None:
            return self._done
        if self._sleep_s > 0:
            seconds, self._sleep_s = self._sleep_s, 0.0
            return Sleep(seconds)
        remaining = self._deadline - now
        if remaining <= 0:
            raise self._unavailable()
        self._url_index = self._client.router.choose(self._request.write)
        return self._send(min(self._client.policy.attempt_timeout_s, remaining))

    def answered(self, status: int, retry_after: str | None, content: bytes, now: float) -> None:
        """The answer to the attempt in flight; raises the typed error of a refusal."""
        if status in RETRY_STATUSES:
            cause = error_from_answer(status, content)
            self._retry_after_s = max(self._retry_after_s, _retry_after_s(retry_after))
            self._attempt_failed(f"{self._url()} answered {status}: {cause.message}", now)
            return
        self._client.router.succeeded(self._url_index)
        if 200 <= status < 300:
            self._advance(_json_answer(status, content), status)
        else:
            self._advance_with_error(error_from_answer(status, content))

    def failed(self, cause: str, now: float) -> None:
        """The attempt in flight got no answer: refused, reset, or timed out."""
        self._attempt_failed(f"{self._url()}: {cause}", now)

    def _url(self) -> str:
        return self._client.router.urls[self._url_index]

    def _attempt_failed(self, cause: str, now: float) -> None:
        self._client.router.failed(self._url_index)
        self._last_cause = cause
        self._failed_in_round += 1
        if self._failed_in_round < len(self._client.router.urls):
            return  # Try the next URL at once.
        self._failed_in_round = 0
        self._sleep_s = self._backoff_s()
        self._rounds += 1
        self._retry_after_s = 0.0
        if now + self._sleep_s >= self._deadline:
            self._sleep_s = 0.0
            self._deadline = now  # Sleeping would end past the deadline: give up now.

    def _backoff_s(self) -> float:
        policy = self._client.policy
        ceiling = min(policy.backoff_max_s, policy.backoff_initial_s * 2**self._rounds)
        jittered: float = ceiling * (0.5 + 0.5 * self._client.jitter.random())
        return max(jittered, min(self._retry_after_s, policy.retry_after_max_s))

    def _advance(self, answer: Json, status: int) -> None:
        if self._request.write:
            self._client.session.saw_commit(answer.get("commit_index"))
        try:
            request = self._exchange.send(answer)
        except StopIteration as stop:
            self._done = Done(stop.value)
            return
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            message = f"the answer to {self._request.method} {self._request.path} is not "
            raise BadAnswerError(f"{message}the published shape: {error!r}", status) from error
        assert not request.write, "an exchange makes one write, as its only request"
        self._begin(request)

    def _advance_with_error(self, error: Exception) -> None:
        """Throw a refusal into the exchange: it may answer with a value (None for a record
        that does not exist); otherwise the error propagates to the caller."""
        try:
            request = self._exchange.throw(error)
        except StopIteration as stop:
            self._done = Done(stop.value)
            return
        self._begin(request)

    def _begin(self, request: Request) -> None:
        """Make `request` the one to send, with a fresh round of attempts. Its query and body
        are rendered once, here: a body that is not JSON raises before any attempt."""
        self._request = request
        self._query, self._content = self._render(request)
        self._failed_in_round = self._rounds = 0
        self._last_cause = ""

    def _unavailable(self) -> UnavailableError:
        timeout = self._client.policy.deadline_s
        message = f"no URL served the request within {timeout} s"
        return UnavailableError(message, self._last_cause or "no attempt was made")

    def _render(self, request: Request) -> tuple[tuple[tuple[str, str], ...], bytes | None]:
        """The query string and body of `request`: with the namespace and read options."""
        query = request.query
        namespace = request.namespace or self._client.namespace
        if request.namespaced and namespace is not None:  # None: the server's default.
            query = (("namespace", namespace), *query)
        body = request.body
        if request.read is not None:
            options = self._read_options(request.read)
            if request.read_in_body:
                body = {**(body or {}), **dict(options)}
            else:
                query = (*query, *((name, str(value)) for name, value in options))
        return query, None if body is None else _json_bytes(body)

    def _send(self, timeout_s: float) -> Send:
        if self._request.write and self._sequence is None:
            self._sequence = self._client.session.next_sequence()
        return Send(
            method=self._request.method,
            url=self._url() + self._request.path,
            url_index=self._url_index,
            query=self._query,
            headers=self._headers(self._content is not None),
            content=self._content,
            timeout_s=timeout_s,
        )

    def _read_options(self, options: ReadOptions) -> tuple[tuple[str, Any], ...]:
        """The read options to send: the client's consistency by default, and the
        read-your-writes floor when the consistency would not see the client's writes by
        itself (`lease` and `follower`; a linearizable read sees them anyway)."""
        consistency = options.consistency or self._client.consistency
        floor = options.min_commit_index
        if consistency != "linearizable" and self._client.session.commit_index > 0:
            floor = max(floor or 0, self._client.session.commit_index)
        sent = (("consistency", consistency), ("min_commit_index", floor), ("as_of", options.as_of))
        return tuple((name, value) for name, value in sent if value is not None)

    def _headers(self, has_body: bool) -> tuple[tuple[str, str], ...]:
        headers = self._client.headers
        if self._sequence is not None:
            session = self._client.session
            headers = (
                *headers,
                (CLIENT_ID_HEADER, session.client_id),
                (SEQUENCE_HEADER, str(self._sequence)),
            )
        if has_body:
            headers = (*headers, ("Content-Type", "application/json"))
        return headers


@attrs.frozen
class ClientState:
    """What every call of one client shares: its session, router, policy and client."""

    session: Session
    router: Router
    policy: RetryPolicy
    namespace: str | None  # None: the server's default namespace.
    consistency: str
    headers: tuple[tuple[str, str], ...]  # Sent with every request: authorization, agent.
    jitter: random.Random


class LeaderProbe:
    """Looks for the leader: asks each URL's health once, starting at the current one, and
    stops at the first that says role=leader, or when `policy.probe_timeout_s` has passed.
    Finding none is no error: any node serves writes. Drivers run it like a `Call`."""

    def __init__(self, client: ClientState, now: float) -> None:
        self._client = client
        self._deadline = now + client.policy.probe_timeout_s
        router = client.router
        count = len(router.urls)
        self._order = [(router.current + step) % count for step in range(count)]
        router.probe_due = False

    def next_action(self, now: float) -> Action:
        if not self._order or now >= self._deadline:
            return Done(None)
        index = self._order[0]
        url = self._client.router.urls[index] + "/api/v1/health"
        timeout = self._deadline - now
        return Send("GET", url, index, (), self._client.headers, None, timeout)

    def answered(self, status: int, retry_after: str | None, content: bytes, now: float) -> None:
        index = self._order.pop(0)
        try:
            health = json.loads(content) if status == 200 else None
        except ValueError:
            health = None
        if isinstance(health, dict) and health.get("role") == "leader":
            self._client.router.found_leader(index, health.get("node_id"))
            self._order.clear()

    def failed(self, cause: str, now: float) -> None:
        self._order.pop(0)


def _retry_after_s(value: str | None) -> float:
    """Seconds of a Retry-After header in its delta-seconds form; 0 for anything else."""
    if value is None or not value.strip().isdigit():
        return 0.0
    return float(value.strip())


def _json_answer(status: int, content: bytes) -> Json:
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise BadAnswerError(f"a {status} answer is not a JSON object: {content[:200]!r}", status)
    return answer


def _json_bytes(body: Json) -> bytes:
    """A request body as JSON. NaN and infinities are not JSON; vectors are checked before
    this, so one here sits in properties or provenance."""
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise ValidationError(f"the request body is not JSON: {error}", "body") from None
