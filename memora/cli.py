"""The `memora` command line.

Subcommands:
- `memora demo`: store a small memory graph in an embedded, durable store, query it every way
  the store knows (graph, vectors, hybrid, history), reopen it from disk and check it came back.
- `memora serve`: run a node with the REST API on 127.0.0.1:8080 (see `memora.serve`), alone or
  as a member of a cluster.
- `memora mcp`: MCP over stdio for desktop LLM clients, on an embedded node or relayed to a
  running server (see `memora.mcp_cli`).
- `memora cluster status|add-node|remove-node|transfer-leader`: look at and change a running
  cluster (see `memora.cluster_cli`).
- `memora import FILE`: load the reference MCP memory server's `memory.jsonl` into a memory, on
  an embedded node or through a running server (see `memora.transfer_cli`).
- `memora export --format jsonl`: write a memory as the reference server's `memory.jsonl`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from memora import cluster_cli, mcp_cli, serve, transfer_cli
from memora.service.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memora", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="store and query a small memory graph, embedded")
    demo.add_argument(
        "--data-dir",
        help="directory for the store (default: a new temporary directory, removed afterwards)",
    )
    serve.add_arguments(
        commands.add_parser(
            "serve",
            help="run a node with the REST API",
            description="Run one Memora node with the REST API. Flags override --config.",
        )
    )
    mcp_cli.add_arguments(
        commands.add_parser(
            "mcp",
            help="serve MCP on stdio (embedded node, or a relay to a server)",
            description=mcp_cli.__doc__.splitlines()[0] if mcp_cli.__doc__ else None,
        )
    )
    cluster_cli.add_arguments(
        commands.add_parser(
            "cluster",
            help="look at and change a running cluster",
            description=cluster_cli.__doc__.splitlines()[0] if cluster_cli.__doc__ else None,
        )
    )
    transfer_cli.add_import_arguments(
        commands.add_parser(
            "import",
            help="load a reference memory server's memory.jsonl",
            description=transfer_cli.__doc__.splitlines()[0] if transfer_cli.__doc__ else None,
        )
    )
    transfer_cli.add_export_arguments(
        commands.add_parser(
            "export",
            help="write a memory as the reference memory server's memory.jsonl",
            description=transfer_cli.__doc__.splitlines()[0] if transfer_cli.__doc__ else None,
        )
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        return serve.main(arguments)
    if arguments.command == "mcp":
        return mcp_cli.main(arguments, os.environ, sys.stderr)
    if arguments.command == "cluster":
        return cluster_cli.main(arguments, os.environ, sys.stdout)
    if arguments.command == "import":
        return transfer_cli.import_main(arguments, os.environ, sys.stdout, sys.stderr)
    if arguments.command == "export":
        return transfer_cli.export_main(arguments, os.environ, sys.stdout, sys.stderr)
    if arguments.command == "demo":
        if arguments.data_dir:
            return run_demo(arguments.data_dir, sys.stdout)
        with tempfile.TemporaryDirectory(prefix="memora-demo-") as data_dir:
            return run_demo(data_dir, sys.stdout)
    raise AssertionError(f"unhandled command {arguments.command}")


if __name__ == "__main__":
    raise SystemExit(main())
