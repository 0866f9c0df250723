"""`ClusterNode`: one member of a Memora cluster, as the REST and MCP layers see it.

What lives here: the wiring of a `NodeDriver` to the links between members. Outgoing Raft
messages become peer frames; incoming frames are decoded, checked against the sender the link
authenticated, and stepped into the node (a frame that does not decode, or claims another sender,
is dropped and counted). What only the leader can do (writes, membership changes, leadership
transfers) is forwarded to the leader as a call over the same links, so any member accepts any
request. Reads are not forwarded: Raft's ReadIndex on a follower asks the leader for the index
itself, and the follower serves the read from its own replica once it applied that index.
What must not: Raft logic (`memora.core.raft`), sockets and the wire format of the links
(`memora.net.peer_transport`), HTTP (`memora.api`).

Peer frames, as the link carries them (opaque bytes to it), start with one kind byte:
- RAFT: the Raft message, `encode_value` of it;
- CALL: CBOR `[call_id, method, argument]`, a request to the leader;
- REPLY: CBOR `[call_id, status, payload]`: DONE with an encoded `Applied(index, value)`,
  REFUSED with an encoded `Rejected(0, error)`, or NOT_LEADER with the leader the callee knows
  of (or null). NOT_LEADER is the only answer that promises nothing was proposed, so it is the
  only one a caller retries by itself; a write whose call timed out has an unknown outcome, and
  the client retries it with its session, which makes it exactly-once.

Wiped members. The links refuse a known member that comes back with another incarnation (a new
data directory: it forgot its votes and log; see `memora.net.peer_incarnations`); once a member
is removed from the configuration its incarnation is forgotten, so its id can be added back.

Membership. `add_member` adds a node as a learner, waits until its log caught up with the
leader's commit index (by log entries or a snapshot), then promotes it to voter: a node that
never catches up cannot stall the quorum. Each step re-reads the configuration, so a retried or
forwarded-twice request does what is left to do and no more. The links learn a joining node's
address from the address given here, and from the node itself when it dials in.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, Protocol

import attrs
import cbor2
import trio

from memora.core import constants
from memora.core.codec import decode, decode_proposal, encode
from memora.core.errors import CodecError, MemoraError, ValidationError
from memora.core.raft import (
    ConfigurationChange,
    ConfigurationChangeKind,
    Message,
    decode_message,
    encode_value,
)
from memora.core.replica import Replica
from memora.core.types import Applied, Proposal, Rejected
from memora.net.driver import Deadline, NodeDriver, cluster_status_of
from memora.net.node_api import Consistency, NotLeaderError, UnavailableError, WriteOutcome
from memora.net.peer_wire import check_node_id

PeerAddress = tuple[str, int]

# How often a caller waiting for a leader (or a learner catching up) looks again.
_POLL_S: Final = 0.01
_CATCH_UP_POLL_S: Final = 0.05
# How often a caller waiting for the leader's reply checks that the leader still leads.
_REPLY_POLL_S: Final = 0.05
# How often the links are told which peers left the configuration (their incarnations go).
_DEPARTED_POLL_S: Final = 1.0
_PORT_MAX: Final = 65535
_HOSTNAME_PATTERN: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Counted from the start (at 0), so every scrape has each name.
COUNTERS: Final = (
    "peer_frames_undecodable_total",
    "peer_frames_wrong_sender_total",
    "calls_forwarded_total",
    "calls_served_total",
    "calls_refused_busy_total",
    "calls_unanswered_total",
)


class FrameKind(enum.IntEnum):
    RAFT = 1
    CALL = 2
    REPLY = 3


class Method(enum.StrEnum):
    WRITE = "write"
    ADD_MEMBER = "add_member"
    REMOVE_MEMBER = "remove_member"
    TRANSFER_LEADERSHIP = "transfer_leadership"


class ReplyStatus(enum.IntEnum):
    DONE = 0
    REFUSED = 1
    NOT_LEADER = 2


class PeerLink(Protocol):
    """The links to the other members (`memora.net.peer_transport.PeerTransport`). Frames given
    to `send` reach the peer's `deliver(sender, frame)` in order, or are lost."""

    def send(self, peer_id: int, body: bytes) -> bool: ...

    def set_peer_address(self, peer_id: int, address: PeerAddress) -> None: ...

    def peer_status(self) -> dict[int, dict[str, Any]]: ...

    def metrics(self) -> dict[str, int]: ...

    def forget_departed(self, members: Collection[int]) -> None: ...


