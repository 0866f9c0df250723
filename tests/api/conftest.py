"""Fixtures of the REST API tests: a real `NodeDriver` on a temporary directory, run in the
test's nursery, and the app over it with the settings a test asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
from api_client import ApiClient
from quart_trio import QuartTrio

from memora.api.app import create_app
from memora.api.settings import ApiSettings
from memora.net.driver import NodeDriver

TEST_TIMEOUT_S = 60.0


@pytest.fixture
async def node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[NodeDriver]:
    """A one-node Raft member on a fresh directory, serving until the test ends."""
    driver = NodeDriver.open(str(tmp_path / "data"))
    await nursery.start(driver.run)
    with trio.fail_after(TEST_TIMEOUT_S):
        yield driver
    driver.stop()


@pytest.fixture
def make_app(node: NodeDriver) -> Callable[[ApiSettings], QuartTrio]:
    return lambda settings: create_app(node, settings)


@pytest.fixture
def client(make_app: Callable[[ApiSettings], QuartTrio]) -> ApiClient:
    """A client of the app with open access (no tokens configured)."""
    return ApiClient(make_app(ApiSettings()))
