"""`python -m memora.bench mcp`: MCP tool-call latency as the memory grows, against the reference.

Systems under test, each started fresh (its own temporary memory) and driven by the MCP SDK's
client (`mcp.Client`, on trio) as an MCP host would:
- `reference stdio`: the reference "memory" server, `npx -y @modelcontextprotocol/server-memory`,
  storing in a temporary `MEMORY_FILE_PATH`. It reads its whole JSONL file on every call and
  rewrites it on every write (no fsync). The npx cache is warmed first, untimed;
- `memora stdio`: `python -m memora mcp --data-dir DIR [--embedder SPEC]`;
- `memora http`: `python -m memora serve --data-dir DIR --http-port P --mcp-port Q`, the
  streamable HTTP endpoint `http://127.0.0.1:Q/mcp`, used once `GET /api/v1/health` answers 200.
A system is a name, a way to connect (`StdioLaunch` or `HttpLaunch`) and the tools it is timed on;
the Memora rows are skipped, saying why, while `memora mcp --help` fails (not implemented yet).

Every system replays the same `Plan`, made up front from one seed: the memory grows to each
checkpoint by `create_entities` of `batch` entities per call (a name, an `entityType` from a small
set, 2 or 3 short sentences) plus a `create_relations` call per batch; at each checkpoint, after
`warmup` untimed calls of each tool, `rounds` rounds of `calls` calls each of `create_entities`
(one new entity, 2 observations), `search_nodes` (an existing entity's name: a substring that
matches it and the few entities that mention it), `open_nodes` (3 existing names) and, Memora
only, `memory_search` (a question about an existing entity; left out, saying so, by a server
that does not list it), plus an MCP `ping` as the floor every call stands on. The calls of one
tool are made back to back, one at a time; a call's latency runs from `call_tool` to its parsed
result, so it includes this client's validation of the result against the tool's output schema,
the same for every system. p50 and p99 are the medians over rounds of each round's
percentiles. The memory holds exactly the checkpoint's entity count when its warmup starts: the
new entities timed at one checkpoint count towards the next. At the top checkpoint, Memora is
judged faster on a compat tool when both its p50 and its p99 are below the reference's.

Every result is checked: a call answered with `isError` (or an MCP error) aborts the run with
the system, the tool, the arguments and the answer, since a benchmark that times errors measures
nothing. Every process is stopped and every temporary directory removed on the way out, also on
failure or Ctrl-C. Progress goes to stderr; the tables, one verdict line per compat tool at the
top checkpoint and one `BENCH_JSON ` line go to stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, TextIO

import attrs
import trio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from memora.bench.core import Progress
from memora.bench.http import HttpClientError, HttpConnection, Request
from memora.bench.raft import free_ports, latency_summary, machine_info
from memora.text_table import aligned_lines

REFERENCE_PACKAGE: Final = "@modelcontextprotocol/server-memory"
LOOPBACK_HOST: Final = "127.0.0.1"
COMPAT_TOOLS: Final = ("create_entities", "search_nodes", "open_nodes")
TOOLS: Final = (*COMPAT_TOOLS, "memory_search")
# Not a tool: an MCP `ping` round trip, timed like one, is the floor of the transport and of
# this client that every tool's latency includes.
PING: Final = "ping"
GROWTH_TOOLS: Final = ("create_entities", "create_relations")
# The initialize handshake, which every MCP server speaks (the reference server speaks nothing
# newer), so that both sides are timed on the same protocol.
CONNECT_MODE: Final = "legacy"
call_timeout_s: Final = 300.0  # A growth batch embeds every observation of `batch` entities.
server_start_timeout_s: Final = 120.0  # Loading the sentence model is part of starting.
server_stop_timeout_s: Final = 30.0
reference_warm_timeout_s: Final = 300.0  # The first `npx -y` downloads the package.
readiness_poll_interval_s: Final = 0.1
log_tail_chars_max: Final = 2_000
arguments_shown_chars_max: Final = 300
entities_max: Final = 100_000
batch_entities_max: Final = 1_000
names_per_open: Final = 3
observations_per_new_entity: Final = 2
memory_search_limit: Final = 10
relations_per_batch_fraction: Final = 0.5  # Relations made per entity grown, about.


@attrs.frozen
class Config:
    checkpoints: tuple[int, ...] = (1_000, 5_000, 10_000)  # Entities held when measuring.
    calls: int = 50  # Timed calls per tool per round.
    rounds: int = 3
    warmup: int = 5  # Untimed calls per tool before each checkpoint's rounds.
    batch: int = 100  # Entities per growth `create_entities` call.
    seed: int = 7
    embedder: str | None = None  # Memora's `--embedder`; None: Memora's default.
    reference: bool = True
    memora: bool = True

    @property
    def new_entities_per_checkpoint(self) -> int:
        """Entities the timed and warmup `create_entities` calls add at each checkpoint."""
        return self.warmup + self.rounds * self.calls

    def check(self) -> None:
        """Raise ValueError for a configuration the benchmark cannot run."""
        if self.calls < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError("need calls >= 1, rounds >= 1 and warmup >= 0")
        if not 1 <= self.batch <= batch_entities_max:
            raise ValueError(f"batch must be within 1..{batch_entities_max}")
        if not self.checkpoints:
            raise ValueError("need at least one checkpoint")
        if self.checkpoints[0] < names_per_open:
            raise ValueError(f"the first checkpoint must hold at least {names_per_open} entities")
        if self.checkpoints[-1] > entities_max:
            raise ValueError(f"checkpoints must be at most {entities_max:,} entities")
        gap = self.new_entities_per_checkpoint
        for before, after in zip(self.checkpoints, self.checkpoints[1:], strict=False):
            if after < before + gap:
                raise ValueError(
                    f"checkpoint {after} must be at least {before} + {gap}: each checkpoint "
                    f"adds warmup + rounds x calls = {gap} entities by timed creates"
                )
        if not (self.reference or self.memora):
            raise ValueError("nothing to measure: both the reference and Memora are disabled")


def default_checkpoints(entities: int) -> tuple[int, ...]:
    """A tenth, a half and all of `entities`, without repeats."""
    return tuple(sorted({max(entities // 10, 1), max(entities // 2, 1), entities}))


# -- The data -------------------------------------------------------------------------------------


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES: Final = words(
    "Ada Aiko Alba Alejandro Amara Amir Ana Anders Anika Arjun Astrid Aurora Bea Bilal Bruno "
    "Camila Carlos Chen Chiara Dalia Daniel Dara Diego Elena Elif Emeka Emil Esther Farah Felix "
    "Freya Gabriel Greta Hana Hassan Helga Hugo Ines Ingrid Isaac Ivan Jamal Jana Javier Jin "
    "Jonas Julia Kai Kalinda Karim Keiko Lars Layla Leo Lina Lucia Luca Malik Maren Maria Mateo "
    "Maya Mei Mira Nadia Nikolai Nina Noah Nora Olga Omar Oscar Paloma Pedro Priya Rafael Rania "
    "Ravi Rosa Ruth Sami Sara Selma Sofia Sven Tariq Tess Theo Tomas Uma Valentina Vera Viktor "
    "Wanjiru Yara Yusuf Zara"
)
LAST_NAMES: Final = words(
    "Abara Adeyemi Alvarez Andersen Bakker Banerjee Becker Bianchi Brennan Castillo Chowdhury "
    "Costa Dahl Dimitrov Dubois Eriksen Esposito Farouk Fischer Fonseca Garcia Gruber Haddad "
    "Hansen Horvath Ibrahim Ivanova Jensen Jovanovic Kaur Kowalski Kruger Laine Larsen Lindqvist "
    "Lopes Mahmoud Marino Mbeki Mendes Moreau Nakamura Navarro Nielsen Novak Nowak Okafor "
    "Okonkwo Olsen Ortega Osei Park Patel Pereira Petrov Quinn Rahman Reyes Ricci Rossi Saito "
    "Santos Schmidt Sato Silva Singh Sokolov Suzuki Svensson Takahashi Tanaka Torres Triantafyllou "
    "Usman Varga Vasquez Virtanen Volkov Wagner Walsh Weber Wojcik Xu Yamamoto Yilmaz Young Zhang "
    "Zhou Zielinski Achterberg Bergstrom Caruso Delgado Eze Falk Gallo Hoffmann"
)
ADJECTIVES: Final = words(
    "Amber Arctic Azure Bold Brass Bright Calm Cedar Cobalt Copper Coral Crimson Crystal Dawn "
    "Desert Emerald Ember Fern Frost Gentle Golden Granite Harbor Hidden Indigo Iron Ivory Jade "
    "Juniper Lantern Lunar Maple Marble Meadow Midnight Misty Nimble Northern Oak Onyx Orchid "
    "Pine Quiet Rapid River Ruby Rustic Sable Scarlet Silent Silver Slate Solar Spruce Stone "
    "Swift Velvet Willow Winter"
)
ANIMALS: Final = words(
    "Albatross Badger Bear Beaver Bison Cardinal Cheetah Condor Coyote Crane Crow Deer Dolphin "
    "Eagle Elk Falcon Ferret Finch Fox Gazelle Gecko Heron Hawk Ibex Jaguar Kestrel Koala Lark "
    "Lemur Leopard Lion Lynx Magpie Marten Moose Moth Narwhal Newt Ocelot Orca Osprey Otter Owl "
    "Panther Pelican Puffin Quail Raven Robin Salmon Seal Sparrow Stag Swan Tiger Toucan Turtle "
    "Walrus Wolf Wren"
)
ORGANIZATION_SUFFIXES: Final = words(
    "Analytics Architects Bakery Bank Clinic Consulting Foundation Games Health Labs Logistics "
    "Media Partners Robotics Studio Systems"
)
PLACE_KINDS: Final = (
    *words("Bakery Bookshop Cafe Diner Garden Gallery Library Market Park Pool Tavern"),
    "Wine Bar",
)
CITIES: Final = words(
    "Accra Amsterdam Athens Auckland Bangalore Barcelona Berlin Bogota Boston Cairo Chicago "
    "Copenhagen Dublin Edinburgh Helsinki Istanbul Jakarta Kyoto Lagos Lima Lisbon London Lyon "
    "Madrid Melbourne Montreal Mumbai Nairobi Osaka Oslo Paris Porto Prague Santiago Seoul "
    "Singapore Stockholm Taipei Toronto Vienna"
)
EVENT_KINDS: Final = (
    "Book Fair",
    "Design Summit",
    "Film Festival",
    "Hackathon",
    "Jazz Festival",
    "Marathon",
    "Meetup",
    "Product Launch",
    "Science Fair",
    "Tech Conference",
)
YEARS: Final = tuple(str(year) for year in range(2018, 2026))
ROLES: Final = (
    "backend engineer",
    "data scientist",
    "designer",
    "nurse",
    "product manager",
    "research lead",
    "sales director",
    "teacher",
    "translator",
    "UX researcher",
)
PREFERENCES: Final = (
    "dark roast coffee",
    "early morning meetings",
    "green tea",
    "long walks after lunch",
    "short written updates",
    "standing desks",
    "vegetarian food",
    "video calls over phone calls",
    "window seats",
    "working from home on Fridays",
)
TECHNOLOGIES: Final = ("Go", "Kotlin", "PostgreSQL", "Python", "React", "Rust", "SQLite", "Swift")
STATUSES: Final = ("on hold", "in review", "on track", "behind schedule", "shipped")
ACTIVITIES: Final = ("a quiet lunch", "client meetings", "reading", "team dinners", "working")
MONTHS: Final = words(
    "January February March April May June July August September October November December"
)
TOPICS: Final = ("climate data", "compilers", "privacy", "remote work", "robotics", "typography")
ENTITY_TYPES: Final = ("person", "project", "organization", "place", "event")
ENTITY_TYPE_WEIGHTS: Final = (50, 15, 10, 15, 10)
name_draws_max: Final = 20  # Random draws for a free name before numbering a taken one.
RELATION_TYPES: Final = {
    ("person", "organization"): "works_at",
    ("person", "project"): "works_on",
    ("person", "person"): "knows",
    ("person", "place"): "visits",
    ("person", "event"): "attended",
    ("project", "organization"): "owned_by",
    ("event", "place"): "held_at",
    ("organization", "place"): "located_near",
}


@attrs.frozen
class CheckpointPlan:
    """What every system is asked at one checkpoint, in order."""

    entities: int  # The memory holds exactly this many entities when `warmup` starts.
    growth: tuple[tuple[dict[str, Any], dict[str, Any]], ...]  # (create_entities, create_relations)
    warmup: dict[str, list[dict[str, Any]]]  # Tool: arguments of its untimed calls.
    rounds: tuple[dict[str, list[dict[str, Any]]], ...]  # Per round, tool: arguments.


@attrs.frozen
class Plan:
    checkpoints: tuple[CheckpointPlan, ...]


class Corpus:
    """The entities made so far and the seeded PRNG that makes the next ones."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: list[str] = []  # Every entity made, in order.
        self.types: dict[str, str] = {}  # Name: entityType.
        self.by_type: dict[str, list[str]] = {kind: [] for kind in ENTITY_TYPES}

    def new_entity(self, observations: int) -> dict[str, Any]:
        """A new entity with `observations` sentences (mentioning earlier entities); recorded."""
        assert observations >= 1, observations
        kind = self.rng.choices(ENTITY_TYPES, ENTITY_TYPE_WEIGHTS)[0]
        name = self._free_name(kind)
        templates = self.rng.sample(OBSERVATION_TEMPLATES[kind], observations)
        sentences = [template(self) for template in templates]
        self.names.append(name)
        self.types[name] = kind
        self.by_type[kind].append(name)
        return {"name": name, "entityType": kind, "observations": sentences}

    def _free_name(self, kind: str) -> str:
        for _ in range(name_draws_max):
            name = NAME_MAKERS[kind](self.rng)
            if name not in self.types:
                return name
        number = 2
        while f"{name} {number}" in self.types:
            number += 1
        return f"{name} {number}"

    def existing(self, kind: str) -> str:
        """The name of a random entity of `kind` made so far, or a fresh made-up one."""
        names = self.by_type[kind]
        return self.rng.choice(names) if names else NAME_MAKERS[kind](self.rng)

    def relations_for(self, names: Sequence[str]) -> list[dict[str, str]]:
        """About `relations_per_batch_fraction` new relations per name, each from one of `names`
        to an entity that exists (made earlier or in the same batch), none repeated."""
        assert self.names, "relations need entities"
        found: dict[tuple[str, str, str], dict[str, str]] = {}
        for source in names:
            if self.rng.random() >= relations_per_batch_fraction:
                continue
            target = self.rng.choice(self.names)
            if target == source:
                continue
            pair = (self.types[source], self.types[target])
            relation_type = RELATION_TYPES.get(pair, "related_to")
            relation = {"from": source, "to": target, "relationType": relation_type}
            found[(source, target, relation_type)] = relation
        return list(found.values())


