"""Fixtures of the streaming tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streaming.broker import local_broker
from tests.servers import free_port
from tests.streaming.dropping_proxy import DroppingProxy


@pytest.fixture(scope="module")
def proxy() -> Iterator[DroppingProxy]:
    """A broker of the test module's own, which every client reaches through a
    `DroppingProxy`."""
    listener = f"127.0.0.1:{free_port()}"
    host, port = listener.split(":")
    proxy = DroppingProxy((host, int(port)))
    try:
        with local_broker(address=listener, advertised=proxy.address):
            yield proxy
    finally:
        proxy.close()