@attrs.frozen
class ClusterLimits:
    """Bounds on forwarding: how long a forwarded write or membership change may take, and how
    many calls from peers this node serves at once (more are refused as unavailable)."""

    write_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    # Adding a member waits for it to catch up, which may mean sending it a whole snapshot.
    membership_timeout_s: float = 120.0
    calls_served_max: int = 10_000

    def __attrs_post_init__(self) -> None:
        assert self.write_timeout_s > 0 and self.read_timeout_s > 0, self
        assert self.membership_timeout_s > 0 and self.calls_served_max > 0, self


# -- Addresses ------------------------------------------------------------------------------------


def parse_address(text: str, field: str = "address") -> PeerAddress:
    """`host:port` (`[v6]:port` for IPv6) as a (host, port) pair, or ValidationError."""
    host, separator, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ip_address(host):
            raise ValidationError(f"{text!r} holds no IPv6 address in brackets", field)
    if not separator or not is_host(host):
        raise ValidationError(f"{text!r} is not host:port", field)
    if not port_text.isdigit() or not 1 <= int(port_text) <= _PORT_MAX:
        raise ValidationError(f"{text!r} has no port from 1 to {_PORT_MAX}", field)
    return host, int(port_text)


def parse_peers(text: str, field: str = "peers") -> dict[int, PeerAddress]:
    """`1=host:port,2=host:port,...`: every member of the cluster, by node id."""
    peers: dict[int, PeerAddress] = {}
    for item in (part.strip() for part in text.split(",")):
        node_text, separator, address = item.partition("=")
        if not separator or not node_text.strip().isdigit():
            raise ValidationError(f"{item!r} is not NODE_ID=host:port", field)
        node_id = check_node_id(int(node_text), field)
        if node_id in peers:
            raise ValidationError(f"node {node_id} is listed twice", field)
        peers[node_id] = parse_address(address.strip(), field)
    if len(peers) > constants.raft_members_max:
        raise ValidationError(f"at most {constants.raft_members_max} members", field)
    return peers


def is_host(text: str) -> bool:
    """An IP address, or a DNS name of labels of letters, digits and inner hyphens."""
    return is_ip_address(text) or _HOSTNAME_PATTERN.fullmatch(text) is not None


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- Frames ---------------------------------------------------------------------------------------


def raft_frame(message: Message) -> bytes:
    return bytes((FrameKind.RAFT,)) + encode_value(message)


def call_frame(call_id: int, method: Method, argument: Any) -> bytes:
    return bytes((FrameKind.CALL,)) + cbor2.dumps([call_id, method.value, argument])


def reply_frame(call_id: int, status: ReplyStatus, payload: Any) -> bytes:
    return bytes((FrameKind.REPLY,)) + cbor2.dumps([call_id, int(status), payload])


def _envelope(body: bytes) -> list[Any]:
    """The CBOR list after a CALL or REPLY kind byte, shape-checked: [int, _, _]."""
    try:
        value = cbor2.loads(body[1:])
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as error:
        raise CodecError(f"undecodable frame: {error}") from error
    if not isinstance(value, list) or len(value) != 3 or type(value[0]) is not int:
        raise CodecError("a call or reply is [call_id, method or status, payload]")
    return value


class RaftOutbox:
    """The driver's `Transport` in a cluster: each Raft message goes to its target's link."""

    def __init__(self, link: PeerLink) -> None:
        self._link = link

    def send(self, messages: Sequence[Message]) -> None:
        for message in messages:
            self._link.send(message.target, raft_frame(message))


@attrs.define(eq=False)
class _PendingCall:
    peer_id: int
    done: trio.Event = attrs.Factory(trio.Event)
    status: ReplyStatus | None = None
    payload: Any = None


class _NotLeaderReply(Exception):
    """The callee does not lead: nothing was proposed, so the call may go to the next leader."""

    def __init__(self, leader_id: int | None) -> None:
        super().__init__(leader_id)
        self.leader_id = leader_id


# -- The member -----------------------------------------------------------------------------------


