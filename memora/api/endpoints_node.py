"""Endpoints about the node and its namespaces: health, metrics, snapshots, namespaces.

What lives here: the handlers and their `Endpoint` declarations in `ENDPOINTS`, and the
Prometheus text rendering of the flat metrics map. The API's own counters (requests, error
answers, timeouts) are kept by the app and merged with the node's. What must not: record reads
or writes (`memora.api.endpoints_records`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from memora.api import commands, parameters, schemas
from memora.api.representation import namespace_json
from memora.api.routing import Answer, Call, Endpoint, Parameter, Tenancy
from memora.api.settings import ALL_NAMESPACES, Role

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PROMETHEUS_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_:]")


def prometheus_text(metrics: Mapping[str, float | int]) -> str:
    """The Prometheus text exposition of a flat map: `memora_<name>`, sorted by name; names
    ending in `_total` are counters, the rest gauges."""
    lines = []
    for name in sorted(metrics):
        value = metrics[name]
        metric = "memora_" + _PROMETHEUS_UNSAFE.sub("_", name)
        kind = "counter" if name.endswith("_total") else "gauge"
        lines.append(f"# TYPE {metric} {kind}")
        lines.append(f"{metric} {_prometheus_number(value)}")
    return "\n".join(lines) + "\n"


def _prometheus_number(value: float | int) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


async def health(call: Call) -> Answer:
    """The node's health without what only its operator should see: the endpoint needs no token,
    so it names only the fields of the `Health` schema (not, say, the data directory's path)."""
    reported = call.node.health()
    return Answer(200, {name: reported[name] for name in schemas.HEALTH_FIELDS})


def metrics_of(call: Call) -> dict[str, float | int]:
    """The node's metrics and the API's, in one flat map."""
    return {**call.node.metrics(), **call.api_counters}


async def metrics_json(call: Call) -> Answer:
    return Answer(200, {"metrics": metrics_of(call)})


async def metrics_prometheus(call: Call) -> Answer:
    return Answer(200, prometheus_text(metrics_of(call)), PROMETHEUS_CONTENT_TYPE)


async def snapshot(call: Call) -> Answer:
    call.caller.require(Role.ADMIN, ALL_NAMESPACES)
    return Answer(200, {"snapshot_index": await call.node.snapshot()})


async def create_namespace(call: Call) -> Answer:
    name, command = commands.create_namespace(call.json_body())
    call.caller.require(Role.ADMIN, name)
    outcome = await call.write(command, namespace=name)
    body = {"namespace": namespace_json(outcome.value), "commit_index": outcome.commit_index}
    return Answer(201, body)


async def get_namespace(call: Call) -> Answer:
    replica = await call.read(call.query)
    info = replica.machine.namespace(call.namespace).info
    return Answer(200, {"namespace": namespace_json(info), "applied_index": replica.applied_index})


async def list_namespaces(call: Call) -> Answer:
    replica = await call.read(call.query)
    visible = [
        namespace_json(state.info)
        for name, state in sorted(replica.machine.namespaces.items())
        if call.caller.may_see(name)
    ]
    return Answer(200, {"namespaces": visible, "applied_index": replica.applied_index})


_NAME: Final = Parameter(
    "name",
    "path",
    schemas.NAMESPACE_NAME,
    "The namespace's name.",
    required=True,
)
_READ_BARRIER: Final = (parameters.CONSISTENCY, parameters.MIN_COMMIT_INDEX)

ENDPOINTS: Final = (
    Endpoint("GET", "/api/v1/health", "health",
             "Role, term, commit and applied index, leader, peers and their lag", None, health,
             "Health", tenancy=Tenancy.NODE),
    Endpoint("GET", "/api/v1/metrics", "metrics", "Counters and gauges, as JSON", Role.READ,
             metrics_json, "Metrics", tenancy=Tenancy.NODE),
    Endpoint("GET", "/metrics", "prometheus", "Counters and gauges, in Prometheus text",
             Role.READ, metrics_prometheus, "", tenancy=Tenancy.NODE, media_type="text/plain"),
    Endpoint("POST", "/api/v1/snapshot", "snapshot",
             "Snapshot the state and compact the log (admin of every namespace)", Role.ADMIN,
             snapshot, "SnapshotTaken", tenancy=Tenancy.NODE),
    Endpoint("GET", "/api/v1/namespaces", "listNamespaces",
             "The namespaces the token may see", Role.READ, list_namespaces, "NamespaceList",
             parameters=_READ_BARRIER, tenancy=Tenancy.NODE),
    Endpoint("POST", "/api/v1/namespaces", "createNamespace",
             "Create a namespace (admin of that namespace)", Role.ADMIN, create_namespace,
             "NamespaceWritten", 201, parameters.SESSION_HEADERS, "NamespaceCreate",
             tenancy=Tenancy.NODE, writes=True),
    Endpoint("GET", "/api/v1/namespaces/{name}", "getNamespace", "A namespace's settings",
             Role.READ, get_namespace, "NamespaceRead", parameters=(_NAME, *_READ_BARRIER),
             tenancy=Tenancy.PATH),
)  # fmt: skip
