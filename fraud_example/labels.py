"""The fraud example's training entity table: raw transactions with their fraud label.

The example's feature repository (feature_repo/) declares the sources it is made of; a user's own
repository builds its entity table in its own way, and the product's export takes any.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from feast import FeatureStore, FileSource
from feast.errors import DataSourceObjectNotFoundException

from featurestore import offline
from featurestore.definitions import Table, file_table
from featurestore.errors import DefinitionError, InputDataError, RangeError, UnknownNameError
from featurestore.export import TIMESTAMP_FIELD
from featurestore.export.rows import ROW_TIMESTAMP
from featurestore.settings import Settings

# The raw sources the training entity table is made of (names in feature_repo/).
TRANSACTIONS_SOURCE = "transactions_raw"
LABELS_SOURCE = "transaction_labels"
LABELED_COLUMNS = ("transaction_id", "card_id", "merchant_id", "amount", TIMESTAMP_FIELD)
LABEL_COLUMN = "is_fraud"


def labeled_transactions(settings: Settings, start: date, end: date) -> pa.Table:
    """Raw transactions of days [start, end) with their fraud label, in event-time order.

    A transaction whose label is not known yet has a null `is_fraud`; a transaction labelled
    more than once gets its latest label.
    """
    if end <= start:
        raise RangeError(f"end {end.isoformat()} must be after start {start.isoformat()}")
    from featurestore.feast_config import feature_store

    store = feature_store(settings)
    transactions_table = _source_table(store, TRANSACTIONS_SOURCE)
    labels_table = _source_table(store, LABELS_SOURCE)
    transactions = _read_source(
        transactions_table, start, end, required=True,
        schema=pa.schema([
            ("transaction_id", pa.string()), ("card_id", pa.int64()),
            ("merchant_id", pa.int64()), ("amount", pa.float64()),
            (TIMESTAMP_FIELD, ROW_TIMESTAMP),
        ]),
    )  # fmt: skip
    labels = _read_source(
        labels_table, start, end, required=False,
        schema=pa.schema([
            ("transaction_id", pa.string()), (LABEL_COLUMN, pa.bool_()),
            (labels_table.timestamp_field, ROW_TIMESTAMP),
        ]),
    )  # fmt: skip
    labels = _latest_label(labels, labels_table.timestamp_field)
    joined = transactions.join(labels, "transaction_id", join_type="left outer")
    order = pc.sort_indices(
        joined, sort_keys=[(TIMESTAMP_FIELD, "ascending"), ("transaction_id", "ascending")]
    )
    return joined.take(order).select([*LABELED_COLUMNS, LABEL_COLUMN]).combine_chunks()


def _source_table(store: FeatureStore, name: str) -> Table:
    try:
        source = store.get_data_source(name)
    except DataSourceObjectNotFoundException:
        known = sorted(s.name for s in store.list_data_sources())
        raise UnknownNameError(
            f"the training entity table is made of the fraud example's data sources "
            f"{[TRANSACTIONS_SOURCE, LABELS_SOURCE]}; project {store.project!r} has no data "
            f"source {name!r} (it has: {known or 'none'})"
        ) from None
    if not isinstance(source, FileSource):
        raise DefinitionError(
            f"data source {name!r} of the fraud example must be a FileSource (Parquet), "
            f"got {type(source).__name__}"
        )
    return file_table(source)


def _read_source(
    table: Table, start: date, end: date, *, required: bool, schema: pa.Schema
) -> pa.Table:
    files = offline.data_files(table, start, end, required=required)
    offline.validate_files(files, table, schema)
    if not files:
        return schema.empty_table()
    try:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    except pa.ArrowInvalid as exc:  # nanosecond times that microseconds cannot hold, ...
        raise InputDataError(
            f"raw source {table.name!r} in {table.path}: {exc}; the store keeps microseconds"
        ) from None


def _latest_label(labels: pa.Table, label_time: str) -> pa.Table:
    """One label per transaction: the latest known."""
    order = pc.sort_indices(
        labels, sort_keys=[("transaction_id", "ascending"), (label_time, "ascending")]
    )
    labels = labels.take(order)
    ids = labels.column("transaction_id").combine_chunks()
    last = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        last[:-1] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return labels.filter(pa.array(last)).select(["transaction_id", LABEL_COLUMN])