class ClusterNode:
    """A `NodeDriver` that is a member of a cluster, reached through a `PeerLink`.

    Implements `NodeApi`; `run()` runs the driver until `stop()`. The driver sends through a
    `RaftOutbox` on the same link; the link is run by the caller (in an enclosing nursery), and
    hands what it receives to `deliver`."""

    def __init__(
        self,
        driver: NodeDriver,
        link: PeerLink,
        *,
        cluster_id: str,
        limits: ClusterLimits | None = None,
    ) -> None:
        self.driver = driver
        self.cluster_id = cluster_id
        self._link = link
        self._limits = limits if limits is not None else ClusterLimits()
        self._calls: dict[int, _PendingCall] = {}
        self._next_call_id = 1
        self._calls_served = 0
        self._nursery: trio.Nursery | None = None
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    @property
    def node_id(self) -> int:
        return self.driver.node_id

    @property
    def replica(self) -> Replica:
        return self.driver.replica

    # -- Life cycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node; reports started when it serves, returns after `stop()` drained it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._forget_departed_loop)
            await self.driver.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # The calls this node was serving for peers.
        self._nursery = None
        for call in self._calls.values():
            call.done.set()  # Callers see no status: unavailable.

    def stop(self) -> None:
        self.driver.stop()

    async def _forget_departed_loop(self) -> None:
        """A removed member's incarnation is forgotten, so its id may be added back later."""
        while True:
            await trio.sleep(_DEPARTED_POLL_S)
            if self.driver.configuration.members():  # A joining node knows none yet.
                self._link.forget_departed(self.driver.configuration.members())

    # -- Frames from peers ------------------------------------------------------------------------

    def deliver(self, sender: int, body: bytes) -> None:
        """A frame from the member `sender` (authenticated by the link). Never raises."""
        try:
            kind = FrameKind(body[0]) if body else None
            if kind is FrameKind.RAFT:
                self._receive_raft(sender, decode_message(body[1:]))
            elif kind is FrameKind.CALL:
                self._receive_call(sender, _envelope(body))
            elif kind is FrameKind.REPLY:
                self._receive_reply(sender, _envelope(body))
            else:
                raise CodecError("an empty frame")
        except (CodecError, ValueError):
            self._counters["peer_frames_undecodable_total"] += 1

    def _receive_raft(self, sender: int, message: Message) -> None:
        if message.source != sender or message.target != self.node_id:
            self._counters["peer_frames_wrong_sender_total"] += 1
            return
        self.driver.receive(message)

    def _receive_call(self, sender: int, envelope: list[Any]) -> None:
        call_id, method_name, argument = envelope
        method = Method(method_name)  # ValueError: undecodable.
        if self._nursery is None or self._calls_served >= self._limits.calls_served_max:
            self._counters["calls_refused_busy_total"] += 1
            refusal = Rejected(0, UnavailableError(f"node {self.node_id} is busy; retry"))
            self._link.send(sender, reply_frame(call_id, ReplyStatus.REFUSED, encode(refusal)))
            return
        self._calls_served += 1
        self._nursery.start_soon(self._serve_call, sender, call_id, method, argument)

    def _receive_reply(self, sender: int, envelope: list[Any]) -> None:
        call_id, status, payload = envelope
        call = self._calls.get(call_id)
        if call is None or call.peer_id != sender or call.done.is_set():
            return  # Its caller gave up, or a peer answers what it was not asked.
        call.status = ReplyStatus(status)  # ValueError: undecodable.
        call.payload = payload
        call.done.set()

    async def _serve_call(self, sender: int, call_id: int, method: Method, argument: Any) -> None:
        try:
            applied = await self._call_here(method, argument)
            reply = reply_frame(call_id, ReplyStatus.DONE, encode(applied))
        except NotLeaderError as error:
            reply = reply_frame(call_id, ReplyStatus.NOT_LEADER, error.leader_id)
        except MemoraError as error:
            reply = reply_frame(call_id, ReplyStatus.REFUSED, encode(Rejected(0, error)))
        finally:
            self._calls_served -= 1
        self._counters["calls_served_total"] += 1
        self._link.send(sender, reply)

    async def _call_here(self, method: Method, argument: Any) -> Applied:
        """Do what a peer asked of this node as the leader, or raise NotLeaderError."""
        self._require_leader()
        if method is Method.WRITE:
            if not isinstance(argument, bytes):
                raise CodecError("a forwarded write carries an encoded proposal")
            outcome = await self.driver.write(decode_proposal(argument))
            return Applied(outcome.commit_index, outcome.value)
        if method is Method.ADD_MEMBER:
            node_id, address = _member_argument(argument)
            return await self._add_member_here(node_id, address)
        node_id = check_node_id(argument)
        if method is Method.REMOVE_MEMBER:
            return await self._remove_member_here(node_id)
        await self.driver.transfer_leadership(node_id)
        return Applied(0, None)

    def _require_leader(self) -> None:
        leader = self.driver.leader_id
        if leader != self.node_id:
            raise NotLeaderError(f"node {self.node_id} does not lead", leader)

    # -- Calls to the leader ----------------------------------------------------------------------

    async def _at_leader(
        self,
        method: Method,
        argument: Any,
        here: Callable[[], Awaitable[Applied]],
        timeout_s: float,
    ) -> Applied:
        """Run `here` if this node leads, else call the leader; follow NOT_LEADER answers to the
        next leader until `timeout_s`. Anything else (a refusal, a lost reply) is final."""
        with Deadline(timeout_s, f"{method.value} at the leader", "the outcome is unknown"):
            hint: int | None = None
            while True:
                leader = hint if hint is not None else await self._known_leader()
                hint = None
                try:
                    if leader == self.node_id:
                        return await here()
                    return await self._call(leader, method, argument)
                except (NotLeaderError, _NotLeaderReply) as error:
                    hint = error.leader_id if error.leader_id != leader else None
                    await trio.sleep(_POLL_S)

    async def _known_leader(self) -> int:
        while (leader := self.driver.leader_id) is None:
            if not self.driver.serving:
                raise UnavailableError(f"node {self.node_id} is not serving")
            await trio.sleep(_POLL_S)
        return leader

    async def _call(self, leader: int, method: Method, argument: Any) -> Applied:
        call_id = self._next_call_id
        self._next_call_id += 1
        call = _PendingCall(leader)
        self._calls[call_id] = call
        try:
            self._counters["calls_forwarded_total"] += 1
            if not self._link.send(leader, call_frame(call_id, method, argument)):
                raise _NotLeaderReply(None)  # Not sent: the link is full or knows no such peer.
            await self._wait_reply(leader, call)
        except trio.Cancelled:
            self._counters["calls_unanswered_total"] += 1
            raise
        finally:
            del self._calls[call_id]
        return _reply_outcome(leader, call)

    async def _wait_reply(self, leader: int, call: _PendingCall) -> None:
        """Until the reply comes, or `leader` is known to have lost its term (then the reply may
        never come, and the outcome is unknown)."""
        while not call.done.is_set():
            with trio.move_on_after(_REPLY_POLL_S):
                await call.done.wait()
            if not call.done.is_set() and self.driver.leader_id not in (leader, None):
                raise UnavailableError(
                    f"node {leader} lost the leadership before it answered; the outcome is unknown"
                )

    # -- NodeApi ----------------------------------------------------------------------------------

    async def write(self, proposal: Proposal) -> WriteOutcome:
        """See `NodeApi.write`: proposed at the leader, wherever it is."""
        if self.driver.leader_id == self.node_id:
            # The common case on the leader, without encoding a call it will not make.
            with contextlib.suppress(NotLeaderError):  # Deposed just now: find the leader.
                return await self.driver.write(proposal)

        async def here() -> Applied:
            outcome = await self.driver.write(proposal)
            return Applied(outcome.commit_index, outcome.value)

        applied = await self._at_leader(
            Method.WRITE, encode(proposal), here, self._limits.write_timeout_s
        )
        return WriteOutcome(applied.value, applied.index)

    async def read_barrier(
        self, consistency: Consistency, min_commit_index: int | None = None
    ) -> Replica:
        """See `NodeApi.read_barrier`. A read that lost its leader (an election while it waited)
        is asked again; reads change nothing, so that is always safe."""
        with Deadline(self._limits.read_timeout_s, "the read"):
            while True:
                if consistency is not Consistency.FOLLOWER:
                    await self._known_leader()
                try:
                    return await self.driver.read_barrier(consistency, min_commit_index)
                except UnavailableError:
                    if not self.driver.serving:
                        raise
                    await trio.sleep(_POLL_S)

    async def snapshot(self) -> int:
        return await self.driver.snapshot()

    def health(self) -> dict[str, Any]:
        """The driver's health, each peer with whether its link is up and when it last spoke."""
        health = self.driver.health()
        links = self._link.peer_status()
        for peer in health["peers"]:
            link = links.get(peer["node_id"], {})
            peer["connected"] = bool(link.get("outbound_connected"))
            peer["last_received_s_ago"] = link.get("last_received_s_ago")
        return health

    def metrics(self) -> dict[str, float | int]:
        link = {f"peer_{name}": value for name, value in self._link.metrics().items()}
        return {**self.driver.metrics(), **link, **self._counters}

    # -- Membership -------------------------------------------------------------------------------

    async def add_member(self, node_id: int, address: str | None) -> int:
        """Add `node_id` (reachable at `address`, if given) as a voter once it caught up; returns
        the log index of the configuration that made it one."""
        node_id = check_node_id(node_id)
        peer_address = None if address is None else parse_address(address)
        if peer_address is not None:
            self._link.set_peer_address(node_id, peer_address)
        argument = [node_id, address]
        applied = await self._at_leader(
            Method.ADD_MEMBER,
            argument,
            lambda: self._add_member_here(node_id, address),
            self._limits.membership_timeout_s,
        )
        return applied.index

    async def remove_member(self, node_id: int) -> int:
        node_id = check_node_id(node_id)
        applied = await self._at_leader(
            Method.REMOVE_MEMBER,
            node_id,
            lambda: self._remove_member_here(node_id),
            self._limits.membership_timeout_s,
        )
        return applied.index

    async def transfer_leadership(self, node_id: int) -> None:
        node_id = check_node_id(node_id)

        async def here() -> Applied:
            await self.driver.transfer_leadership(node_id)
            return Applied(0, None)

        try:
            await self._at_leader(
                Method.TRANSFER_LEADERSHIP, node_id, here, self._limits.write_timeout_s
            )
        except UnavailableError:
            # The old leader may hand over before its answer arrives, and then this node sees
            # its call's leader lose the leadership: if the target leads now, it was done.
            if self.driver.leader_id != node_id:
                raise

    async def _add_member_here(self, node_id: int, address: str | None) -> Applied:
        if address is not None:
            self._link.set_peer_address(node_id, parse_address(address))
        index = 0
        while not self.driver.configuration.is_voter(node_id):
            self._require_leader()
            if node_id in self.driver.configuration.learners:
                await self._wait_caught_up(node_id)
                change = ConfigurationChangeKind.PROMOTE_LEARNER
            else:
                change = ConfigurationChangeKind.ADD_LEARNER
            index = await self._change_retrying(ConfigurationChange(change, node_id))
        return Applied(index, None)

    async def _remove_member_here(self, node_id: int) -> Applied:
        index = 0
        while self.driver.configuration.is_member(node_id):
            self._require_leader()
            change = ConfigurationChange(ConfigurationChangeKind.REMOVE_NODE, node_id)
            index = await self._change_retrying(change)
        return Applied(index, None)

    async def _change_retrying(self, change: ConfigurationChange) -> int:
        """Propose `change`; while the leader cannot take one yet (a change in flight, or no
        entry of its term committed) wait and let the caller look at the configuration again."""
        try:
            return await self.driver.change_configuration(change)
        except UnavailableError:
            if not self.driver.serving:
                raise
            await trio.sleep(_CATCH_UP_POLL_S)
            return 0

    async def _wait_caught_up(self, node_id: int) -> None:
        """Until the learner holds the log up to the commit index of when we started waiting."""
        target = self.driver.health()["commit_index"]
        while (self.driver.match_index(node_id) or 0) < target:
            self._require_leader()
            await trio.sleep(_CATCH_UP_POLL_S)

    def cluster_status(self) -> dict[str, Any]:
        """See `NodeApi.cluster_status`: the health's peers, each with its address."""
        status = cluster_status_of(self.cluster_id, self.health(), self.replica)
        links = self._link.peer_status()
        for peer in status["peers"]:
            peer["address"] = links.get(peer["node_id"], {}).get("address")
        return status


def _member_argument(argument: Any) -> tuple[int, str | None]:
    if not isinstance(argument, list) or len(argument) != 2:
        raise CodecError("add_member carries [node_id, address]")
    node_id, address = argument
    if address is not None and not isinstance(address, str):
        raise CodecError("add_member's address is a string or null")
    return check_node_id(node_id), address


def _reply_outcome(leader: int, call: _PendingCall) -> Applied:
    """What the leader's reply says: the applied result, or the error it raised."""
    if call.status is None:
        raise UnavailableError(f"node {leader} stopped before it answered; the outcome is unknown")
    if call.status is ReplyStatus.NOT_LEADER:
        hint = call.payload if type(call.payload) is int else None
        raise _NotLeaderReply(hint)
    try:
        result = decode(call.payload) if isinstance(call.payload, bytes) else None
    except CodecError:
        result = None
    if call.status is ReplyStatus.DONE and isinstance(result, Applied):
        return result
    if call.status is ReplyStatus.REFUSED and isinstance(result, Rejected):
        assert isinstance(result.error, MemoraError), result.error
        raise result.error
    raise UnavailableError(f"node {leader} answered with a malformed reply")
