"""The SparkSession every batch job uses, configured from settings."""

from __future__ import annotations

from pyspark.sql import SparkSession

from featurestore.settings import Settings


def spark_session(settings: Settings) -> SparkSession:
    """The process's SparkSession (created once; `spark_master` picks local or a cluster)."""
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
