"""What both clients do when they are made: check their arguments and build their shared state.

What lives here: the checks of the URLs, token, namespace, consistency and session a client is
given (bad ones raise `ValidationError` naming the argument, before anything is sent), the
random client id of a new session, and the headers every request carries. What must not: I/O.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from memora.client.calls import ClientState, Router, Session
from memora.client.protocol import (
    CONSISTENCIES,
    RetryPolicy,
    sequence_max,
    urls_max,
)
from memora.core import constants
from memora.core.errors import ValidationError

USER_AGENT: Final = "memora-client/0.1"
client_id_bits: Final = 63


def client_state(
    urls: Sequence[str] | str,
    *,
    token: str | None,
    namespace: str | None,
    consistency: str,
    client_id: str | int | None,
    last_sequence: int,
    policy: RetryPolicy,
) -> ClientState:
    if consistency not in CONSISTENCIES:
        message = f"consistency must be one of {', '.join(CONSISTENCIES)}"
        raise ValidationError(message, "consistency")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValidationError("namespace must be a non-empty string", "namespace")
    session = Session(_client_id(client_id), _last_sequence(last_sequence))
    return ClientState(
        session=session,
        router=Router(checked_urls(urls)),
        policy=policy,
        namespace=namespace,
        consistency=consistency,
        headers=_headers(token),
        jitter=random.Random(secrets.randbits(64)),
    )


def checked_urls(urls: Sequence[str] | str) -> tuple[str, ...]:
    """The base URLs (`http://host:port`, any path prefix kept), without a trailing slash."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not 1 <= len(listed) <= urls_max:
        raise ValidationError(f"give between 1 and {urls_max} URLs", "urls")
    checked = []
    for url in listed:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"{url!r} is not an http:// or https:// URL", "urls")
        if parts.query or parts.fragment:
            raise ValidationError(f"{url!r} must have no query or fragment", "urls")
        checked.append(url.rstrip("/"))
    if len(set(checked)) != len(checked):
        raise ValidationError("the URLs must differ", "urls")
    return tuple(checked)


def _client_id(given: str | int | None) -> str:
    if given is None:
        return str(secrets.randbits(client_id_bits))
    if isinstance(given, int) and not isinstance(given, bool):
        given = str(given)
    if not isinstance(given, str) or not given or "\x00" in given:
        raise ValidationError("client_id must be a non-empty string or an integer", "client_id")
    if len(given.encode()) > constants.client_id_bytes_max or not given.isprintable():
        message = f"client_id must be printable and at most {constants.client_id_bytes_max} bytes"
        raise ValidationError(message, "client_id")
    return given


def _last_sequence(given: int) -> int:
    if not isinstance(given, int) or isinstance(given, bool) or not 0 <= given < sequence_max:
        raise ValidationError(
            f"last_sequence must be between 0 and {sequence_max - 1}", "last_sequence"
        )
    return given


def _headers(token: str | None) -> tuple[tuple[str, str], ...]:
    headers = (("User-Agent", USER_AGENT), ("Accept", "application/json"))
    if token is None:
        return headers
    if not isinstance(token, str) or not token.strip() or not token.isprintable():
        raise ValidationError("token must be a non-empty printable string", "token")
    return (*headers, ("Authorization", f"Bearer {token}"))
