"""`memora serve`: one node on trio, alone or a member of a cluster, with the REST API over HTTP.

What lives here: the configuration of a serving process (flags, a TOML file, API tokens from the
environment), validated into one `ServeConfig`; and the process itself: a trio nursery holding
the `NodeDriver` and the HTTP server, and the signals that shut both down cleanly. It sits at the
top of the package because it wires `memora.net` and `memora.api` together. What must not: any
endpoint logic (`memora.api`), Raft or storage logic (`memora.net`, `memora.core`).

Configuration. Flags override the file; the file overrides the defaults. The file (`--config`)
is TOML with the keys `data_dir`, `host`, `http_port`, `mcp_port`, `body_bytes_max`,
`request_timeout_s`, `default_namespace`, the MCP keys `mcp_namespace` (the namespace MCP
clients use unless they pass `?namespace=`), `embedder` (`minilm`, `hashing[:DIM]` or
`openai:BASE_URL`), `mcp_profile` (`extended`, the default, or `compat`: the reference
server's nine tools alone) and `mcp_allowed_hosts` (host names besides the known ones that MCP's
DNS-rebinding protection lets in), the cluster keys below, and any number of token tables:

    [[tokens]]
    token = "a-long-random-secret"        # at least 16 visible ASCII characters
    namespaces = ["default", "notes"]     # or ["*"] for every namespace
    role = "write"                        # read, write or admin
    principal = "alice"                   # recorded as the author of the token's writes

Tokens may also come from the environment, added to the file's: `MEMORA_TOKENS_FILE` names a
TOML file holding only `[[tokens]]` tables, or `MEMORA_TOKENS` lists them inline, entries
separated by `;`, each `PRINCIPAL:ROLE:NAMESPACES:TOKEN` with the namespaces separated by `,`
(the token comes last, so it may itself hold `:`):

    MEMORA_TOKENS='alice:write:default,notes:a-long-random-secret;ops:admin:*:another-secret-value'

A bad value stops the process with exit code 2 and one line naming the key. With no tokens the
API is open, so the server listens on 127.0.0.1 only, whatever `--host` says, and says so.

A cluster. `--node-id N --peers 1=HOST:PORT,2=HOST:PORT,...` (keys `node_id`, `peers`) makes the
node a member: the list names every founding member's peer listener, this node's included (it
listens there). A new data directory founds the cluster of those members; with `--join` (key
`join`) it starts empty instead and waits for `memora cluster add-node`. `--cluster-id` (key
`cluster_id`, default `memora`) names the cluster. Members prove to each other that they hold
the cluster secret, from `MEMORA_CLUSTER_SECRET` or the file named by
`MEMORA_CLUSTER_SECRET_FILE` (or the key `cluster_secret_file`): at least 16 bytes, the same on
every member. A cluster without a secret is refused. A member's data directory holds its
incarnation (random, made with the directory): a member whose directory was wiped comes back
with another one, and the members that knew it refuse it until it is removed from the
configuration; it rejoins under a new id.

The process prints one line for the data directory, one for what recovery found, and one per
listener. SIGINT or SIGTERM: the HTTP server stops accepting connections and drains the requests
in flight, then the node drains its own work, makes its state durable (fsync) and closes; the
process exits 0. A second signal during that skips the draining.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import os
import re
import resource
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from functools import partial
from typing import Any, Final, TextIO

import attrs
import trio

from memora.api.app import create_app
from memora.api.http_server import serve_http
from memora.api.mcp.http import MCP_PATH, allowed_host_names, mcp_http_app
from memora.api.mcp.server import PROFILES, build_server
from memora.api.settings import ALL_NAMESPACES, ApiSettings, Role, TokenGrant
from memora.core import constants, validate
from memora.core.errors import MemoraError
from memora.net import peer_wire
from memora.net.cluster import (
    ClusterNode,
    PeerAddress,
    RaftOutbox,
    is_host,
    is_ip_address,
    parse_peers,
)
from memora.net.driver import NodeDriver
from memora.net.peer_incarnations import BOOK_FILE as INCARNATION_BOOK_FILE
from memora.net.peer_incarnations import IncarnationBook, read_or_make_incarnation
from memora.net.peer_transport import PeerTransport, TransportSettings
from memora.net.peer_wire import format_address
from memora.net.raft_storage import RaftStorageError
from memora.service.embedding import DEFAULT_EMBEDDER_SPEC, embedder_from_spec
from memora.service.knowledge_graph import DEFAULT_MCP_NAMESPACE, KnowledgeGraph

EXIT_CONFIG_ERROR: Final = 2
EXIT_FAILURE: Final = 1
TOKENS_VARIABLE: Final = "MEMORA_TOKENS"
TOKENS_FILE_VARIABLE: Final = "MEMORA_TOKENS_FILE"
SECRET_VARIABLE: Final = "MEMORA_CLUSTER_SECRET"
SECRET_FILE_VARIABLE: Final = "MEMORA_CLUSTER_SECRET_FILE"
CLUSTER_ID_DEFAULT: Final = "memora"
# The file keys of a cluster member (no defaults: a node without `peers` runs alone).
CLUSTER_KEYS: Final = ("node_id", "peers", "join", "cluster_id", "cluster_secret_file")
LOOPBACK_HOST: Final = "127.0.0.1"
DEFAULTS: Final[Mapping[str, Any]] = {
    "data_dir": "./memora_data",
    "host": LOOPBACK_HOST,
    "http_port": 8080,
    "mcp_port": 9090,
    "body_bytes_max": ApiSettings().body_bytes_max,
    "request_timeout_s": ApiSettings().request_timeout_s,
    "default_namespace": constants.namespace_default,
    "mcp_namespace": DEFAULT_MCP_NAMESPACE,
    "embedder": DEFAULT_EMBEDDER_SPEC,
    "mcp_allowed_hosts": [],
    "mcp_profile": "extended",
}
# The keys a flag may set (`--data-dir` sets data_dir), overriding the file.
FLAG_KEYS: Final = (
    "data_dir",
    "host",
    "http_port",
    "mcp_port",
    "mcp_namespace",
    "embedder",
    "mcp_profile",
    "node_id",
    "peers",
    "join",
    "cluster_id",
)
TOKEN_CHARACTERS_MIN: Final = 16
BODY_BYTES_MAX_LIMIT: Final = 1 << 30
REQUEST_TIMEOUT_S_MAX: Final = 3600.0
# The soft limit on open files is raised to this when the hard limit is unlimited.
OPEN_FILES_UNLIMITED_SOFT: Final = 65_536
_TOKEN_PATTERN: Final = re.compile(r"[\x21-\x7e]+")  # Visible ASCII: safe in an HTTP header.
_PREFIX: Final = "memora serve:"


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@attrs.frozen
class ClusterConfig:
    """This node's place in a cluster: its id, every founding member's peer address (its own
    included), whether it joins an existing cluster, and the cluster's id and secret."""

    node_id: int
    peers: Mapping[int, PeerAddress]
    join: bool
    cluster_id: str
    secret: bytes = attrs.field(repr=False)

    @property
    def listen(self) -> PeerAddress:
        return self.peers[self.node_id]