NAME_MAKERS: Final[dict[str, Callable[[random.Random], str]]] = {
    "person": lambda rng: f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
    "project": lambda rng: f"Project {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}",
    "organization": lambda rng: (
        f"{rng.choice((*ADJECTIVES, *LAST_NAMES))} {rng.choice(ORGANIZATION_SUFFIXES)}"
    ),
    "place": lambda rng: (
        f"{rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} {rng.choice(PLACE_KINDS)}"
    ),
    "event": lambda rng: f"{rng.choice(CITIES)} {rng.choice(EVENT_KINDS)} {rng.choice(YEARS)}",
}

OBSERVATION_TEMPLATES: Final[dict[str, tuple[Callable[[Corpus], str], ...]]] = {
    "person": (
        lambda c: f"Works at {c.existing('organization')} as a {c.rng.choice(ROLES)}.",
        lambda c: f"Lives in {c.rng.choice(CITIES)}.",
        lambda c: f"Prefers {c.rng.choice(PREFERENCES)}.",
        lambda c: f"Is working on {c.existing('project')} with {c.existing('person')}.",
        lambda c: f"Met {c.existing('person')} at the {c.existing('event')}.",
        lambda c: f"Birthday is on {c.rng.choice(MONTHS)} {c.rng.randint(1, 28)}.",
    ),
    "project": (
        lambda c: f"Led by {c.existing('person')}.",
        lambda c: f"Deadline is the end of {c.rng.choice(MONTHS)}.",
        lambda c: f"Uses {c.rng.choice(TECHNOLOGIES)} for the backend.",
        lambda c: f"Status is {c.rng.choice(STATUSES)}.",
        lambda c: f"Funded by {c.existing('organization')}.",
    ),
    "organization": (
        lambda c: f"Headquartered in {c.rng.choice(CITIES)}.",
        lambda c: f"Has about {c.rng.randint(2, 400) * 10} employees.",
        lambda c: f"{c.existing('person')} is the main contact there.",
        lambda c: f"Sponsors the {c.existing('event')}.",
    ),
    "place": (
        lambda c: f"Located in {c.rng.choice(CITIES)}.",
        lambda c: f"Good for {c.rng.choice(ACTIVITIES)}.",
        lambda c: f"Recommended by {c.existing('person')}.",
        lambda c: f"Closed on {c.rng.choice(('Mondays', 'Sundays', 'public holidays'))}.",
    ),
    "event": (
        lambda c: f"Takes place in {c.rng.choice(CITIES)} every {c.rng.choice(MONTHS)}.",
        lambda c: f"{c.existing('person')} gave a talk there about {c.rng.choice(TOPICS)}.",
        lambda c: f"Held at the {c.existing('place')}.",
        lambda c: f"Tickets sold out in {c.rng.randint(2, 30)} days.",
    ),
}

