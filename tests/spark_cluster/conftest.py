"""The Spark standalone cluster the `spark_cluster` tests share: started once per test session,
on first use, and stopped at its end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.spark_cluster.cluster import standalone_cluster


@pytest.fixture(scope="session")
def spark_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`spark://127.0.0.1:P`: a master and one worker of WORKER_CORES cores, logs under tmp."""
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster")) as url:
        yield url