@attrs.frozen
class McpConfig:
    """The MCP endpoint: the namespace it serves by default, the embedder of its texts, and the
    host names its DNS-rebinding protection lets in besides the ones it knows."""

    namespace: str = DEFAULT_MCP_NAMESPACE
    embedder: str = DEFAULT_EMBEDDER_SPEC
    allowed_hosts: tuple[str, ...] = ()
    profile: str = "extended"


@attrs.frozen
class ServeConfig:
    data_dir: str
    host: str
    http_port: int
    mcp_port: int
    api: ApiSettings
    mcp: McpConfig = McpConfig()
    # The non-loopback --host that was asked for and replaced by 127.0.0.1 (no tokens), if any.
    host_refused: str | None = None
    cluster: ClusterConfig | None = None


# -- The command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `memora serve`. They default to None, so that only given flags override."""
    parser.add_argument("--data-dir", help=f"the node's directory (default {DEFAULTS['data_dir']})")
    parser.add_argument("--host", help=f"address to listen on (default {DEFAULTS['host']})")
    parser.add_argument(
        "--http-port",
        type=_port_flag,
        help=f"REST API port, 0 for any free one (default {DEFAULTS['http_port']})",
    )
    parser.add_argument(
        "--mcp-port",
        type=_port_flag,
        help=f"MCP (streamable HTTP) port, 0 for any free one (default {DEFAULTS['mcp_port']})",
    )
    parser.add_argument(
        "--mcp-namespace",
        help=f"namespace MCP clients use unless they ask (default {DEFAULTS['mcp_namespace']})",
    )
    parser.add_argument(
        "--mcp-profile",
        choices=("extended", "compat"),
        help="MCP tools: extended (default: the nine compat tools and Memora's own) or compat",
    )
    parser.add_argument(
        "--embedder",
        help="text embedder of the MCP tools: minilm (default), hashing[:DIM] or openai:BASE_URL",
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML file of settings and [[tokens]]")
    cluster = parser.add_argument_group("cluster membership")
    cluster.add_argument("--node-id", type=_integer_flag, help="this node's id in the cluster")
    cluster.add_argument(
        "--peers",
        metavar="ID=HOST:PORT,...",
        help="every founding member's peer address, this node's included (it listens there)",
    )
    cluster.add_argument(
        "--join",
        action="store_true",
        default=None,
        help="start empty and wait to be added (`memora cluster add-node`), not found a cluster",
    )
    cluster.add_argument("--cluster-id", help=f"the cluster's name (default {CLUSTER_ID_DEFAULT})")


def _integer_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _port_flag(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


def main(arguments: argparse.Namespace) -> int:
    """Run `memora serve` with parsed flags; returns the process's exit code."""
    try:
        config = load_config(arguments, os.environ)
    except ConfigError as error:
        print(f"{_PREFIX} configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return serve(config, sys.stdout)


# -- Configuration ------------------------------------------------------------------------------


def load_config(arguments: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """Merge defaults, the file and the flags, add tokens from the environment, and validate."""
    file_values = _read_toml(arguments.config, "--config") if arguments.config else {}
    _check_known_keys(file_values, {*DEFAULTS, *CLUSTER_KEYS, "tokens"}, prefix="")
    merged = {**DEFAULTS, **file_values}
    for key in FLAG_KEYS:
        value = getattr(arguments, key)
        if value is not None:
            merged[key] = value
    tokens = _tokens_from_file_values(file_values) + _tokens_from_environment(environ)
    _check_tokens_unique(tokens)
    api = ApiSettings(
        tokens=tokens,
        body_bytes_max=_integer(merged, "body_bytes_max", 1, BODY_BYTES_MAX_LIMIT),
        request_timeout_s=_seconds(merged, "request_timeout_s", REQUEST_TIMEOUT_S_MAX),
        default_namespace=_namespace(merged["default_namespace"], "default_namespace"),
    )
    http_port = _integer(merged, "http_port", 0, 65535)
    mcp_port = _integer(merged, "mcp_port", 0, 65535)
    if http_port == mcp_port != 0:
        raise ConfigError("mcp_port", f"must differ from http_port ({http_port})")
    host = _host(merged["host"])
    refused = None
    if api.open_access and not _is_loopback(host):
        host, refused = LOOPBACK_HOST, host
    cluster = _cluster(merged, environ)
    data_dir = _data_dir(merged["data_dir"])
    mcp = _mcp(merged)
    return ServeConfig(data_dir, host, http_port, mcp_port, api, mcp, refused, cluster)


def _mcp(values: Mapping[str, Any]) -> McpConfig:
    namespace = _namespace(values["mcp_namespace"], "mcp_namespace")
    spec = values["embedder"]
    try:
        embedder_from_spec(spec if isinstance(spec, str) else repr(spec))
    except MemoraError as error:
        raise ConfigError("embedder", error.message) from None
    hosts = values["mcp_allowed_hosts"]
    if not isinstance(hosts, list) or not all(isinstance(h, str) and is_host(h) for h in hosts):
        raise ConfigError("mcp_allowed_hosts", "must be a list of host names or addresses")
    profile = values["mcp_profile"]
    if profile not in PROFILES:
        raise ConfigError("mcp_profile", f"must be one of {', '.join(PROFILES)}")
    return McpConfig(namespace, spec, tuple(hosts), profile)


def _cluster(values: Mapping[str, Any], environ: Mapping[str, str]) -> ClusterConfig | None:
    """The cluster settings, or None for a node that runs alone (no `peers`)."""
    if values.get("peers") is None:
        for key in ("node_id", "join", "cluster_id"):
            if values.get(key) is not None:
                raise ConfigError(key, "needs peers (--peers ID=HOST:PORT,...)")
        return None
    if not isinstance(values["peers"], str):
        raise ConfigError("peers", "must be a string ID=HOST:PORT,ID=HOST:PORT,...")
    try:
        peers = parse_peers(values["peers"])
        cluster_id = peer_wire.check_cluster_id(values.get("cluster_id") or CLUSTER_ID_DEFAULT)
    except MemoraError as error:
        raise ConfigError(error.field or "peers", error.message) from None
    node_id = values.get("node_id")
    if node_id is None:
        raise ConfigError("node_id", "a member of a cluster needs its id (--node-id)")
    if node_id not in peers:
        raise ConfigError("node_id", f"node {node_id} is not in peers, which must list it")
    join = values.get("join") or False
    if type(join) is not bool:
        raise ConfigError("join", "must be true or false")
    secret = _cluster_secret(values, environ)
    return ClusterConfig(node_id, peers, join, cluster_id, secret)


def _cluster_secret(values: Mapping[str, Any], environ: Mapping[str, str]) -> bytes:
    inline, path = environ.get(SECRET_VARIABLE), environ.get(SECRET_FILE_VARIABLE)
    path = path or values.get("cluster_secret_file")
    if inline is not None and path is not None:
        raise ConfigError(SECRET_FILE_VARIABLE, f"set either {SECRET_VARIABLE} or a file, not both")
    if inline is None and path is None:
        needed = f"a cluster needs a shared secret: set {SECRET_VARIABLE} or {SECRET_FILE_VARIABLE}"
        raise ConfigError(SECRET_VARIABLE, needed)
    key = SECRET_VARIABLE if inline is not None else SECRET_FILE_VARIABLE
    if inline is not None:
        secret = inline.encode()
    else:
        try:
            with open(str(path), "rb") as file:
                secret = file.read().strip()
        except OSError as error:
            raise ConfigError(key, f"cannot read {path}: {error.strerror}") from None
    try:
        return peer_wire.check_secret(secret)
    except MemoraError as error:
        raise ConfigError(key, error.message) from None


def _read_toml(path: str, key: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(key, f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(key, f"{path} is not valid TOML: {error}") from None


def _check_known_keys(values: Mapping[str, Any], known: set[str], *, prefix: str) -> None:
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{prefix}{key}", f"unknown key; known keys: {', '.join(sorted(known))}"
            )


def _integer(values: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = values[key]
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(key, f"must be an integer from {low} to {high}, not {value!r}")
    return value


def _seconds(values: Mapping[str, Any], key: str, high: float) -> float:
    value = values[key]
    if type(value) not in (int, float) or not (math.isfinite(value) and 0 < value <= high):
        raise ConfigError(key, f"must be a number of seconds above 0 and at most {high:g}")
    return float(value)


def _namespace(value: object, key: str) -> str:
    try:
        return validate.namespace_name(value)
    except MemoraError as error:
        raise ConfigError(key, error.message) from None


def _host(value: object) -> str:
    if not isinstance(value, str) or not is_host(value):
        raise ConfigError("host", f"must be an IP address or a host name, not {value!r}")
    return value


def _is_loopback(host: str) -> bool:
    return host == "localhost" or (is_ip_address(host) and ipaddress.ip_address(host).is_loopback)


def _data_dir(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError("data_dir", f"must be a directory path, not {value!r}")
    if os.path.exists(value) and not os.path.isdir(value):
        raise ConfigError("data_dir", f"{value} exists and is not a directory")
    return os.path.abspath(value)


# -- Tokens -------------------------------------------------------------------------------------


def _tokens_from_file_values(
    values: Mapping[str, Any], *, origin: str = ""
) -> tuple[TokenGrant, ...]:
    tables = values.get("tokens", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{origin}tokens", "must be an array of [[tokens]] tables")
    return tuple(
        _token_table(table, f"{origin}tokens[{position}]") for position, table in enumerate(tables)
    )


def _token_table(table: object, key: str) -> TokenGrant:
    if not isinstance(table, dict):
        raise ConfigError(key, "must be a table with token, namespaces, role and principal")
    _check_known_keys(table, {"token", "namespaces", "role", "principal"}, prefix=f"{key}.")
    for field in ("token", "namespaces", "role", "principal"):
        if field not in table:
            raise ConfigError(f"{key}.{field}", "is missing")
    namespaces = table["namespaces"]
    if not isinstance(namespaces, list) or not namespaces:
        raise ConfigError(f"{key}.namespaces", 'must be a non-empty list of names (or ["*"])')
    return _grant(table["token"], namespaces, table["role"], table["principal"], key)


def _grant(
    token: object, namespaces: list[object], role: object, principal: object, key: str
) -> TokenGrant:
    if not isinstance(token, str) or not _TOKEN_PATTERN.fullmatch(token):
        raise ConfigError(f"{key}.token", "must be visible ASCII characters with no spaces")
    if len(token) < TOKEN_CHARACTERS_MIN:
        raise ConfigError(f"{key}.token", f"must be at least {TOKEN_CHARACTERS_MIN} characters")
    roles = [member.value for member in Role]
    if role not in roles:
        raise ConfigError(f"{key}.role", f"must be one of {', '.join(roles)}, not {role!r}")
    try:
        validate.text_field(principal, "principal", constants.principal_bytes_max)
    except MemoraError as error:
        raise ConfigError(f"{key}.principal", error.message) from None
    names = frozenset(
        name if name == ALL_NAMESPACES else _namespace(name, f"{key}.namespaces")
        for name in namespaces
    )
    assert isinstance(principal, str) and isinstance(role, str)
    return TokenGrant(token=token, namespaces=names, role=Role(role), principal=principal)


def _tokens_from_environment(environ: Mapping[str, str]) -> tuple[TokenGrant, ...]:
    inline, path = environ.get(TOKENS_VARIABLE), environ.get(TOKENS_FILE_VARIABLE)
    if inline is not None and path is not None:
        raise ConfigError(TOKENS_FILE_VARIABLE, f"set either {TOKENS_VARIABLE} or it, not both")
    if path is not None:
        values = _read_toml(path, TOKENS_FILE_VARIABLE)
        _check_known_keys(values, {"tokens"}, prefix=f"{TOKENS_FILE_VARIABLE}: ")
        return _tokens_from_file_values(values, origin=f"{TOKENS_FILE_VARIABLE}: ")
    if inline is None:
        return ()
    entries = [entry.strip() for entry in inline.split(";") if entry.strip()]
    return tuple(
        _inline_token(entry, f"{TOKENS_VARIABLE}[{position}]")
        for position, entry in enumerate(entries)
    )


def _inline_token(entry: str, key: str) -> TokenGrant:
    parts = entry.split(":", 3)
    if len(parts) != 4:
        raise ConfigError(key, "must be PRINCIPAL:ROLE:NAMESPACES:TOKEN")
    principal, role, namespaces, token = parts
    names: list[object] = [name.strip() for name in namespaces.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"{key}.namespaces", "must name at least one namespace (or *)")
    return _grant(token, names, role, principal, key)


def _check_tokens_unique(tokens: tuple[TokenGrant, ...]) -> None:
    seen: set[str] = set()
    for grant in tokens:
        if grant.token in seen:
            raise ConfigError(
                "tokens", f"the token of principal {grant.principal!r} is configured twice"
            )
        seen.add(grant.token)


# -- The process --------------------------------------------------------------------------------


def serve(config: ServeConfig, out: TextIO) -> int:
    """Open the node, serve until SIGINT or SIGTERM, shut down cleanly; returns the exit code."""
    say = partial(_say, out)
    _raise_open_files_limit()
    try:
        node, link = _open_node(config)
    except (OSError, ValueError, RaftStorageError, MemoraError) as error:
        say(f"cannot open the data directory {config.data_dir}: {error}")
        return EXIT_FAILURE
    driver = node.driver if isinstance(node, ClusterNode) else node
    for line in _recovery_lines(driver):
        say(line)
    failure: OSError | None = None
    try:
        trio.run(_serve, config, node, link, say)
    except* OSError as group:
        failure = _first_error(group)
    if failure is not None:
        say(f"stopped: {failure}")
        return EXIT_FAILURE
    return 0


def _open_node(config: ServeConfig) -> tuple[NodeDriver | ClusterNode, PeerTransport | None]:
    """The node alone, or the member of a cluster with its links to the peers."""
    namespace = config.api.default_namespace
    cluster = config.cluster
    if cluster is None:
        return NodeDriver.open(config.data_dir, default_namespace=namespace), None
    os.makedirs(config.data_dir, exist_ok=True)
    # Made with the directory: a wiped member comes back with another, and its peers refuse it.
    incarnation = read_or_make_incarnation(config.data_dir)
    settings = TransportSettings(cluster.cluster_id, cluster.secret, incarnation=incarnation)
    link = PeerTransport(
        cluster.node_id,
        cluster.listen,
        cluster.peers,
        settings,
        lambda sender, body: member.deliver(sender, body),
        IncarnationBook(os.path.join(config.data_dir, INCARNATION_BOOK_FILE)),
    )
    driver = NodeDriver.open(
        config.data_dir,
        node_id=cluster.node_id,
        transport=RaftOutbox(link),
        founding_voters=tuple(sorted(cluster.peers)),
        joining=cluster.join,
        default_namespace=namespace,
    )
    member = ClusterNode(driver, link, cluster_id=cluster.cluster_id)
    return member, link


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one. Every keep-alive connection holds a
    descriptor, and the usual soft default (1024) would cap the server near 1,000 connections.
    A limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_UNLIMITED_SOFT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _say(out: TextIO, line: str) -> None:
    print(f"{_PREFIX} {line}", file=out, flush=True)


def _recovery_lines(driver: NodeDriver) -> Iterator[str]:
    recovery = driver.storage_recovery
    log = recovery.log
    snapshot_index = driver.health()["snapshot_index"]
    snapshot = f"snapshot at index {snapshot_index}" if snapshot_index else "no snapshot"
    records = "no log records" if not log.records else f"log {log.first_index} to {log.last_index}"
    yield f"data directory {driver.data_dir}: {snapshot}, {records}"
    if log.truncated_path is not None:
        yield (
            f"recovery: cut a torn log tail of {log.truncated_bytes} bytes at "
            f"{log.truncated_path} offset {log.truncated_offset} ({log.reason})"
        )
    if recovery.stale_entries_discarded:
        dropped = recovery.stale_entries_discarded
        yield f"recovery: dropped {dropped} log records that a snapshot replaced"
    for warning in recovery.snapshot_warnings:
        yield f"recovery: {warning}"


def _first_error(group: BaseExceptionGroup[OSError]) -> OSError:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, OSError), error
    return error


async def _serve(
    config: ServeConfig,
    node: NodeDriver | ClusterNode,
    link: PeerTransport | None,
    say: Callable[[str], None],
) -> None:
    # Open the receiver first, so that a signal during start-up still shuts down cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stop_http = trio.Event()
        async with trio.open_nursery() as signal_nursery:
            abandon = signal_nursery.cancel_scope
            signal_nursery.start_soon(_watch_signals, signals, stop_http, abandon, say)
            async with trio.open_nursery() as link_nursery:
                if link is not None:
                    await link_nursery.start(link.run)
                    say(_link_line(config, link))
                async with trio.open_nursery() as node_nursery:
                    await node_nursery.start(node.run)
                    say(_node_line(node))
                    await _serve_http_until(stop_http, config, node, say)
                    node.stop()  # HTTP drained: now the node drains, fsyncs and closes.
                link_nursery.cancel_scope.cancel()  # The node is closed: drop the links.
            abandon.cancel()  # Stops watching for signals.
    say(f"stopped cleanly at applied index {node.health()['applied_index']}")


async def _serve_http_until(
    stop: trio.Event,
    config: ServeConfig,
    node: NodeDriver | ClusterNode,
    say: Callable[[str], None],
) -> None:
    """Serve the REST API and MCP until `stop` is set; returns once the requests in flight
    drained."""
    app = create_app(node, config.api)
    embedder = embedder_from_spec(config.mcp.embedder)
    mcp_server = build_server(KnowledgeGraph(node, embedder), None, config.mcp.profile)
    peer_hosts = [host for host, _ in config.cluster.peers.values()] if config.cluster else []
    host_names = allowed_host_names(config.host, peer_hosts, config.mcp.allowed_hosts)
    mcp_app = mcp_http_app(mcp_server, config.api, config.mcp.namespace, host_names)
    serve_rest = partial(
        serve_http, app, host=config.host, port=config.http_port, shutdown_trigger=stop.wait
    )
    serve_mcp = partial(
        serve_http, mcp_app, host=config.host, port=config.mcp_port, shutdown_trigger=stop.wait
    )
    async with mcp_server.session_manager.run(), trio.open_nursery() as http_nursery:
        http_nursery.start_soon(trio.to_thread.run_sync, embedder.embed_many, ["warm up"])
        port = await http_nursery.start(serve_rest)
        mcp_port = await http_nursery.start(serve_mcp)
        for line in _listener_lines(config, port, mcp_port, embedder.name):
            say(line)


async def _watch_signals(
    signals: AsyncIterator[int],
    stop_http: trio.Event,
    abandon: trio.CancelScope,
    say: Callable[[str], None],
) -> None:
    """The first signal starts a clean shutdown; a second one abandons the draining."""
    async for number in signals:
        name = signal.Signals(number).name
        if stop_http.is_set():
            say(f"{name} received again: stopping without draining")
            abandon.cancel()
            return
        say(f"{name} received: draining requests, then stopping")
        stop_http.set()


def _link_line(config: ServeConfig, link: PeerTransport) -> str:
    cluster = config.cluster
    assert cluster is not None
    host, _ = cluster.listen
    peers = cluster.peers.items()
    members = ",".join(f"{node}={format_address(*address)}" for node, address in peers)
    joining = "; joining: waits to be added" if cluster.join else ""
    return (
        f"cluster {cluster.cluster_id!r}: node {cluster.node_id}, peer links on "
        f"{format_address(host, link.listen_port)}, founding members {members}{joining}"
    )


def _node_line(node: NodeDriver | ClusterNode) -> str:
    health = node.health()
    return (
        f"node {health['node_id']} is {health['role']} in term {health['term']}, "
        f"applied index {health['applied_index']}"
    )


def _listener_lines(
    config: ServeConfig, http_port: int, mcp_port: int, embedder: str
) -> Iterator[str]:
    address = f"[{config.host}]" if ":" in config.host else config.host
    yield f"REST API on http://{address}:{http_port}/api/v1 (OpenAPI at /openapi.json)"
    yield (
        f"MCP (streamable HTTP) on http://{address}:{mcp_port}{MCP_PATH}, namespace "
        f"{config.mcp.namespace!r} unless ?namespace= asks, embedder {embedder}"
    )
    if config.api.open_access:
        refused = f" instead of {config.host_refused}" if config.host_refused else ""
        yield (
            f"no API tokens configured: the API is open, so it listens on {LOOPBACK_HOST} only"
            f"{refused}; configure [[tokens]] to listen elsewhere"
        )
    else:
        yield f"{len(config.api.tokens)} API tokens configured: every request needs a bearer token"
    yield "ready; SIGINT or SIGTERM stops the server cleanly"
