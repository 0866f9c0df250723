"""`memora serve` as a user runs it: a real process on 127.0.0.1 and a free port, driven over HTTP
and stopped by signals; and its configuration, checked in-process.

Every server here is started by the test that uses it, on a port the OS picks (`--http-port 0`,
read back from the start-up line), and is stopped or killed before the test ends. Each wait is
bounded."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memora import cli, serve
from memora.api.settings import Role

REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
TOKEN = "test-token-0123456789"
LISTENING = re.compile(r"REST API on http://127\.0\.0\.1:(\d+)/api/v1")


class Server:
    """One `python -m memora serve` process; its output is collected line by line."""

    def __init__(self, data_dir: Path, *flags: str, environment: dict[str, str] | None = None):
        command = [sys.executable, "-m", "memora", "serve", "--data-dir", str(data_dir)]
        command += ["--http-port", "0", "--mcp-port", "0", "--embedder", "hashing", *flags]
        self.process = subprocess.Popen(
            command,
            cwd=data_dir.parent,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY), **(environment or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # One pipe, always drained by the reader thread.
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{self._wait_for_port()}"
        self._wait_until_healthy()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.lines:
                match = LISTENING.search(line)
                if match:
                    return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"the server did not start: {self.output()}")

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"the server never became healthy: {self.output()}")

    def stop(self, signal_number: int = signal.SIGTERM) -> int:
        """Send `signal_number` and wait for the exit; returns the exit code."""
        self.process.send_signal(signal_number)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=STOP_TIMEOUT_S)

    def output(self) -> str:
        return "\n".join(self.lines)

    def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=10.0)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=10.0)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test started; any still running at its end are killed."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()


def start(servers: list[Server], data_dir: Path, *flags: str, **options: Any) -> Server:
    server = Server(data_dir, *flags, **options)
    servers.append(server)
    return server


# -- The process --------------------------------------------------------------------------------


def test_sigterm_drains_and_exits_0_and_a_restart_finds_the_data(
    tmp_path: Path, servers: list[Server]
) -> None:
    data_dir = tmp_path / "data"
    server = start(servers, data_dir)
    assert any(str(data_dir) in line for line in server.lines)
    assert any(
        re.search(r"MCP \(streamable HTTP\) on http://127\.0\.0\.1:\d+/mcp", line)
        for line in server.lines
    )
    assert any("listens on 127.0.0.1 only" in line for line in server.lines)
    created = server.post("/api/v1/nodes", {"id": 100, "label": "UserPreference"})
    assert created.status_code == 201, created.text
    assert server.get("/api/v1/health").json()["role"] == "leader"
    assert server.stop(signal.SIGTERM) == 0
    assert any("stopped cleanly" in line for line in server.lines)

    restarted = start(servers, data_dir)
    fetched = restarted.get("/api/v1/nodes/100")
    assert fetched.status_code == 200 and fetched.json()["node"] == created.json()["node"]
    assert restarted.stop(signal.SIGINT) == 0


def test_sigterm_under_load_loses_no_acknowledged_write(
    tmp_path: Path, servers: list[Server]
) -> None:
    data_dir = tmp_path / "data"
    server = start(servers, data_dir)
    acknowledged: list[dict[str, Any]] = []
    failures: list[str] = []

    def writer() -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            while True:
                try:
                    response = client.post("/api/v1/nodes", json={"label": "Load"})
                except httpx.TransportError as error:
                    failures.append(type(error).__name__)  # The server stopped listening.
                    return
                if response.status_code != 201:
                    failures.append(f"{response.status_code} {response.text}")
                    return
                acknowledged.append(response.json()["node"])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(acknowledged) < 50 and not failures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acknowledged) >= 50 and not failures, failures
    assert server.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(timeout=STOP_TIMEOUT_S)
    assert len(failures) == len(threads)
    assert all(not failure[0].isdigit() for failure in failures), failures

    restarted = start(servers, data_dir)
    with httpx.Client(base_url=restarted.url, timeout=10.0) as client:
        for node in acknowledged:
            assert client.get(f"/api/v1/nodes/{node['id']}").json()["node"] == node
    assert restarted.stop() == 0


def test_an_acknowledged_write_survives_kill_9_and_a_torn_tail_is_reported(
    tmp_path: Path, servers: list[Server]
) -> None:
    data_dir = tmp_path / "data"
    server = start(servers, data_dir)
    acknowledged = [
        server.post("/api/v1/nodes", {"label": "Fact", "text": f"fact {n}"}) for n in range(5)
    ]
    assert all(response.status_code == 201 for response in acknowledged)
    server.kill()
    segment = max((data_dir / "raft").glob("log-*.seg"))
    with open(segment, "ab") as file:
        file.write(b"\x40\x00\x00\x00torn")  # A record header whose body never made it to disk.

    restarted = start(servers, data_dir)
    assert any("recovery: cut a torn log tail" in line for line in restarted.lines)
    for response in acknowledged:
        node = response.json()["node"]
        assert restarted.get(f"/api/v1/nodes/{node['id']}").json()["node"] == node
    assert restarted.stop() == 0


def test_tokens_from_the_environment_guard_the_api(tmp_path: Path, servers: list[Server]) -> None:
    tokens = f"alice:write:default:{TOKEN}"
    server = start(servers, tmp_path / "data", environment={"MEMORA_TOKENS": tokens})
    assert any("1 API tokens configured" in line for line in server.lines)
    body = {"label": "Person"}
    assert server.post("/api/v1/nodes", body).status_code == 401
    created = server.post("/api/v1/nodes", body, Authorization=f"Bearer {TOKEN}")
    assert created.status_code == 201
    assert created.json()["node"]["created"]["principal"] == "alice"
    assert server.stop() == 0


def test_a_bad_config_file_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "memora.toml"
    config.write_text('http_port = "eighty"\n')
    command = [sys.executable, "-m", "memora", "serve", "--config", str(config)]
    command += ["--data-dir", str(tmp_path / "data")]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    finished = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == [
        "memora serve: configuration error: http_port: must be an integer from 0 to 65535, "
        "not 'eighty'"
    ]
    assert not (tmp_path / "data").exists()


# -- Configuration, in-process ------------------------------------------------------------------


def serve_arguments(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(flags))


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "memora.toml"
    path.write_text(text)
    return str(path)


def test_flags_override_the_file_and_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'http_port = 1234\nmcp_port = 4321\nrequest_timeout_s = 2.5\ndata_dir = "from-file"\n'
        '[[tokens]]\ntoken = "file-token-0123456789"\nnamespaces = ["*"]\nrole = "admin"\n'
        'principal = "ops"\n',
    )
    loaded = serve.load_config(serve_arguments("--config", config, "--http-port", "0"), {})
    assert (loaded.http_port, loaded.mcp_port) == (0, 4321)
    assert loaded.data_dir == os.path.abspath("from-file")
    assert loaded.api.request_timeout_s == 2.5
    assert loaded.api.body_bytes_max == serve.DEFAULTS["body_bytes_max"]
    (grant,) = loaded.api.tokens
    assert (grant.role, grant.namespaces, grant.principal) == (Role.ADMIN, frozenset("*"), "ops")


def test_tokens_come_from_the_file_and_the_environment_together(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[[tokens]]\ntoken = "file-token-0123456789"\nnamespaces = ["default"]\nrole = "read"\n'
        'principal = "reader"\n',
    )
    inline = f" alice:write:default, notes:{TOKEN}:with:colons ; ops:admin:*:{TOKEN}-2 "
    loaded = serve.load_config(serve_arguments("--config", config), {"MEMORA_TOKENS": inline})
    grants = {grant.principal: grant for grant in loaded.api.tokens}
    assert sorted(grants) == ["alice", "ops", "reader"]
    assert grants["alice"].token == f"{TOKEN}:with:colons"
    assert grants["alice"].namespaces == frozenset({"default", "notes"})
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text(
        f'[[tokens]]\ntoken = "{TOKEN}"\nnamespaces = ["default"]\nrole = "write"\n'
        'principal = "from-file"\n'
    )
    environment = {"MEMORA_TOKENS_FILE": str(tokens_file)}
    loaded = serve.load_config(serve_arguments(), environment)
    assert [grant.principal for grant in loaded.api.tokens] == ["from-file"]


SECRET = "MEMORA_CLUSTER_SECRET"
CLUSTER_SECRET = "a-cluster-secret-of-some-length"
PEERS = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"


def test_a_member_of_a_cluster_is_configured_from_flags_file_and_secret(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'peers = "{PEERS}"\ncluster_id = "prod"\n')
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(CLUSTER_SECRET.encode() + b"\n")
    environment = {"MEMORA_CLUSTER_SECRET_FILE": str(secret_file)}
    flags = ("--config", config, "--node-id", "2", "--join")
    cluster = serve.load_config(serve_arguments(*flags), environment).cluster
    assert cluster is not None
    assert (cluster.node_id, cluster.join, cluster.cluster_id) == (2, True, "prod")
    assert cluster.listen == ("127.0.0.1", 7002) and sorted(cluster.peers) == [1, 2, 3]
    assert cluster.secret == CLUSTER_SECRET.encode()  # The file's trailing newline is not in it.
    assert CLUSTER_SECRET not in repr(cluster)
    assert serve.load_config(serve_arguments(), {}).cluster is None


def test_without_tokens_a_public_host_is_replaced_by_loopback() -> None:
    loaded = serve.load_config(serve_arguments("--host", "0.0.0.0"), {})
    assert (loaded.host, loaded.host_refused) == ("127.0.0.1", "0.0.0.0")
    tokens = {"MEMORA_TOKENS": f"alice:write:default:{TOKEN}"}
    loaded = serve.load_config(serve_arguments("--host", "0.0.0.0"), tokens)
    assert (loaded.host, loaded.host_refused) == ("0.0.0.0", None)
    loaded = serve.load_config(serve_arguments("--host", "::1"), {})
    assert (loaded.host, loaded.host_refused) == ("::1", None)


@pytest.mark.parametrize(
    ("config", "environment", "flags", "message"),
    [
        ("colour = 1\n", {}, (), "colour: unknown key"),
        ("http_port = 70000\n", {}, (), "http_port: must be an integer from 0 to 65535"),
        ("http_port = true\n", {}, (), "http_port: must be an integer"),
        ("", {}, ("--mcp-port", "-1"), "mcp_port: must be an integer from 0 to 65535"),
        ("http_port = 9000\n", {}, ("--mcp-port", "9000"), "mcp_port: must differ"),
        ("request_timeout_s = 0\n", {}, (), "request_timeout_s: must be a number of seconds"),
        ("request_timeout_s = nan\n", {}, (), "request_timeout_s: must be a number of seconds"),
        ("body_bytes_max = 0\n", {}, (), "body_bytes_max: must be an integer from 1"),
        ('default_namespace = "no space"\n', {}, (), "default_namespace: namespace must start"),
        ("", {}, ("--host", "not a host"), "host: must be an IP address or a host name"),
        ("", {}, ("--data-dir", ""), "data_dir: must be a directory path"),
        ("http_port = \n", {}, (), "--config: "),
        ("tokens = 3\n", {}, (), "tokens: must be an array"),
        ('[[tokens]]\ntoken = "short"\nnamespaces = ["*"]\nrole = "read"\nprincipal = "p"\n',
         {}, (), "tokens[0].token: must be at least 16 characters"),
        (f'[[tokens]]\ntoken = "{TOKEN}"\nnamespaces = ["*"]\nrole = "root"\nprincipal = "p"\n',
         {}, (), "tokens[0].role: must be one of read, write, admin"),
        (f'[[tokens]]\ntoken = "{TOKEN}"\nnamespaces = []\nrole = "read"\nprincipal = "p"\n',
         {}, (), "tokens[0].namespaces: must be a non-empty list"),
        (f'[[tokens]]\ntoken = "{TOKEN}"\nrole = "read"\nprincipal = "p"\n',
         {}, (), "tokens[0].namespaces: is missing"),
        (f'[[tokens]]\ntoken = "{TOKEN}"\nnamespaces = ["*"]\nrole = "read"\nprincipal = "p"\n',
         {"MEMORA_TOKENS": f"q:read:*:{TOKEN}"}, (), "tokens: the token of principal 'q'"),
        ("", {"MEMORA_TOKENS": "alice:write:default"}, (), "MEMORA_TOKENS[0]: must be"),
        ("", {"MEMORA_TOKENS": f"alice:write::{TOKEN}"}, (), "MEMORA_TOKENS[0].namespaces"),
        ("", {"MEMORA_TOKENS": f"a:read:*:{TOKEN}", "MEMORA_TOKENS_FILE": "t.toml"}, (),
         "MEMORA_TOKENS_FILE: set either MEMORA_TOKENS or it"),
        ("", {"MEMORA_TOKENS_FILE": "/no/such/tokens.toml"}, (), "MEMORA_TOKENS_FILE: cannot read"),
        ("", {}, ("--node-id", "1"), "node_id: needs peers"),
        ("", {}, ("--join",), "join: needs peers"),
        ("", {SECRET: CLUSTER_SECRET}, ("--peers", PEERS), "node_id: a member of a cluster needs"),
        ("", {SECRET: CLUSTER_SECRET}, ("--peers", PEERS, "--node-id", "4"),
         "node_id: node 4 is not in peers"),
        ("", {SECRET: CLUSTER_SECRET}, ("--peers", "1=127.0.0.1", "--node-id", "1"),
         "peers: '127.0.0.1' is not host:port"),
        ("", {}, ("--peers", PEERS, "--node-id", "1"), "MEMORA_CLUSTER_SECRET: a cluster needs"),
        ("", {SECRET: "short"}, ("--peers", PEERS, "--node-id", "1"),
         "MEMORA_CLUSTER_SECRET: the cluster secret must be at least 16 bytes"),
        ("", {"MEMORA_CLUSTER_SECRET_FILE": "/no/such/secret"},
         ("--peers", PEERS, "--node-id", "1"), "MEMORA_CLUSTER_SECRET_FILE: cannot read"),
        ("join = 1\n", {SECRET: CLUSTER_SECRET}, ("--peers", PEERS, "--node-id", "1"),
         "join: must be true or false"),
    ],
)  # fmt: skip
def test_a_bad_value_exits_2_naming_its_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    environment: dict[str, str],
    flags: tuple[str, ...],
    message: str,
) -> None:
    for variable in ("MEMORA_TOKENS", "MEMORA_TOKENS_FILE", SECRET, "MEMORA_CLUSTER_SECRET_FILE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    arguments = ["serve", "--config", write_config(tmp_path, config), *flags]
    assert cli.main(arguments) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"memora serve: configuration error: {message}"), line
