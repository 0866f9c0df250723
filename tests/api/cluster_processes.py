"""Helpers shared by the tests that start several `memora serve` processes as one cluster: the
cluster secret, free loopback ports, one JSON call to a member's REST API, and the `memora
cluster` command line. Every wait is bounded by `wait_s_max`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from typing import Any, Final

from memora_process import REPOSITORY

SECRET: Final = "cluster-members-test-secret"
wait_s_max: Final = 30.0


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def call(url: str, method: str = "GET", body: Any = None, timeout_s: float = wait_s_max) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return json.loads(answer.read())


def memora_cluster(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memora", "cluster", *arguments],
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=wait_s_max,
        check=False,
    )
