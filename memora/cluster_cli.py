"""`memora cluster ...`: look at and change a running cluster through any member's REST API.

- `memora cluster status`: the leader, the voters and learners, each peer's address, link and lag.
- `memora cluster add-node ID [HOST:PORT]`: add a node (started with `--join`) as a learner, wait
  until it caught up, then make it a voter. The address is that of its peer listener; it may be
  left out when the node already dialed the cluster (it announces its address when it does).
- `memora cluster remove-node ID`: remove a node from the configuration.
- `memora cluster transfer-leader ID`: make a voter the leader.

`--server URL` (repeatable; default http://127.0.0.1:8080) names members to ask; the first that
answers is used, and it forwards changes to the leader. `--token` (or `MEMORA_TOKEN`) is a bearer
token; changes need an admin token for every namespace. Exit code 0 on success, 1 when the
cluster refused or could not be reached (the reason is printed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final, TextIO

from memora.text_table import aligned_lines

DEFAULT_SERVER: Final = "http://127.0.0.1:8080"
TOKEN_VARIABLE: Final = "MEMORA_TOKEN"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
# A membership change may wait for a new member to catch up (by log or snapshot).
REQUEST_TIMEOUT_S: Final = 150.0


class ClusterCommandError(Exception):
    """The cluster answered with an error, or no member answered."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help=f"a member's REST base URL, repeatable (default {DEFAULT_SERVER})",
    )
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_VARIABLE})")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="the leader, members, links and lag")
    add = actions.add_parser("add-node", help="add a node, as a voter once it caught up")
    add.add_argument("node_id", type=int, metavar="ID")
    add.add_argument("address", nargs="?", metavar="HOST:PORT", help="its peer listener")
    remove = actions.add_parser("remove-node", help="remove a node from the cluster")
    remove.add_argument("node_id", type=int, metavar="ID")
    transfer = actions.add_parser("transfer-leader", help="make a voter the leader")
    transfer.add_argument("node_id", type=int, metavar="ID")


def main(arguments: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    servers = arguments.server or [DEFAULT_SERVER]
    token = arguments.token or environ.get(TOKEN_VARIABLE)
    try:
        if arguments.action == "status":
            print_status(request(servers, token, "GET", "/api/v1/cluster"), out)
            return 0
        answer = _change(arguments, servers, token)
    except ClusterCommandError as error:
        print(f"memora cluster {arguments.action}: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(_change_line(arguments.action, arguments.node_id, answer), file=out)
    return 0


def _change(arguments: argparse.Namespace, servers: list[str], token: str | None) -> Any:
    node_id = arguments.node_id
    if arguments.action == "add-node":
        body: dict[str, Any] = {"node_id": node_id}
        if arguments.address:
            body["address"] = arguments.address
        return request(servers, token, "POST", "/api/v1/cluster/members", body)
    if arguments.action == "remove-node":
        return request(servers, token, "DELETE", f"/api/v1/cluster/members/{node_id}")
    assert arguments.action == "transfer-leader", arguments.action
    return request(servers, token, "POST", "/api/v1/cluster/leader", {"node_id": node_id})


def _change_line(action: str, node_id: int, answer: Mapping[str, Any]) -> str:
    if action == "transfer-leader":
        return f"node {answer['leader_id']} leads"
    done = "added" if action == "add-node" else "removed"
    return (
        f"node {node_id} {done} at commit index {answer['commit_index']}; voters "
        f"{answer['voters']}, learners {answer['learners']}"
    )


def request(
    servers: list[str],
    token: str | None,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
) -> Any:
    """The JSON answer of the first server that answers; an error answer is final."""
    unreachable = []
    for server in servers:
        try:
            return _request_once(server.rstrip("/") + path, token, method, body)
        except urllib.error.HTTPError as error:
            raise ClusterCommandError(_error_message(server, error)) from None
        except (urllib.error.URLError, OSError) as error:
            unreachable.append(f"{server}: {getattr(error, 'reason', error)}")
    raise ClusterCommandError("no server answered (" + "; ".join(unreachable) + ")")


def _request_once(url: str, token: str | None, method: str, body: Any) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    prepared = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(prepared, timeout=REQUEST_TIMEOUT_S) as answer:
        return json.loads(answer.read())


def _error_message(server: str, error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read())["error"]
        return f"{server} answered {error.code} {detail['code']}: {detail['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{server} answered {error.code} {error.reason}"


def print_status(status: Mapping[str, Any], out: TextIO) -> None:
    leader = status["leader_id"]
    print(
        f"cluster {status['cluster_id'] or '(a node alone)'}: term {status['term']}, "
        f"leader {leader if leader is not None else 'unknown'} (asked node {status['node_id']})",
        file=out,
    )
    print(f"voters {status['voters']}, learners {status['learners']}", file=out)
    columns = ("node", "role", "address", "link", "lag", "last heard")
    rows = [_peer_row(peer, leader) for peer in status["peers"]]
    for line in aligned_lines(columns, rows):
        print(line, file=out)


def _peer_row(peer: Mapping[str, Any], leader: int | None) -> tuple[str, ...]:
    node = f"{peer['node_id']}{' *' if peer['node_id'] == leader else ''}"
    link = "up" if peer.get("connected") else "down"
    lag = "-" if peer["lag"] is None else str(peer["lag"])
    heard = peer.get("last_received_s_ago")
    last = "-" if heard is None else f"{heard:.2f}s ago"
    return (node, peer["role"], str(peer.get("address") or "-"), link, lag, last)
