"""`materialize --engine spark`: the local engine's reading and writing, run in Spark tasks.

How the work is split: the driver lists the offline files' row groups whose statistics may hold
the range (footers only) and hands them to `sc.parallelize` in contiguous slices, a few per core.
Each task reads its row groups with the local engine's reader, keeps each batch's latest row
per entity and writes it through the local engine's writer classes (one pipelined writer per
task, on one Redis or a Redis Cluster). Nothing is shuffled and no row reaches the driver: each
task returns two counts, so the driver's memory is that of the row group list, whatever the
table's size.

Why no shuffle by entity key: an entity's rows may sit in several files (days) and so in several
tasks, but the writer's never-older check is atomic in Redis, so whichever task writes last, an
older row never replaces a newer one, and a task Spark retries rewrites the same bytes. A
shuffle would spend a full copy of the table through Spark's sort to save Redis a few skipped
writes, and Spark's Parquet reader would put its own types between the file and the encoders.

The tasks' Python needs `featurestore` (as for the export engine) and the offline files at the
same path (on a cluster: shared storage). The settings travel in each task's closure (Spark's
RPC; its own encryption settings protect them on the wire); nothing logs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.dataset as ds
from pyarrow.fs import LocalFileSystem

from featurestore.definitions import ViewDefinition
from featurestore.materialize import (
    offline_row_groups,
    redis_writer,
    row_group_batches,
    write_latest,
)
from featurestore.online.feast_layout import RedisLayout
from featurestore.settings import Settings

if TYPE_CHECKING:
    from pyspark import Accumulator

# Tasks per core of the session: more tasks than cores so that a slow task (a large row group,
# a busy node) leaves the others' cores working; few enough that each writer's pipeline fills.
TASKS_PER_CORE = 2
# How often the driver turns the tasks' reported rows into progress.
PROGRESS_SECONDS = 0.5

Unit = tuple[str, int]  # (file path, row group id)


def work_units(
    view: ViewDefinition, files: list[Path], start: datetime, end: datetime
) -> list[Unit]:
    """The row groups of `files` that may hold event times in [start, end), in file order."""
    return [
        (row_group.path, row_group.row_groups[0].id)
        for row_group in offline_row_groups(view, files, start, end)
    ]


def write_units(
    settings: Settings,
    layout: RedisLayout,
    start: datetime,
    end: datetime,
    units: Iterable[Unit],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """One task's work: its row groups' latest rows per entity (batch by batch) through one
    writer; returns (rows read, rows written)."""
    parquet, local = ds.ParquetFileFormat(), LocalFileSystem()
    batches = (
        batch
        for path, row_group in units
        for batch in row_group_batches(
            layout.view,
            parquet.make_fragment(path, local, row_groups=[row_group]),
            start,
            end,
            settings.materialize_batch_size,
        )
    )
    return write_latest(redis_writer(settings, layout), layout.view, batches, progress)


def write_with_spark(
    settings: Settings,
    layout: RedisLayout,
    files: list[Path],
    start: datetime,
    end: datetime,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Materialize `files` of `layout`'s view in Spark tasks; returns (rows read, rows written)."""
    from featurestore.batch.spark import spark_session

    units = work_units(layout.view, files, start, end)
    if not units:
        return 0, 0
    context = spark_session(settings).sparkContext
    tasks = min(len(units), max(1, context.defaultParallelism) * TASKS_PER_CORE)
    rows = context.accumulator(0)

    def task(share: Iterable[Unit]) -> Iterator[tuple[int, int]]:
        yield write_units(settings, layout, start, end, share, rows.add)

    context.setJobDescription(f"materialize {layout.view.name}")
    with _reporting(rows, progress):
        counts = context.parallelize(units, tasks).mapPartitions(task).collect()
    return sum(read for read, _ in counts), sum(written for _, written in counts)


@contextmanager
def _reporting(rows: Accumulator[int], progress: Callable[[int], None] | None) -> Iterator[None]:
    """While the block runs, the rows the finished tasks read go to `progress` (Spark sends a
    task's accumulator updates when the task ends); the rest when the block ends."""
    if progress is None:
        yield
        return
    reported = 0
    done = threading.Event()

    def report() -> None:
        nonlocal reported
        value = rows.value
        if value > reported:
            progress(value - reported)
            reported = value

    def watch() -> None:
        while not done.wait(PROGRESS_SECONDS):
            report()

    watcher = threading.Thread(target=watch, name="materialize-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    report()
