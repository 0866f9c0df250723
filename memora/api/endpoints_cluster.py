"""Endpoints about the cluster: its members and its leader.

What lives here: the handlers and their `Endpoint` declarations in `ENDPOINTS`. Membership
changes and leadership transfers need an admin token for every namespace: they change who holds
every tenant's data. Any member may be asked; it forwards the request to the leader. What must
not: the membership protocol itself (`memora.net.cluster`).
"""

from __future__ import annotations

from typing import Final

from memora.api import schemas
from memora.api.arguments import Arguments
from memora.api.routing import (
    Answer,
    Call,
    Endpoint,
    Parameter,
    Tenancy,
    refusals_as_unprocessable,
)
from memora.api.settings import ALL_NAMESPACES, Role
from memora.core import constants


def _node_id(arguments: Arguments) -> int:
    node_id: int = arguments.integer(
        "node_id", constants.raft_node_id_min, constants.raft_node_id_max
    )
    return node_id


async def cluster_status(call: Call) -> Answer:
    return Answer(200, call.node.cluster_status())


def _membership(call: Call, commit_index: int) -> Answer:
    status = call.node.cluster_status()
    body = {"commit_index": commit_index, "voters": status["voters"]}
    return Answer(200, {**body, "learners": status["learners"]})


async def add_member(call: Call) -> Answer:
    call.caller.require(Role.ADMIN, ALL_NAMESPACES)
    body = call.json_body()
    address = body.text("address", 300, None)
    with refusals_as_unprocessable():  # An address that is not host:port.
        commit_index = await call.node.add_member(_node_id(body), address)
    return _membership(call, commit_index)


async def remove_member(call: Call) -> Answer:
    call.caller.require(Role.ADMIN, ALL_NAMESPACES)
    node_id = _node_id(Arguments(call.path, from_query=True))
    return _membership(call, await call.node.remove_member(node_id))


async def transfer_leadership(call: Call) -> Answer:
    call.caller.require(Role.ADMIN, ALL_NAMESPACES)
    node_id = _node_id(call.json_body())
    with refusals_as_unprocessable():  # A node that is not a voter.
        await call.node.transfer_leadership(node_id)
    return Answer(200, {"leader_id": node_id})


_MEMBER: Final = Parameter(
    "node_id", "path", schemas.NODE_ID, "The member's Raft node id.", required=True
)
_CHANGES: Final = (
    "Done at the leader, wherever it is asked. 409 with code not_clustered on a node started "
    "without peers, or invalid_configuration_change for a change that does not fit the "
    "configuration."
)

ENDPOINTS: Final = (
    Endpoint("GET", "/api/v1/cluster", "clusterStatus",
             "The cluster id, leader, voters, learners, each peer's address, link and lag, and "
             "this node's applied index and state hash",
             Role.READ, cluster_status, "ClusterStatus", tenancy=Tenancy.NODE),
    Endpoint("POST", "/api/v1/cluster/members", "addMember",
             "Add a node: as a learner until it caught up, then as a voter (admin)", Role.ADMIN,
             add_member, "MembershipChanged", body="MemberAdd", tenancy=Tenancy.NODE,
             description=_CHANGES, conflicts=True),
    Endpoint("DELETE", "/api/v1/cluster/members/{node_id}", "removeMember",
             "Remove a node from the cluster (admin)", Role.ADMIN, remove_member,
             "MembershipChanged", parameters=(_MEMBER,), tenancy=Tenancy.NODE,
             description=_CHANGES, conflicts=True),
    Endpoint("POST", "/api/v1/cluster/leader", "transferLeadership",
             "Make a voter the leader; answers once it leads (admin)", Role.ADMIN,
             transfer_leadership, "LeaderTransferred", body="LeaderTransfer",
             tenancy=Tenancy.NODE, description=_CHANGES, conflicts=True),
)  # fmt: skip
