"""Transcript tests in the style of etcd's datadriven testdata: each file in testdata/ is a list of
commands, each followed by `----` and the output it must produce, then a blank line.

Commands (node ids are integers):
    cluster 1 2 3 [learners 4] [options key=value ...]   start a bootstrapped cluster (seed 1)
    add-node 4                      start an empty node that may join later
    campaign 1 | propose 1 text | transfer 1 2 | read 1 7 [lease] | compact 1
    add-voter 1 4 | add-learner 1 4 | promote 1 4 | remove 1 3   (leader, node)
    tick 10 [1 2 ...]               tick the given (default: all) nodes, stabilizing silently
    heartbeat 1                     tick a leader until it sends heartbeats (not delivered yet)
    partition 1 | 2 3 | heal | isolate 3 | down 1 | up 1 | restart 2
    deliver                         step every queued message once (printing each)
    process                         process every node's Ready once
    stabilize                       process and deliver until quiet (printing every message)
    status | log 2 | reads 2 | state 2 | counters 2 name ...

Run with MEMORA_REWRITE=1 to rewrite the expected output after a deliberate change.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from raft_harness import Cluster

from memora.core.errors import MemoraError
from memora.core.raft import (
    AppendRequest,
    AppendResponse,
    CommitNotice,
    ConfigurationChange,
    ConfigurationChangeKind,
    EntryKind,
    HeartbeatRequest,
    HeartbeatResponse,
    LogEntry,
    Message,
    RaftOptions,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotChunk,
    SnapshotChunkResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

TESTDATA = Path(__file__).parent / "testdata"
CHANGES = {
    "add-voter": ConfigurationChangeKind.ADD_VOTER,
    "add-learner": ConfigurationChangeKind.ADD_LEARNER,
    "promote": ConfigurationChangeKind.PROMOTE_LEARNER,
    "remove": ConfigurationChangeKind.REMOVE_NODE,
}


def format_entry(entry: LogEntry) -> str:
    if entry.kind is EntryKind.NO_OP:
        payload = "noop"
    elif entry.kind is EntryKind.CONFIGURATION:
        payload = "config"
    else:
        payload = repr(entry.data.decode(errors="replace"))
    return f"{entry.index}@{entry.term}:{payload}"


def format_message(message: Message) -> str:
    head = f"{message.source}->{message.target} {type(message).__name__} term={message.term}"
    match message:
        case VoteRequest():
            kind = " pre-vote" if message.pre_vote else ""
            transfer = " transfer" if message.transfer else ""
            return f"{head}{kind}{transfer} last={message.last_index}@{message.last_term}"
        case VoteResponse():
            kind = " pre-vote" if message.pre_vote else ""
            return f"{head}{kind} {'granted' if message.granted else 'refused'}"
        case AppendRequest():
            entries = ", ".join(format_entry(entry) for entry in message.entries)
            previous = f"{message.previous_index}@{message.previous_term}"
            return f"{head} prev={previous} commit={message.commit} entries=[{entries}]"
        case AppendResponse() if message.rejected:
            hint = f"{message.hint_index}@{message.hint_term}"
            return f"{head} rejected index={message.index} hint={hint}"
        case AppendResponse():
            return f"{head} index={message.index}"
        case HeartbeatRequest():
            return f"{head} commit={message.commit} round={message.round}"
        case HeartbeatResponse():
            return f"{head} round={message.round}"
        case CommitNotice():
            return f"{head} commit={message.commit}"
        case SnapshotChunk():
            meta = f"{message.meta.index}@{message.meta.term}"
            end = message.offset + len(message.data)
            return f"{head} snapshot={meta} bytes=[{message.offset},{end}) of {message.total_bytes}"
        case SnapshotChunkResponse():
            meta = f"{message.snapshot_index}@{message.snapshot_term}"
            return f"{head} snapshot={meta} next={message.next_offset}"
        case ReadIndexRequest():
            return f"{head} request={message.request_id}"
        case ReadIndexResponse():
            return f"{head} request={message.request_id} index={message.index}"
        case TimeoutNow():
            return head
    raise AssertionError(message)


class Transcript:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None, "start with: cluster ..."
        return self.cluster

    def run(self, line: str) -> list[str]:
        words = shlex.split(line)
        command, arguments = words[0], words[1:]
        handler = getattr(self, "do_" + command.replace("-", "_"), None)
        if handler is None and command in CHANGES:
            return self.change(CHANGES[command], arguments)
        assert handler is not None, f"unknown command {command!r}"
        try:
            output: list[str] = handler(arguments)
        except MemoraError as error:
            return [f"error: {type(error).__name__}: {error.message}"]
        return output

    # -- Setup and faults. --------------------------------------------------------------------

    def do_cluster(self, arguments: list[str]) -> list[str]:
        voters, learners, options = [], [], {}
        target = voters
        for word in arguments:
            if word == "learners":
                target = learners
            elif "=" in word:
                key, value = word.split("=")
                options[key] = value == "true" if value in ("true", "false") else int(value)
            else:
                target.append(int(word))
        self.cluster = Cluster(voters, learners, options=RaftOptions(**options))  # type: ignore[arg-type]
        return []

    def do_add_node(self, arguments: list[str]) -> list[str]:
        self.c.add_node(int(arguments[0]))
        return []

    def do_partition(self, arguments: list[str]) -> list[str]:
        groups = " ".join(arguments).split("|")
        self.c.partition(*[[int(n) for n in group.split()] for group in groups])
        return []

    def do_heal(self, arguments: list[str]) -> list[str]:
        self.c.heal()
        return []

    def do_isolate(self, arguments: list[str]) -> list[str]:
        self.c.isolate(int(arguments[0]))
        return []

    def do_down(self, arguments: list[str]) -> list[str]:
        self.c.down.add(int(arguments[0]))
        return []

    def do_up(self, arguments: list[str]) -> list[str]:
        self.c.down.discard(int(arguments[0]))
        return []

    def do_restart(self, arguments: list[str]) -> list[str]:
        self.c.restart(int(arguments[0]))
        return []

    # -- Requests. ----------------------------------------------------------------------------

    def do_campaign(self, arguments: list[str]) -> list[str]:
        self.c.node(int(arguments[0])).campaign()
        return []

    def do_propose(self, arguments: list[str]) -> list[str]:
        index = self.c.node(int(arguments[0])).propose(arguments[1].encode())
        return [f"index {index}"]

    def do_transfer(self, arguments: list[str]) -> list[str]:
        self.c.node(int(arguments[0])).transfer_leadership(int(arguments[1]))
        return []

    def do_read(self, arguments: list[str]) -> list[str]:
        lease = arguments[2:] == ["lease"]
        self.c.node(int(arguments[0])).read_index(int(arguments[1]), lease=lease)
        return []

    def do_compact(self, arguments: list[str]) -> list[str]:
        meta = self.c.compact(int(arguments[0]))
        return [f"snapshot {meta.index}@{meta.term}"]

    def change(self, kind: ConfigurationChangeKind, arguments: list[str]) -> list[str]:
        leader, node_id = int(arguments[0]), int(arguments[1])
        try:
            index = self.c.node(leader).propose_configuration_change(
                ConfigurationChange(kind, node_id)
            )
        except MemoraError as error:
            return [f"error: {type(error).__name__}: {error.message}"]
        return [f"index {index}"]

    # -- Time and delivery. -------------------------------------------------------------------

    def do_tick(self, arguments: list[str]) -> list[str]:
        nodes = [int(n) for n in arguments[1:]] or None
        self.c.tick(int(arguments[0]), nodes)
        return []

    def do_heartbeat(self, arguments: list[str]) -> list[str]:
        node = self.c.node(int(arguments[0]))
        for _ in range(node.options.heartbeat_interval_ticks):
            node.tick()
        return []

    def do_process(self, arguments: list[str]) -> list[str]:
        self.c.flush()
        return []

    def do_deliver(self, arguments: list[str]) -> list[str]:
        return self._deliver()

    def _deliver(self) -> list[str]:
        cluster = self.c
        queue, cluster.queue = cluster.queue, []
        output = []
        for message in queue:
            if cluster._blocked(message):
                output.append(f"dropped {format_message(message)}")
            else:
                output.append(format_message(message))
                cluster.node(message.target).step(message)
        return output

    def do_stabilize(self, arguments: list[str]) -> list[str]:
        output: list[str] = []
        for _ in range(1_000):
            progressed = self.c.flush()
            if not self.c.queue and not progressed:
                return output
            output.extend(self._deliver())
        raise AssertionError("no stable state")

    # -- Inspection. --------------------------------------------------------------------------

    def do_status(self, arguments: list[str]) -> list[str]:
        lines = []
        for node_id, node in sorted(self.c.nodes.items()):
            log = node.log
            down = " (down)" if node_id in self.c.down else ""
            lines.append(
                f"{node_id}: {node.role.value} term={node.term} leader={node.leader_id}"
                f" commit={log.committed} last={log.last_index()}@{log.last_term()}"
                f" voters={list(node.configuration.voters)}"
                f" learners={list(node.configuration.learners)}{down}"
            )
        return lines

    def do_log(self, arguments: list[str]) -> list[str]:
        log = self.c.node(int(arguments[0])).log
        entries = [log.entry(i) for i in range(log.first_index(), log.last_index() + 1)]
        head = f"snapshot {log.snapshot_index}@{log.snapshot_term}"
        return [head, *(format_entry(entry) for entry in entries)]

    def do_state(self, arguments: list[str]) -> list[str]:
        return [repr([data.decode() for data in self.c.states[int(arguments[0])]])]

    def do_reads(self, arguments: list[str]) -> list[str]:
        reads = self.c.reads[int(arguments[0])]
        return [f"read {read.request_id} at {read.index}" for read in reads] or ["none"]

    def do_counters(self, arguments: list[str]) -> list[str]:
        counters = self.c.node(int(arguments[0])).counters
        return [f"{name}={counters[name]}" for name in arguments[1:]]


def parse(text: str) -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)]; lines starting with # are comments."""
    cases: list[tuple[str, list[str]]] = []
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    position = 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        command = lines[position]
        assert lines[position + 1] == "----", f"expected ---- after {command!r}"
        position += 2
        output = []
        while position < len(lines) and lines[position].strip():
            output.append(lines[position])
            position += 1
        cases.append((command, output))
    return cases


def render(cases: list[tuple[str, list[str]]], header: list[str]) -> str:
    blocks = ["\n".join([command, "----", *output]) for command, output in cases]
    return "\n".join(header) + ("\n" if header else "") + "\n\n".join(blocks) + "\n"


FILES = sorted(TESTDATA.glob("*.txt"))


def test_there_are_transcripts() -> None:
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_transcript(path: Path) -> None:
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    transcript = Transcript()
    actual = [(command, transcript.run(command)) for command, _ in parse(text)]
    if os.environ.get("MEMORA_REWRITE"):
        path.write_text(render(actual, header))
        return
    for (command, expected), (_, output) in zip(parse(text), actual, strict=True):
        assert output == expected, f"{path.name}: {command}\n" + "\n".join(output)
    if transcript.cluster is not None:
        transcript.cluster.check_state_machine_safety()
