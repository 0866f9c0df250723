"""schemathesis, every check, against `/openapi.json` of a real `memora serve`; exits non-zero
on any failure. Run by the test suite (tests/api/test_schemathesis.py) and on its own as
`python tests/api/run_schemathesis.py`.

The server is started as a user would (`python -m memora serve --http-port 0` on a fresh data
directory) with one admin token for every namespace from `MEMORA_TOKENS`, so the authenticated
paths are exercised; schemathesis's own `ignored_auth` check tries them without it. The number
of examples per operation is capped so the run stays well under two minutes on two cores.

Phases: examples, coverage (every boundary and mutation the schema defines) and fuzzing. The
stateful phase is left out: with links inferred from this document, schemathesis 4.32 puts a
response's integer into the `X-Memora-Client-Id` header and fails on its own request, and its
scenarios alone take minutes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from memora_process import MemoraProcess

HERE: Final = Path(__file__).resolve().parent
TOKEN: Final = "schemathesis-admin-token-0123456789"
examples_per_operation_max: Final = 10
# A hard stop, far above the usual minute, for a machine much slower than expected.
run_time_s_max: Final = 300
# A fixed seed makes a failure reproducible: the same run finds it again.
seed: Final = 5


def schemathesis_command(url: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--max-examples",
        str(examples_per_operation_max),
        "--seed",
        str(seed),
        "--phases",
        "examples,coverage,fuzzing",
        # One worker: with threads, CPython 3.11's ast.parse (which hypothesis calls to describe
        # lambdas) can fail with "AST constructor recursion depth mismatch".
        "--workers",
        "1",
    ]


def run_schemathesis(*, capture: bool) -> subprocess.CompletedProcess[str]:
    """Serves a fresh data directory and runs schemathesis against it; `capture` keeps the
    report in the result instead of printing it."""
    with tempfile.TemporaryDirectory() as directory:
        tokens = {"MEMORA_TOKENS": f"schemathesis:admin:*:{TOKEN}"}
        with MemoraProcess(Path(directory) / "data", tokens) as server:
            command = schemathesis_command(server.url)
            # In the temporary directory, so its caches stay out of the checkout.
            return subprocess.run(
                command,
                cwd=directory,
                timeout=run_time_s_max,
                capture_output=capture,
                text=True,
                check=False,
            )


if __name__ == "__main__":
    sys.exit(run_schemathesis(capture=False).returncode)
