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
import importlib
import os
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Final

import attrs


@attrs.frozen
class Command:
    """A subcommand: its help line, and the module that defines its flags (`adds`, a function
    of the parser) and runs it. The module is imported only when its subcommand is chosen: the
    MCP SDK and the web stack take seconds to import, and `memora cluster status` or
    `memora mcp` need not wait for what they do not use."""

    help: str
    module: str
    adds: str = "add_arguments"
    description: str | None = None  # Default: the first line of the module's docstring.


COMMANDS: Final = {
    "demo": Command("store and query a small memory graph, embedded", "memora.service.demo"),
    "serve": Command(
        "run a node with the REST API",
        "memora.serve",
        description="Run one Memora node with the REST API. Flags override --config.",
    ),
    "mcp": Command("serve MCP on stdio (embedded node, or a relay to a server)", "memora.mcp_cli"),
    "cluster": Command("look at and change a running cluster", "memora.cluster_cli"),
    "import": Command(
        "load a reference memory server's memory.jsonl",
        "memora.transfer_cli",
        adds="add_import_arguments",
    ),
    "export": Command(
        "write a memory as the reference memory server's memory.jsonl",
        "memora.transfer_cli",
        adds="add_export_arguments",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((argument for argument in argv if not argument.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="memora", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=command.help)
        if name == chosen:
            module = importlib.import_module(command.module)
            docstring = (module.__doc__ or "").strip()
            subparser.description = command.description or docstring.splitlines()[0]
            getattr(module, command.adds)(subparser)
    arguments = parser.parse_args(argv)
    return _run(arguments, importlib.import_module(COMMANDS[arguments.command].module))


def _run(arguments: argparse.Namespace, module: ModuleType) -> int:
    command = arguments.command
    if command == "serve":
        return int(module.main(arguments))
    if command == "mcp":
        return int(module.main(arguments, os.environ, sys.stderr))
    if command == "cluster":
        return int(module.main(arguments, os.environ, sys.stdout))
    if command == "import":
        return int(module.import_main(arguments, os.environ, sys.stdout, sys.stderr))
    if command == "export":
        return int(module.export_main(arguments, os.environ, sys.stdout, sys.stderr))
    assert command == "demo", command
    if arguments.data_dir:
        return int(module.run_demo(arguments.data_dir, sys.stdout))
    with tempfile.TemporaryDirectory(prefix="memora-demo-") as data_dir:
        return int(module.run_demo(data_dir, sys.stdout))


if __name__ == "__main__":
    raise SystemExit(main())
