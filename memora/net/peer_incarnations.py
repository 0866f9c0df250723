"""`IncarnationBook`: the incarnation each peer had when this node first met it.

An incarnation is random bytes a node makes together with its data directory
(`read_or_make_incarnation`) and sends in every handshake (`memora.net.peer_wire`). A member
whose directory was wiped comes back with another one. It has forgotten its votes and the log it
acknowledged, so letting it vote again could elect a leader that lacks a committed entry; its
peers refuse its connections instead (`PeerTransport` asks `admit`), and it must rejoin under a
new id (`memora cluster remove-node`, then `add-node`). A node removed from the configuration is
forgotten (`forget_except`), so a removed id may be added back later, through a learner's catch-up.

The book is kept in a small file, rewritten (atomically, fsynced) only when a peer is first met
or forgotten. What must not live here: sockets, the handshake itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from typing import Final

from memora.core import constants
from memora.net import files

INCARNATION_FILE: Final = "incarnation"
BOOK_FILE: Final = "peer_incarnations.json"


class IncarnationBook:
    """Peer id -> incarnation, as first met; in memory only when `path` is None."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._by_peer: dict[int, bytes] = {}
        if path is not None and os.path.exists(path):
            self._by_peer = _decode(files.read_file(path), path)

    def admit(self, peer_id: int, incarnation: bytes) -> bool:
        """Whether `peer_id` may connect with `incarnation`: yes the first time (it is recorded),
        then only with the same one."""
        known = self._by_peer.get(peer_id)
        if known is None:
            self._by_peer[peer_id] = incarnation
            self._save()
            return True
        return known == incarnation

    def forget_except(self, members: Collection[int]) -> None:
        """Forget every peer that is not in `members` (the configuration's)."""
        departed = [peer for peer in self._by_peer if peer not in members]
        for peer in departed:
            del self._by_peer[peer]
        if departed:
            self._save()

    def known(self) -> dict[int, bytes]:
        return dict(self._by_peer)

    def _save(self) -> None:
        if self._path is not None:
            entries = {str(peer): value.hex() for peer, value in sorted(self._by_peer.items())}
            files.write_file_atomically(self._path, json.dumps(entries).encode())


def _decode(data: bytes, path: str) -> dict[int, bytes]:
    try:
        entries = json.loads(data)
        book = {int(peer): bytes.fromhex(value) for peer, value in entries.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a peer incarnation book: {error}") from None
    if any(len(value) != constants.peer_incarnation_bytes for value in book.values()):
        raise ValueError(f"{path} holds an incarnation of the wrong length")
    return book


def read_or_make_incarnation(data_dir: str) -> bytes:
    """This node's incarnation: read from its data directory, or made (and kept) if missing."""
    path = os.path.join(data_dir, INCARNATION_FILE)
    if os.path.exists(path):
        incarnation = bytes.fromhex(files.read_file(path).decode().strip())
        if len(incarnation) != constants.peer_incarnation_bytes:
            raise ValueError(f"{path} does not hold an incarnation")
        return incarnation
    incarnation = os.urandom(constants.peer_incarnation_bytes)
    files.write_file_atomically(path, incarnation.hex().encode())
    return incarnation
