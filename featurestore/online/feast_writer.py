"""Writes through Feast's own online store (SQLite in the embedded profile, any other store).

Feast's writers do not all refuse older rows, so this one reads the stored event times first and
drops rows older than what is stored. It is not atomic against a concurrent writer; the Redis
path is.
"""

from __future__ import annotations

import pyarrow as pa
from feast import FeatureStore
from feast.utils import _convert_arrow_to_proto, make_tzaware

from featurestore.definitions import ViewDefinition


class FeastFeatureWriter:
    def __init__(self, store: FeatureStore, view: ViewDefinition) -> None:
        self.store = store
        self.view = view
        self.provider = store._get_provider()
        self.join_keys = {k.name: k.dtype.to_value_type() for k in view.join_keys}

    def write(self, table: pa.Table) -> int:
        if not table.num_rows:
            return 0
        # Feast's converter reads a table's first record batch only: one chunk, or rows go
        # unwritten without a word.
        table = table.combine_chunks()
        rows = _convert_arrow_to_proto(table, self.view.feast_view, self.join_keys)
        stored = self.provider.online_read(
            self.store.config,
            self.view.feast_view,
            [entity for entity, *_ in rows],
            requested_features=[self.view.features[0].name],
        )
        newer = [
            row
            for row, (stored_ts, _) in zip(rows, stored)
            if stored_ts is None or make_tzaware(row[2]) >= make_tzaware(stored_ts)
        ]
        if newer:
            self.provider.online_write_batch(self.store.config, self.view.feast_view, newer, None)
        return len(newer)

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing is buffered."""