QUESTIONS: Final = {
    "person": ("Where does {} work?", "What is {} working on these days?", "What does {} like?"),
    "project": ("Who leads {}?", "What is the status of {}?", "What is {} built with?"),
    "organization": ("Who is our contact at {}?", "Where is {} based?"),
    "place": ("Who recommended {}?", "When is {} closed?"),
    "event": ("Who spoke at the {}?", "Where is the {} held?"),
}


def make_plan(config: Config) -> Plan:
    """Every call of the run, made from `config.seed` alone: the same for every system."""
    corpus = Corpus(random.Random(config.seed))
    checkpoints = []
    for entities in config.checkpoints:
        growth = []
        while len(corpus.names) < entities:
            count = min(config.batch, entities - len(corpus.names))
            batch = [corpus.new_entity(corpus.rng.randint(2, 3)) for _ in range(count)]
            relations = corpus.relations_for([entity["name"] for entity in batch])
            growth.append(({"entities": batch}, {"relations": relations}))
        assert len(corpus.names) == entities, (len(corpus.names), entities)
        existing = list(corpus.names)  # The timed reads ask only for entities grown before.
        warmup = tool_arguments(corpus, existing, config.warmup)
        rounds = tuple(tool_arguments(corpus, existing, config.calls) for _ in range(config.rounds))
        checkpoints.append(CheckpointPlan(entities, tuple(growth), warmup, rounds))
    return Plan(tuple(checkpoints))


