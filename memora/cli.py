"""The `memora` command line.

Subcommands:
- `memora demo`: store a small memory graph in an embedded, durable store, query it every way
  the store knows (graph, vectors, hybrid, history), reopen it from disk and check it came back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence

from memora.service.demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memora", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="store and query a small memory graph, embedded")
    demo.add_argument(
        "--data-dir",
        help="directory for the store (default: a new temporary directory, removed afterwards)",
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        if arguments.data_dir:
            return run_demo(arguments.data_dir, sys.stdout)
        with tempfile.TemporaryDirectory(prefix="memora-demo-") as data_dir:
            return run_demo(data_dir, sys.stdout)
    raise AssertionError(f"unhandled command {arguments.command}")


if __name__ == "__main__":
    raise SystemExit(main())
