"""`memora serve` as a user starts it: a child process on 127.0.0.1 and a port the OS picks.

`MemoraProcess` runs `python -m memora serve --http-port 0` on a data directory, reads the port
from the start-up line, waits until health answers, and on `stop` sends SIGTERM and waits for
exit code 0. Every wait is bounded. Used by the real-server tests, the keep-alive test and
`run_schemathesis.py`; it needs nothing from pytest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

REPOSITORY: Final = Path(__file__).resolve().parents[2]
start_timeout_s: Final = 30.0
stop_timeout_s: Final = 20.0
_LISTENING: Final = re.compile(r"REST API on http://127\.0\.0\.1:(\d+)/api/v1")


class MemoraProcess:
    """One `memora serve` child process; its output is collected line by line."""

    def __init__(
        self,
        data_dir: Path,
        environment: dict[str, str] | None = None,
        flags: Sequence[str] = (),
    ) -> None:
        """`flags` are added to the command line (cluster membership, say)."""
        command = [sys.executable, "-m", "memora", "serve", "--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            [*command, "--http-port", "0", "--mcp-port", "0", "--embedder", "hashing", *flags],
            env={**os.environ, "PYTHONPATH": str(REPOSITORY), **(environment or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # One pipe, always drained by the reader thread.
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        try:
            self.url = f"http://127.0.0.1:{self._wait_for_port()}"
            self._wait_until_healthy()
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> MemoraProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.stop()
        else:
            self.kill()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            for line in self.lines:
                match = _LISTENING.search(line)
                if match:
                    return int(match.group(1))
            time.sleep(0.02)
        raise RuntimeError(f"memora serve did not start:\n{self.output()}")

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2.0):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
        raise RuntimeError(f"memora serve never became healthy:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM, then wait: the server must drain and exit 0."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=stop_timeout_s)
        self._reader.join(timeout=stop_timeout_s)
        if code != 0:
            raise RuntimeError(f"memora serve exited {code}:\n{self.output()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=stop_timeout_s)
        self._reader.join(timeout=stop_timeout_s)

    def output(self) -> str:
        return "\n".join(self.lines)