def tool_arguments(
    corpus: Corpus, existing: Sequence[str], count: int
) -> dict[str, list[dict[str, Any]]]:
    """`count` calls' arguments for `PING` and each tool in `TOOLS`."""
    rng = corpus.rng
    found: dict[str, list[dict[str, Any]]] = {
        PING: [{} for _ in range(count)],
        "create_entities": [
            {"entities": [corpus.new_entity(observations_per_new_entity)]} for _ in range(count)
        ],
        "search_nodes": [{"query": rng.choice(existing)} for _ in range(count)],
        "open_nodes": [{"names": rng.sample(existing, names_per_open)} for _ in range(count)],
        "memory_search": [
            {"query": question(rng, corpus, rng.choice(existing)), "limit": memory_search_limit}
            for _ in range(count)
        ],
    }
    assert tuple(found) == (PING, *TOOLS)
    return found


def question(rng: random.Random, corpus: Corpus, name: str) -> str:
    return rng.choice(QUESTIONS[corpus.types[name]]).format(name)


# -- The systems ----------------------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark cannot go on; the message says which system failed and how."""


@attrs.frozen
class StdioLaunch:
    """A server the client starts itself and talks to over its stdin and stdout."""

    command: str
    arguments: tuple[str, ...]
    environment: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class HttpLaunch:
    """A server this harness starts (`memora serve`), then reaches over streamable HTTP."""

    arguments: tuple[str, ...]  # Without the ports, which are picked when it starts.

    def command(self, http_port: int, mcp_port: int) -> list[str]:
        return [*self.arguments, "--http-port", str(http_port), "--mcp-port", str(mcp_port)]


