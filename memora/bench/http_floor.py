"""`python -m memora.bench.http_floor {asgi,quart}`: the HTTP stack without Memora, for the floor
rows of `python -m memora.bench http`.

Serves `GET /` on 127.0.0.1 (a port the OS picks, printed as `listening on PORT`) the way
`memora serve` serves its REST API: hypercorn's trio worker through
`memora.api.http_server.serve_http`, with the same fixes and settings. The app is either a bare
ASGI callable (`asgi`: what hypercorn and h11 cost on their own) or a QuartTrio app with one
route answering a small JSON object (`quart`: what Quart adds). Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Final

import trio
from quart_trio import QuartTrio

from memora.api import http_server

BODY: Final = b'{"ok":true}'
KINDS: Final = ("asgi", "quart")


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with `BODY`; completes the lifespan protocol hypercorn runs."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def quart_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    return app


async def serve(kind: str) -> None:
    app = bare_app if kind == "asgi" else quart_app()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def shutdown_trigger() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: http_server.serve_http(
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
            )
            print(f"listening on {port}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(f"usage: python -m memora.bench.http_floor {{{','.join(KINDS)}}}", file=sys.stderr)
        return 2
    trio.run(serve, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
