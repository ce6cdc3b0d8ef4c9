"""The export's file: one Parquet file, a row group per chunk, replaced in one rename at the end,
its schema metadata holding a JSON description of the export under `EXPORT_METADATA_KEY`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore import offline
from featurestore.errors import InputDataError
from featurestore.export.statistics import is_string

EXPORT_METADATA_KEY = "featurestore.export"


def write_export(
    path: Path,
    schema: pa.Schema,
    chunks: Iterable[pa.Table],
    describe: Callable[[], dict[str, Any]],
) -> None:
    """Write `chunks` (tables of `schema`) as the row groups of `path`, then `describe()` as its
    metadata, atomically: until the last step succeeds, `path` is the old file (or none).

    Each chunk is encoded in a thread while the next one is made: Parquet encoding releases
    the GIL, so the join of the next chunk runs meanwhile.
    """
    with parquet_replacing(path, schema) as writer, ThreadPoolExecutor(1) as write:
        pending: Future[None] | None = None
        for chunk in chunks:
            if pending is not None:
                pending.result()
            pending = write.submit(writer.write_table, chunk)
        if pending is not None:
            pending.result()
        writer.add_key_value_metadata({EXPORT_METADATA_KEY: json.dumps(describe())})


@contextmanager
def parquet_replacing(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer whose file replaces `path` in one rename when the block ends cleanly.

    `offline.write_atomically` for a file written row group by row group: a crash or an error
    leaves the old file (or none), never a partial one. The Arrow schema is not stored: readers
    rebuild it from the Parquet types (a timestamp's zone other than UTC reads back as UTC) and
    take the key-value metadata added before closing as its metadata, which they would not do
    with a stored schema, written when the file is opened.
    """
    strings = [f.name for f in schema if is_string(f.type)]
    with (
        offline.replacing(path) as sink,
        pq.ParquetWriter(
            sink, schema, compression="zstd", use_dictionary=strings, store_schema=False
        ) as writer,
    ):
        yield writer


def read_export_metadata(path: Path) -> dict[str, Any]:
    """The JSON description an export keeps in its Parquet (and so Arrow schema) metadata."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"{path} is not a readable Parquet file ({exc})") from exc
    raw = metadata.get(EXPORT_METADATA_KEY.encode())
    if raw is None:
        raise InputDataError(f"{path} is not a featurestore export (no {EXPORT_METADATA_KEY!r})")
    description: dict[str, Any] = json.loads(raw)
    return description