@attrs.frozen
class System:
    name: str  # "reference" or "memora".
    transport: str  # "stdio" or "http".
    tools: tuple[str, ...]
    launch: StdioLaunch | HttpLaunch

    @property
    def key(self) -> str:
        return f"{self.name} {self.transport}"


def reference_system(root: Path) -> System:
    environment = {"MEMORY_FILE_PATH": str(root / "reference" / "memory.jsonl")}
    launch = StdioLaunch("npx", ("-y", REFERENCE_PACKAGE), environment)
    return System("reference", "stdio", COMPAT_TOOLS, launch)


def memora_systems(root: Path, embedder: str | None) -> list[System]:
    embedder_flags = () if embedder is None else ("--embedder", embedder)
    stdio = ("-m", "memora", "mcp", "--data-dir", str(root / "memora-stdio"), *embedder_flags)
    http = ("-m", "memora", "serve", "--data-dir", str(root / "memora-http"), *embedder_flags)
    return [
        System("memora", "stdio", TOOLS, StdioLaunch(sys.executable, stdio)),
        System("memora", "http", TOOLS, HttpLaunch((sys.executable, *http))),
    ]


@functools.cache
def memora_problem() -> str | None:
    """Why Memora's MCP server cannot be measured here, or None when `memora mcp` exists."""
    command = [sys.executable, "-m", "memora", "mcp", "--help"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=server_start_timeout_s)
    if done.returncode == 0:
        return None
    return f"`memora mcp` is not implemented yet (`memora mcp --help` exited {done.returncode})"


@functools.cache
def reference_problem() -> str | None:
    """Why the reference server cannot be measured here, or None once `npx -y` has fetched it
    (so that no timed or connecting step waits for the download). Asked once per process."""
    if shutil.which("npx") is None:
        return "npx is not installed (the reference server runs on Node.js)"
    with tempfile.TemporaryDirectory(prefix="memora-bench-mcp-warm-", dir="/tmp") as root:
        environment = {**os.environ, "MEMORY_FILE_PATH": os.path.join(root, "memory.jsonl")}
        try:
            done = subprocess.run(
                ["npx", "-y", REFERENCE_PACKAGE],
                stdin=subprocess.DEVNULL,  # It serves stdin until end of file: it stops at once.
                capture_output=True,
                text=True,
                env=environment,
                timeout=reference_warm_timeout_s,
            )
        except subprocess.TimeoutExpired:
            return f"`npx -y {REFERENCE_PACKAGE}` did not finish in {reference_warm_timeout_s:g} s"
    if done.returncode != 0:
        output = tail(done.stdout + done.stderr)
        return f"`npx -y {REFERENCE_PACKAGE}` failed (is the npm registry reachable?): {output}"
    return None


def tail(text: str) -> str:
    return text[-log_tail_chars_max:].strip()


def log_tail(path: Path) -> str:
    try:
        return tail(path.read_text(errors="replace"))
    except OSError:
        return ""


# -- Connecting -----------------------------------------------------------------------------------


def new_client(transport: Any) -> Client:
    return Client(transport, mode=CONNECT_MODE, cache=None, read_timeout_seconds=call_timeout_s)


@contextlib.asynccontextmanager
async def connect(system: System, log_path: Path) -> AsyncIterator[Client]:
    """Start `system`, connect and initialize; stop it on the way out, whatever happens.

    The server's own output (stderr; stdout too for HTTP) goes to `log_path`."""
    with log_path.open("w") as log:
        if isinstance(system.launch, StdioLaunch):
            launch = system.launch
            parameters = StdioServerParameters(
                command=launch.command,
                args=list(launch.arguments),
                env={**os.environ, **launch.environment},
            )
            async with new_client(stdio_client(parameters, errlog=log)) as client:
                yield client
        else:
            async with serve_http(system.launch, log, log_path) as url, new_client(url) as client:
                yield client


@contextlib.asynccontextmanager
async def serve_http(launch: HttpLaunch, log: IO[str], log_path: Path) -> AsyncIterator[str]:
    """`memora serve` in its own process group; yields the MCP URL once both ports answer.
    A clean exit with 0 is required after a clean run; otherwise the group is killed."""
    http_port, mcp_port = free_ports(2)
    process = subprocess.Popen(
        launch.command(http_port, mcp_port),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await wait_ready(process, http_port, mcp_port, log_path)
        yield f"http://{LOOPBACK_HOST}:{mcp_port}/mcp"
        process.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(process.wait, server_stop_timeout_s)
        if code != 0:
            raise BenchError(f"memora serve exited with {code}: {log_tail(log_path)}")
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the process and everything it started, then reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=server_stop_timeout_s)


