"""The SparkSession every batch job uses, configured from settings."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from featurestore.settings import Settings


def spark_session(settings: Settings) -> SparkSession:
    """The process's SparkSession (created once; `spark_master` picks local or a cluster).

    The Python workers of the executors run this process's interpreter unless PYSPARK_PYTHON
    names another: the jobs ship functions of `featurestore` (the export's writer), so the
    workers need its environment, at the same path on every machine of a cluster.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName("featurestore")
        .master(settings.spark_master)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        # Event time is UTC everywhere; Parquet timestamps are written as UTC micros, not INT96.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if settings.spark_master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
