"""The helpers that start real servers for the tests clean up after themselves."""

from __future__ import annotations

import psutil
import pytest

from tests.servers import featurestore_server, free_port


def test_a_server_not_ready_by_the_deadline_is_stopped(configure, tmp_path) -> None:
    """Left running after its test failed, a `featurestore serve` took CPU from the rest of the
    suite on a loaded machine (and so made later readiness waits time out too)."""
    from featurestore.feast_config import apply

    settings = configure(
        profile="services",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: never ready
        registry_url=f"sqlite:///{tmp_path}/registry.db",
        database_url=f"sqlite:///{tmp_path}/featurestore.db",
    )
    apply(settings)
    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(AssertionError, match="timed out waiting for featurestore serve"):
        featurestore_server(settings, tmp_path, ready_within=1.0)
    left = [child for child in psutil.Process().children() if child.pid not in before]
    assert left == [], [child.cmdline() for child in left]
