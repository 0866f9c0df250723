"""Serving an ASGI app over HTTP/1.1 with hypercorn's trio worker, inside the caller's nursery.

This module owns hypercorn's configuration (keep-alive, h11 limits, graceful shutdown, logs) and
nothing about the REST API itself: it must not import the app or know its routes.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

import hypercorn.config
import hypercorn.trio
import trio

# An idle keep-alive connection is closed after this long without a request.
keep_alive_timeout_s: Final = 5.0
# Requests still running at shutdown get this long to finish before they are cancelled.
graceful_timeout_s: Final = 5.0
# The request line and headers of one request (h11 buffers them whole) may not exceed this.
request_head_bytes_max: Final = 16 * 1024
# A connection is closed after this many requests, so clients spread over new connections.
keep_alive_requests_max: Final = 10_000

ShutdownTrigger = Callable[[], Awaitable[None]]


def hypercorn_config(*, host: str, port: int, access_log: bool) -> hypercorn.config.Config:
    """Hypercorn's configuration for one plain-HTTP listener on `host:port` (port 0: any free)."""
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.keep_alive_timeout = keep_alive_timeout_s
    config.graceful_timeout = graceful_timeout_s
    config.h11_max_incomplete_size = request_head_bytes_max
    config.keep_alive_max_requests = keep_alive_requests_max
    config.accesslog = "-" if access_log else None
    config.errorlog = "-"
    return config


def port_of_bind(binds: list[str]) -> int:
    """The port hypercorn really bound, from the addresses it reports (`http://host:port`)."""
    if len(binds) != 1:
        raise RuntimeError(f"expected hypercorn to bind one address, it bound {binds!r}")
    port = urllib.parse.urlsplit(binds[0]).port
    if port is None:
        raise RuntimeError(f"hypercorn reported an address without a port: {binds[0]!r}")
    return port


async def serve_http(
    app: Any,
    *,
    host: str,
    port: int,
    shutdown_trigger: ShutdownTrigger,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    access_log: bool = False,
) -> None:
    """Serve the ASGI `app` on `host:port` until `shutdown_trigger` returns, then drain.

    Once listening, reports the bound port through `task_status` (the real one when `port` is 0).
    Returns after in-flight requests finish or `graceful_timeout_s` passes.
    """
    config = hypercorn_config(host=host, port=port, access_log=access_log)
    serve = partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown_trigger)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve)
        task_status.started(port_of_bind(binds))