async def wait_ready(
    process: subprocess.Popen[bytes], http_port: int, mcp_port: int, log_path: Path
) -> None:
    """Until `GET /api/v1/health` answers 200 and the MCP port takes connections."""
    with trio.move_on_after(server_start_timeout_s):
        while not (await health_ok(http_port) and await port_open(mcp_port)):
            if process.poll() is not None:
                output = log_tail(log_path)
                raise BenchError(f"memora serve exited with {process.returncode}: {output}")
            await trio.sleep(readiness_poll_interval_s)
        return
    raise BenchError(f"memora serve was not ready in {server_start_timeout_s:g} s")


async def health_ok(port: int) -> bool:
    try:
        connection = await HttpConnection.open(LOOPBACK_HOST, port)
    except OSError:
        return False
    try:
        response = await connection.send(Request("GET", "/api/v1/health"))
    except (HttpClientError, OSError):
        return False
    finally:
        await connection.aclose()
    return response.status == 200


async def port_open(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(LOOPBACK_HOST, port)
    except OSError:
        return False
    await stream.aclose()
    return True


# -- Calling and measuring ------------------------------------------------------------------------


async def call(client: Client, system: System, tool: str, arguments: dict[str, Any]) -> Any:
    """One tool call (or a ping); its result's `structuredContent`. Any error aborts the
    benchmark."""
    try:
        if tool == PING:
            await client.session.send_ping()
            return None
        result: CallToolResult = await client.call_tool(tool, arguments)
    except (MCPError, RuntimeError) as error:
        raise BenchError(call_failure(system, tool, arguments, repr(error))) from error
    if result.is_error:
        text = " ".join(getattr(block, "text", repr(block)) for block in result.content)
        raise BenchError(call_failure(system, tool, arguments, text))
    return result.structured_content


def call_failure(system: System, tool: str, arguments: dict[str, Any], answer: str) -> str:
    shown = json.dumps(arguments)
    if len(shown) > arguments_shown_chars_max:
        shown = shown[:arguments_shown_chars_max] + "..."
    return f"{system.key}: {tool} {shown} failed: {answer}"


def result_count(structured: Any) -> int | None:
    """How many entities (or hits) a result holds: its `entities` list, else its first list."""
    if not isinstance(structured, dict):
        return None
    if isinstance(structured.get("entities"), list):
        return len(structured["entities"])
    lists = [value for value in structured.values() if isinstance(value, list)]
    return len(lists[0]) if lists else None


async def timed_calls(
    client: Client, system: System, tool: str, arguments: Sequence[dict[str, Any]]
) -> tuple[list[int], list[int]]:
    """Each call in turn; every call's latency in ns and every result's count (when it has one)."""
    latencies: list[int] = []
    counts: list[int] = []
    for one in arguments:
        started = time.perf_counter_ns()
        structured = await call(client, system, tool, one)
        latencies.append(time.perf_counter_ns() - started)
        count = result_count(structured)
        if count is not None:
            counts.append(count)
    return latencies, counts


async def grow(client: Client, system: System, checkpoint: CheckpointPlan) -> float:
    """Make the checkpoint's growth batches; returns the seconds it took."""
    started = time.perf_counter()
    for entities, relations in checkpoint.growth:
        await call(client, system, "create_entities", entities)
        if relations["relations"]:
            await call(client, system, "create_relations", relations)
    return time.perf_counter() - started


async def measure_checkpoint(
    client: Client, system: System, checkpoint: CheckpointPlan
) -> dict[str, Any]:
    """Warm every tool, then the rounds (each round times the ping and every tool in turn)."""
    timed = (PING, *system.tools)
    for tool in timed:
        for arguments in checkpoint.warmup[tool]:
            await call(client, system, tool, arguments)
    summaries: dict[str, list[dict[str, Any]]] = {tool: [] for tool in timed}
    counts: dict[str, list[int]] = {tool: [] for tool in timed}
    for round_arguments in checkpoint.rounds:
        for tool in timed:
            latencies, found = await timed_calls(client, system, tool, round_arguments[tool])
            summaries[tool].append(latency_summary(latencies))
            counts[tool] += found
    return {tool: cell(summaries[tool], counts[tool]) for tool in timed}


def cell(summaries: Sequence[dict[str, Any]], counts: Sequence[int]) -> dict[str, Any]:
    return {
        "p50_ms": statistics.median(summary["p50_ms"] for summary in summaries),
        "p99_ms": statistics.median(summary["p99_ms"] for summary in summaries),
        "results_median": statistics.median(counts) if counts else None,
        "rounds": len(summaries),
        "calls_per_round": summaries[0]["samples"],
    }


async def listed_tools(client: Client, system: System) -> tuple[str, ...]:
    """The tools of `system` its server lists. Every compat and growth tool must be listed; an
    extended one that is not (`memory_search` before it ships) is left out of the timing."""
    listed = {tool.name for tool in (await client.list_tools()).tools}
    missing = [tool for tool in (*COMPAT_TOOLS, *GROWTH_TOOLS) if tool not in listed]
    if missing:
        raise BenchError(f"{system.key} does not list the tools {missing} (it lists {listed})")
    return tuple(tool for tool in system.tools if tool in listed)


async def measure_system(
    system: System, plan: Plan, log_path: Path, progress: Progress
) -> dict[str, Any]:
    """Start `system`, grow its memory through every checkpoint, time the tools at each."""
    planned = system.tools
    started = time.perf_counter()
    async with connect(system, log_path) as client:
        connect_s = time.perf_counter() - started
        system = attrs.evolve(system, tools=await listed_tools(client, system))
        server = client.server_info
        protocol_version = client.protocol_version
        progress(f"{system.key}: connected in {connect_s:.2f} s ({protocol_version})")
        checkpoints = {}
        for checkpoint in plan.checkpoints:
            grow_s = await grow(client, system, checkpoint)
            progress(f"{system.key}: {checkpoint.entities:,} entities ({grow_s:.1f} s)")
            cells = await measure_checkpoint(client, system, checkpoint)
            for tool, found in cells.items():
                progress(f"  {tool}: p50 {found['p50_ms']:.2f} ms, p99 {found['p99_ms']:.2f} ms")
            checkpoints[str(checkpoint.entities)] = {"grow_s": grow_s, "tools": cells}
    return {
        "transport": system.transport,
        "tools": list(system.tools),
        "unlisted_tools": [tool for tool in planned if tool not in system.tools],
        "connect_s": connect_s,
        "protocol_version": protocol_version,
        "server": None if server is None else f"{server.name} {server.version}",
        "checkpoints": checkpoints,
    }


# -- Reporting ------------------------------------------------------------------------------------


def ratio(reference: float | None, memora: float | None) -> float | None:
    """How many times longer the reference took (> 1: Memora is faster)."""
    if reference is None or memora is None or memora <= 0:
        return None
    return reference / memora


def checkpoint_rows(measured: dict[str, Any], entities: int) -> list[dict[str, Any]]:
    """Every (system, transport, tool) measured at `entities`, tool by tool; a Memora row on a
    compat tool carries the ratios against the reference row of the same tool."""
    reference = measured.get("reference stdio", {}).get("checkpoints", {}).get(str(entities))
    rows = []
    for tool in (PING, *TOOLS):
        for key, metrics in measured.items():
            cells = metrics["checkpoints"][str(entities)]["tools"]
            if tool not in cells:
                continue
            found = cells[tool]
            name, transport = key.split(" ")
            peer = (
                None if reference is None or name == "reference" else reference["tools"].get(tool)
            )
            rows.append(
                {
                    "system": name,
                    "transport": transport,
                    "tool": tool,
                    **found,
                    "reference_over_memora_p50": ratio(peer and peer["p50_ms"], found["p50_ms"]),
                    "reference_over_memora_p99": ratio(peer and peer["p99_ms"], found["p99_ms"]),
                }
            )
    return rows


def verdicts(config: Config, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per compat tool and Memora transport at the top checkpoint: faster when both its p50 and
    its p99 are below the reference's."""
    found = []
    for row in rows:
        if row["system"] != "memora" or row["tool"] not in COMPAT_TOOLS:
            continue
        p50, p99 = row["reference_over_memora_p50"], row["reference_over_memora_p99"]
        faster = None if p50 is None or p99 is None else p50 > 1 and p99 > 1
        found.append(
            {
                "tool": row["tool"],
                "transport": row["transport"],
                "entities": config.checkpoints[-1],
                "reference_over_memora_p50": p50,
                "reference_over_memora_p99": p99,
                "faster": faster,
            }
        )
    return found


def times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def table(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            row["system"],
            row["transport"],
            f"({PING})" if row["tool"] == PING else row["tool"],
            f"{row['p50_ms']:.2f} ms",
            f"{row['p99_ms']:.2f} ms",
            "" if row["results_median"] is None else f"{row['results_median']:g}",
            times(row["reference_over_memora_p50"]),
            times(row["reference_over_memora_p99"]),
        )
        for row in rows
    ]


HEADERS: Final = (
    "system",
    "transport",
    "tool",
    "p50",
    "p99",
    "results",
    "reference/memora p50",
    "reference/memora p99",
)


def verdict_lines(
    config: Config, judged: Sequence[dict[str, Any]], skipped: dict[str, str]
) -> Iterator[str]:
    top = f"{config.checkpoints[-1]:,} entities"
    for tool in COMPAT_TOOLS:
        parts = []
        for verdict in judged:
            if verdict["tool"] != tool or verdict["faster"] is None:
                continue
            word = "faster" if verdict["faster"] else "SLOWER"
            parts.append(
                f"memora {verdict['transport']} {word} (p50 "
                f"{times(verdict['reference_over_memora_p50'])}, p99 "
                f"{times(verdict['reference_over_memora_p99'])})"
            )
        if not parts:
            reasons = "; ".join(f"{key}: {why}" for key, why in skipped.items())
            parts.append(f"not judged ({reasons or 'no pair measured'})")
        yield f"verdict {tool} at {top}: " + "; ".join(parts)


def write_report(
    config: Config,
    measured: dict[str, Any],
    rows_by_checkpoint: dict[str, list[dict[str, Any]]],
    judged: Sequence[dict[str, Any]],
    skipped: dict[str, str],
    out: TextIO,
) -> None:
    for entities in config.checkpoints:
        out.write(f"At {entities:,} entities:\n")
        for line in aligned_lines(HEADERS, table(rows_by_checkpoint[str(entities)]), rule=True):
            out.write(line + "\n")
        out.write("\n")
    for key, metrics in measured.items():
        out.write(
            f"{key}: {metrics['server']}, protocol {metrics['protocol_version']}, connected in "
            f"{metrics['connect_s']:.1f} s, grown at {growth_rate(metrics):,.0f} entities/s\n"
        )
        for tool in metrics["unlisted_tools"]:
            out.write(f"{key}: does not list {tool}: not timed\n")
    for key, why in skipped.items():
        out.write(f"{key}: skipped: {why}\n")
    embedder = config.embedder or "Memora's default"
    out.write(
        f"reference: npx -y {REFERENCE_PACKAGE}; it reads its whole JSONL file on every call and "
        f"rewrites it on every write, without fsync. Memora: embedder {embedder}.\n"
        "Client: the mcp SDK's Client on trio, initialize handshake, one call at a time. "
        "p50/p99 are medians over "
        f"{config.rounds} rounds of {config.calls} calls; results is the median count of "
        "entities (or hits) per result; reference/memora > 1 means Memora is faster.\n"
    )
    for line in verdict_lines(config, judged, skipped):
        out.write(line + "\n")
    out.write("\n")


def growth_rate(metrics: dict[str, Any]) -> float:
    grown_s = sum(checkpoint["grow_s"] for checkpoint in metrics["checkpoints"].values())
    entities = max(int(entities) for entities in metrics["checkpoints"])
    return entities / grown_s if grown_s > 0 else float("nan")


# -- Running --------------------------------------------------------------------------------------


def choose_systems(
    config: Config, root: Path, progress: Progress
) -> tuple[list[System], dict[str, str]]:
    """The systems to measure, and why any other is skipped. A reference that cannot be fetched
    aborts the run: it was asked for."""
    chosen: list[System] = []
    skipped: dict[str, str] = {}
    if config.reference:
        progress(f"warming the npx cache: npx -y {REFERENCE_PACKAGE} (untimed)")
        problem = reference_problem()
        if problem is not None:
            raise BenchError(f"the reference server cannot run: {problem} (or pass --no-reference)")
        chosen.append(reference_system(root))
    else:
        skipped["reference stdio"] = "disabled by --no-reference"
    problem = memora_problem() if config.memora else "disabled by --no-memora"
    if problem is None:
        chosen += memora_systems(root, config.embedder)
    else:
        skipped["memora"] = problem
    return chosen, skipped


def measure_all(
    config: Config, root: Path, progress: Progress
) -> tuple[dict[str, Any], dict[str, str]]:
    plan = make_plan(config)
    chosen, skipped = choose_systems(config, root, progress)
    (root / "reference").mkdir()  # The reference server does not make its file's directory.
    measured = {}
    for system in chosen:
        log_path = root / f"{system.name}-{system.transport}.log"
        progress(f"{system.key}: starting")
        try:
            measured[system.key] = run_trio(measure_system, system, plan, log_path, progress)
        except Exception as error:  # A call failed, or it did not start, or it broke.
            message = str(error) if isinstance(error, BenchError) else f"{system.key}: {error!r}"
            output = log_tail(log_path)
            raise BenchError(f"{message}\n{system.key} output:\n{output}") from error
    return measured, skipped


def run_trio(function: Any, *arguments: Any) -> Any:
    """`trio.run`, with a failure inside the SDK's task groups raised as itself."""
    try:
        return trio.run(function, *arguments)
    except BaseExceptionGroup as group:
        raise leaf(group) from group


def leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to report from a group: Ctrl-C first, then our own, then the first."""
    leaves = list(flatten(group))
    for kind in (KeyboardInterrupt, BenchError):
        for error in leaves:
            if isinstance(error, kind):
                return error
    return leaves[0]


def flatten(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from flatten(inner)
    else:
        yield error


def run(config: Config, out: TextIO, progress_stream: TextIO) -> dict[str, Any]:
    """Measure every system, print the tables, the verdicts and the JSON line."""
    config.check()
    progress = Progress(progress_stream)
    root = Path(tempfile.mkdtemp(prefix="memora-bench-mcp-", dir="/tmp"))
    try:
        measured, skipped = measure_all(config, root, progress)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = {str(entities): checkpoint_rows(measured, entities) for entities in config.checkpoints}
    judged = verdicts(config, rows[str(config.checkpoints[-1])])
    result = {
        "bench": "mcp",
        "config": attrs.asdict(config),
        "machine": machine_info(),
        "systems": measured,
        "skipped": skipped,
        "checkpoints": rows,
        "verdicts": judged,
        "all_faster": all(v["faster"] for v in judged) if judged else None,
    }
    write_report(config, measured, rows, judged, skipped, out)
    out.write("BENCH_JSON " + json.dumps(result, sort_keys=True) + "\n")
    out.flush()
    progress("done")
    return result
