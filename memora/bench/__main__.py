"""`python -m memora.bench {core,raft,http,cluster,mcp} [flags]`: run a benchmark, print its table.

`--quick` shrinks every size for a run of about a minute; explicit flags still override it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from memora.bench import cluster, http, mcp, raft
from memora.bench.core import Config, run

QUICK: dict[str, Any] = {
    "vectors": 10_000,
    "clusters": 20,
    "queries": 200,
    "graph_nodes": 10_000,
    "graph_edges": 50_000,
    "sources": 300,
    "inserts": 300,
}

HTTP_QUICK: dict[str, Any] = {"nodes": 1_000, "requests": 500, "warmup": 50}

MCP_QUICK: dict[str, Any] = {"checkpoints": (200, 1_000), "calls": 15, "warmup": 3}


def parser() -> argparse.ArgumentParser:
    summary = __doc__.splitlines()[0]
    top = argparse.ArgumentParser(prog="python -m memora.bench", description=summary)
    commands = top.add_subparsers(dest="bench", required=True)
    core = commands.add_parser("core", help="embedded store vs raw hnswlib and networkx")
    defaults = Config()
    flags: list[tuple[str, str]] = [
        ("vectors", "vectors to index"),
        ("dimension", "vector dimension"),
        ("clusters", "Gaussian clusters the vectors are drawn from"),
        ("queries", "held-out query vectors"),
        ("graph_nodes", "nodes in the power-law graph"),
        ("graph_edges", "edges in the power-law graph (about)"),
        ("seed", "seed of all generated data"),
        ("rounds", "measurement rounds; each percentile is the median over rounds"),
        ("sources", "start nodes of the 2-hop graph queries"),
        ("inserts", "durable single inserts to time"),
        ("warmup", "untimed operations per system before each measurement"),
        ("batch_size", "commands per batch call and vectors per add_items call"),
    ]
    for name, help_text in flags:
        default = getattr(defaults, name)
        core.add_argument(
            "--" + name.replace("_", "-"), type=int, help=f"{help_text} (default {default})"
        )
    core.add_argument("--ef", type=int, nargs="+", help=f"ef values (default {defaults.efs})")
    core.add_argument("--metric", choices=("cosine", "l2"), help="distance (default cosine)")
    core.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    core.add_argument("--json-out", help="also write the result JSON to this path")
    raft_parser = commands.add_parser("raft", help="3-node Raft cluster vs PySyncObj")
    raft_defaults = raft.Config()
    raft_parser.add_argument(
        "--seconds", type=float, help=f"seconds per phase (default {raft_defaults.seconds:g})"
    )
    raft_parser.add_argument(
        "--payload-bytes", type=int, help=f"bytes per entry (default {raft_defaults.payload_bytes})"
    )
    raft_parser.add_argument(
        "--inflight", type=int, nargs="+", help=f"levels (default {raft_defaults.inflight})"
    )
    raft_parser.add_argument("--no-peer", action="store_true", help="skip PySyncObj")
    raft_parser.add_argument("--quick", action="store_true", help="1 s per phase")
    raft_parser.add_argument("--json-out", help="also write the result JSON to this path")
    add_http_arguments(commands.add_parser("http", help="memora serve over loopback HTTP"))
    add_cluster_arguments(
        commands.add_parser("cluster", help="3-process Memora cluster vs PySyncObj")
    )
    add_mcp_arguments(
        commands.add_parser("mcp", help="MCP tool calls: Memora vs the reference memory server")
    )
    return top


def add_mcp_arguments(mcp_parser: argparse.ArgumentParser) -> None:
    defaults = mcp.Config()
    mcp_parser.add_argument(
        "--entities",
        type=int,
        help=f"entities at the top checkpoint; the others are a tenth and a half of it "
        f"(default {defaults.checkpoints[-1]})",
    )
    mcp_parser.add_argument(
        "--checkpoints",
        type=int,
        nargs="+",
        help=f"entity counts to measure at, increasing "
        f"(default {' '.join(map(str, defaults.checkpoints))})",
    )
    flags: list[tuple[str, str]] = [
        ("calls", "timed calls per tool per round"),
        ("rounds", "measurement rounds; each percentile is the median over rounds"),
        ("warmup", "untimed calls per tool before each checkpoint's rounds"),
        ("batch", "entities per create_entities call while growing"),
        ("seed", "seed of all generated entities and queries"),
    ]
    for name, help_text in flags:
        default = getattr(defaults, name)
        mcp_parser.add_argument("--" + name, type=int, help=f"{help_text} (default {default})")
    mcp_parser.add_argument(
        "--embedder", help="Memora's --embedder (minilm, hashing; default: Memora's own)"
    )
    mcp_parser.add_argument(
        "--no-reference", action="store_true", help=f"skip npx -y {mcp.REFERENCE_PACKAGE}"
    )
    mcp_parser.add_argument("--no-memora", action="store_true", help="skip Memora's servers")
    mcp_parser.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    mcp_parser.add_argument("--json-out", help="also write the result JSON to this path")


def mcp_config_from(arguments: argparse.Namespace) -> mcp.Config:
    """The flags as a config; ValueError when --entities and --checkpoints disagree."""
    values: dict[str, Any] = dict(MCP_QUICK) if arguments.quick else {}
    if arguments.entities is not None:
        values["checkpoints"] = mcp.default_checkpoints(arguments.entities)
    if arguments.checkpoints is not None:
        checkpoints = tuple(arguments.checkpoints)
        if arguments.entities is not None and checkpoints[-1] != arguments.entities:
            raise ValueError("--entities must be the last of --checkpoints when both are given")
        values["checkpoints"] = checkpoints
    for name in ("calls", "rounds", "warmup", "batch", "seed", "embedder"):
        if getattr(arguments, name) is not None:
            values[name] = getattr(arguments, name)
    values["reference"] = not arguments.no_reference
    values["memora"] = not arguments.no_memora
    return mcp.Config(**values)


def add_cluster_arguments(cluster_parser: argparse.ArgumentParser) -> None:
    defaults = cluster.Config()
    cluster_parser.add_argument(
        "--seconds", type=float, help=f"seconds per phase (default {defaults.seconds:g})"
    )
    cluster_parser.add_argument(
        "--payload-bytes", type=int, help=f"bytes per write (default {defaults.payload_bytes})"
    )
    cluster_parser.add_argument(
        "--inflight", type=int, nargs="+", help=f"writer levels (default {defaults.inflight})"
    )
    cluster_parser.add_argument(
        "--http-requests",
        type=int,
        help=f"sequential REST inserts (default {defaults.http_requests})",
    )
    cluster_parser.add_argument("--no-peer", action="store_true", help="skip PySyncObj")
    cluster_parser.add_argument("--quick", action="store_true", help="1 s per phase")
    cluster_parser.add_argument("--json-out", help="also write the result JSON to this path")


def cluster_config_from(arguments: argparse.Namespace) -> cluster.Config:
    values: dict[str, Any] = {"seconds": 1.0, "http_requests": 200} if arguments.quick else {}
    for name in ("seconds", "payload_bytes", "http_requests"):
        if getattr(arguments, name) is not None:
            values[name] = getattr(arguments, name)
    if arguments.inflight is not None:
        values["inflight"] = tuple(arguments.inflight)
    values["peer"] = not arguments.no_peer
    return cluster.Config(**values)


def add_http_arguments(http_parser: argparse.ArgumentParser) -> None:
    defaults = http.Config()
    flags: list[tuple[str, str]] = [
        ("nodes", "nodes with vectors loaded before measuring"),
        ("requests", "timed requests per round of one operation at one connection level"),
        ("rounds", "measurement rounds; each value is the median over rounds"),
        ("warmup", "untimed requests before each operation's rounds"),
        ("load_batch", "nodes per batch request while loading"),
        ("top_k", "top_k of the similar requests"),
        ("seed", "seed of the vectors and of the ids requested"),
    ]
    for name, help_text in flags:
        default = getattr(defaults, name)
        http_parser.add_argument(
            "--" + name.replace("_", "-"), type=int, help=f"{help_text} (default {default})"
        )
    http_parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        help=f"concurrent keep-alive connections, one level after another "
        f"(default {' '.join(map(str, defaults.connections))})",
    )
    http_parser.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    http_parser.add_argument("--json-out", help="also write the result JSON to this path")


def raft_config_from(arguments: argparse.Namespace) -> raft.Config:
    values: dict[str, Any] = {"seconds": 1.0} if arguments.quick else {}
    if arguments.seconds is not None:
        values["seconds"] = arguments.seconds
    if arguments.payload_bytes is not None:
        values["payload_bytes"] = arguments.payload_bytes
    if arguments.inflight is not None:
        values["inflight"] = tuple(arguments.inflight)
    values["peer"] = not arguments.no_peer
    return raft.Config(**values)


def http_config_from(arguments: argparse.Namespace) -> http.Config:
    values: dict[str, Any] = dict(HTTP_QUICK) if arguments.quick else {}
    for field in http.Config.__attrs_attrs__:
        given = getattr(arguments, field.name, None)
        if given is not None:
            values[field.name] = tuple(given) if field.name == "connections" else given
    return http.Config(**values)


def config_from(arguments: argparse.Namespace) -> Config:
    values: dict[str, Any] = dict(QUICK) if arguments.quick else {}
    for field in Config.__attrs_attrs__:
        given = getattr(arguments, field.name, None)
        if given is not None:
            values[field.name] = given
    if arguments.ef is not None:
        values["efs"] = tuple(arguments.ef)
    return Config(**values)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    if arguments.bench == "mcp":
        return mcp_main(arguments)
    config: Config | raft.Config | http.Config | cluster.Config
    if arguments.bench == "core":
        config = config_from(arguments)
    elif arguments.bench == "raft":
        config = raft_config_from(arguments)
    elif arguments.bench == "cluster":
        config = cluster_config_from(arguments)
    else:
        assert arguments.bench == "http", arguments.bench
        config = http_config_from(arguments)
    try:
        config.check()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(config, raft.Config):
        result = raft.run(config, sys.stdout, sys.stderr)
    elif isinstance(config, http.Config):
        result = http.run(config, sys.stdout, sys.stderr)
    elif isinstance(config, cluster.Config):
        result = cluster.run(config, sys.stdout, sys.stderr)
    else:
        result = run(config, sys.stdout, sys.stderr)
    if arguments.json_out:
        with open(arguments.json_out, "w") as file:
            json.dump(result, file, indent=2, sort_keys=True)
            file.write("\n")
    return 0


def mcp_main(arguments: argparse.Namespace) -> int:
    """The mcp benchmark; a failed call or a server that cannot run ends it with exit code 1."""
    try:
        config = mcp_config_from(arguments)
        config.check()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = mcp.run(config, sys.stdout, sys.stderr)
    except mcp.BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if arguments.json_out:
        with open(arguments.json_out, "w") as file:
            json.dump(result, file, indent=2, sort_keys=True)
            file.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
