"""The batch jobs on a real Spark standalone cluster (executors in their own JVMs, with their own
Python workers), against the same jobs in one process: identical rows."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.featurestore import pipeline

# The first test's time includes starting the cluster's JVMs: minutes on a loaded machine.
pytestmark = [pytest.mark.spark, pytest.mark.spark_cluster, pytest.mark.timeout(1800)]
SERVICE = "fraud_detection_v1"
# The entity table repeated this many times: an export far bigger than the driver may collect.
REPEATS = 400


@pytest.fixture(scope="module")
def built(tmp_path_factory, spark) -> pipeline.Pipeline:
    return pipeline.build(tmp_path_factory.mktemp("cluster"), cards=120)


@pytest.fixture
def settings(built, monkeypatch):
    return pipeline.settings_of(built, monkeypatch)


def _on_cluster(built, master: str, *args: str) -> None:
    """`featurestore ARGS` in a process of its own, its Spark jobs on `master`, the driver
    allowed to collect 1 MiB of results at most (Spark's smallest limit)."""
    env = {
        **os.environ, **built.env,
        "FEATURESTORE_SPARK_MASTER": master,
        "FEATURESTORE_SPARK_DRIVER_MEMORY": "512m",
        "PYSPARK_SUBMIT_ARGS": "--conf spark.driver.maxResultSize=1m "
        "--conf spark.executor.memory=768m pyspark-shell",
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _offline_rows(view) -> pa.Table:
    """The view's offline rows in a total order, without the created time (the run's clock)."""
    table = ds.dataset(str(view.offline.path), format="parquet", partitioning="hive").to_table()
    created = view.offline.created_timestamp_column
    if created:
        table = table.drop_columns([created])
    return table.sort_by([(name, "ascending") for name in table.column_names])


def test_backfill_on_the_cluster_writes_the_local_rows(settings, built, spark_master) -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store

    views = select_views(feature_store(settings), None, aggregated_only=True)
    local = {view.name: _offline_rows(view) for view in views}  # pipeline.build's, in process
    _on_cluster(
        built, spark_master, "backfill",
        "--start", str(pipeline.BACKFILL_START), "--end", str(pipeline.END),
    )  # fmt: skip
    for view in views:
        cluster = _offline_rows(view)
        assert cluster.num_rows == local[view.name].num_rows > 0, view.name
        assert cluster.equals(local[view.name]), view.name


def test_export_on_the_cluster_writes_the_local_file_without_collecting(
    settings, built, spark_master, tmp_path
) -> None:
    from featurestore.export import export, read_export_metadata
    from fraud_example.labels import labeled_transactions

    once = labeled_transactions(settings, pipeline.BACKFILL_START, pipeline.END)
    entities = pa.concat_tables([once] * REPEATS)
    entities_path = tmp_path / "entities.parquet"
    pq.write_table(entities, entities_path)
    local_out, cluster_out = tmp_path / "local.parquet", tmp_path / "cluster.parquet"
    export(settings, entities_path, local_out, feature_service=SERVICE)
    features = read_export_metadata(local_out)["features"]
    # The features alone are 16x what the driver may collect, in every view.
    assert pq.read_table(local_out, columns=features).nbytes > 16 * 2**20

    _on_cluster(
        built, spark_master, "export", "--entities", str(entities_path), "--out",
        str(cluster_out), "--feature-service", SERVICE, "--engine", "spark",
    )  # fmt: skip
    cluster, local = pq.read_table(cluster_out), pq.read_table(local_out)
    assert cluster.schema.equals(local.schema)  # types, order and metadata key present
    assert cluster.replace_schema_metadata(None).equals(local.replace_schema_metadata(None))
    assert (
        pq.ParquetFile(cluster_out).metadata.num_row_groups
        == pq.ParquetFile(local_out).metadata.num_row_groups
    )
    ours, theirs = read_export_metadata(cluster_out), read_export_metadata(local_out)
    different = {"export_id", "created_at"}
    assert {k: v for k, v in ours.items() if k not in different} == {
        k: v for k, v in theirs.items() if k not in different
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cluster.parquet", "entities.parquet", "local.parquet"]
    )  # no staging file left behind


def test_materialize_on_the_cluster_writes_the_local_engines_hashes(
    settings, built, spark_master, redis_client
) -> None:
    """`materialize --engine spark` with its tasks in the cluster's executors leaves Redis
    holding what the local engine wrote, key by key and field by field."""
    from datetime import UTC, datetime, time

    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize

    def dump() -> dict:
        return {key: redis_client.hgetall(key) for key in redis_client.scan_iter(count=10_000)}

    start, end = (datetime.combine(day, time(), UTC) for day in (pipeline.START, pipeline.END))
    store = feature_store(settings)
    materialize(settings, store, [(v, start, end) for v in select_views(store, None)])
    local = dump()
    assert len(local) > 120  # the cards, merchants and profiles
    redis_client.flushdb()
    _on_cluster(
        built, spark_master, "materialize", "--start", start.isoformat(),
        "--end", end.isoformat(), "--engine", "spark",
    )  # fmt: skip
    assert dump() == local
