"""A torch IterableDataset streaming a training export as encoded batches, in bounded memory.

It yields whole batches, `(features float32 [n, width], labels float32 [n])` with n at most
`batch_size`, rather than single rows: encoding and collating column-wise is what makes loading
keep up with training (per-row tensors cost a Python round trip each). Use it with
`DataLoader(dataset, batch_size=None)`.

Workers of a DataLoader share the file by row group: worker k of n reads row groups k, k+n, ...
(disjoint, together all rows), so an export meant for parallel loading needs at least as many
row groups as workers. Shuffling is deterministic: the row group order and a buffer of
`shuffle_buffer` rows are permuted by a generator seeded with (seed, epoch, worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from featurestore.errors import InputDataError
from featurestore.export import read_export_metadata
from featurestore.training.encoding import FeatureEncoding


@dataclass(frozen=True)
class ExportFile:
    """What a training export says about itself: its Arrow schema and export metadata."""

    path: Path
    schema: pa.Schema
    metadata: dict[str, Any]
    row_groups: int

    @property
    def timestamp_field(self) -> str:
        return self.metadata["timestamp_field"]

    def require_label(self, label: str) -> None:
        if label not in self.schema.names:
            raise InputDataError(
                f"export {self.path} has no label column {label!r}; "
                f"its columns: {', '.join(self.schema.names)}"
            )
        kind = self.schema.field(label).type
        if not (
            pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
        ):
            raise InputDataError(
                f"label column {label!r} of export {self.path} is {kind}; "
                "expected bool or 0/1 numbers"
            )


def open_export(path: str | Path) -> ExportFile:
    """Reads the footer of an export; errors name a missing file or one that is not an export."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"export file {path} does not exist (or is not a file)")
    metadata = read_export_metadata(path)
    missing = [k for k in ("features", "timestamp_field", "statistics") if k not in metadata]
    if missing:
        raise InputDataError(f"export metadata of {path} lacks {', '.join(missing)}")
    parquet = pq.ParquetFile(path)
    return ExportFile(path, parquet.schema_arrow, metadata, parquet.metadata.num_row_groups)


class ExportDataset(IterableDataset):
    """Batches of one export's labelled rows with event time in [since, until), in file order or
    shuffled. Rows whose label is null (not known yet) are left out."""

    def __init__(
        self,
        path: str | Path,
        *,
        label: str,
        batch_size: int = 1024,
        encoding: FeatureEncoding | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        shuffle_seed: int | None = None,
        shuffle_buffer: int = 16_384,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.export = open_export(path)
        self.encoding = encoding or FeatureEncoding.from_export(
            self.export.schema, self.export.metadata
        )
        self.export.require_label(label)
        absent = [name for name in self.encoding.names if name not in self.export.schema.names]
        if absent:
            raise InputDataError(
                f"export {self.export.path} lacks feature column(s) {', '.join(absent)}"
            )
        self.label = label
        self.batch_size = batch_size
        self.since, self.until = since, until
        self.shuffle_seed = shuffle_seed
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffles differently, still deterministically, in each epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        groups = list(range(worker, self.export.row_groups, workers))
        if self.shuffle_seed is None:
            batches = self._encoded(groups)
        else:
            rng = np.random.default_rng([self.shuffle_seed, self.epoch, worker])
            groups = [int(g) for g in rng.permutation(groups)]
            batches = _shuffled(self._encoded(groups), rng, self.shuffle_buffer, self.batch_size)
        for features, labels in batches:
            yield torch.from_numpy(features), torch.from_numpy(labels)

    def _encoded(self, groups: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        columns = [*self.encoding.names, self.label, self.export.timestamp_field]
        parquet = pq.ParquetFile(self.export.path)
        for batch in parquet.iter_batches(
            batch_size=self.batch_size, row_groups=groups, columns=list(dict.fromkeys(columns))
        ):
            batch = batch.filter(self._usable(batch))
            if batch.num_rows:
                labels = batch.column(self.label).cast(pa.float32())
                # np.array copies: torch wants writable memory, Arrow's is read-only.
                yield self.encoding.encode(batch), np.array(labels, dtype=np.float32)

    def _usable(self, batch: pa.RecordBatch) -> pa.Array:
        """Labelled rows (a label may not be known yet) in the event-time range."""
        keep = pc.is_valid(batch.column(self.label))
        moments = batch.column(self.export.timestamp_field)
        if self.since is not None:
            keep = pc.and_(keep, pc.greater_equal(moments, pa.scalar(self.since, moments.type)))
        if self.until is not None:
            keep = pc.and_(keep, pc.less(moments, pa.scalar(self.until, moments.type)))
        return keep


def _shuffled(
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    buffer_rows: int,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Permutes each `buffer_rows` rows; full batches leave, the rest joins the next buffer."""
    held_x: list[np.ndarray] = []
    held_y: list[np.ndarray] = []
    held = 0
    for x, y in batches:
        held_x.append(x)
        held_y.append(y)
        held += len(y)
        if held >= buffer_rows:
            xs, ys = np.concatenate(held_x), np.concatenate(held_y)
            order = rng.permutation(held)
            full = held - held % batch_size
            yield from _slices(xs, ys, order[:full], batch_size)
            held_x, held_y, held = [xs[order[full:]]], [ys[order[full:]]], held - full
    if held:
        order = rng.permutation(held)
        yield from _slices(np.concatenate(held_x), np.concatenate(held_y), order, batch_size)


def _slices(
    xs: np.ndarray, ys: np.ndarray, order: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield xs[rows], ys[rows]
