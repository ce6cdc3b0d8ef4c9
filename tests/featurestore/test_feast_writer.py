"""The writer through Feast's own online store (SQLite, the embedded profile): every row of a
table is written, whatever its chunks, and an older row never replaces a newer one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from featurestore.definitions import select_views
from featurestore.feast_config import apply
from featurestore.materialize import required_schema
from featurestore.online.feast_writer import FeastFeatureWriter
from featurestore.settings import get_settings

AT = datetime(2026, 3, 1, tzinfo=UTC)
VIEW = "card_transaction_features"


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("FEATURESTORE_DATA_DIR", str(tmp_path / "data"))
    store = apply(get_settings())
    [view] = [v for v in select_views(store, None) if v.name == VIEW]
    return store, view


def _rows(view, cards: range, at: datetime, value: float) -> pa.Table:
    """One row per card at `at`, every feature `value` (integers truncated)."""
    schema = required_schema(view)
    columns = {}
    for field in schema:
        if field.name == view.join_keys[0].name:
            columns[field.name] = pa.array(list(cards), field.type)
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = pa.array([at] * len(cards), field.type)
        elif pa.types.is_integer(field.type):
            columns[field.name] = pa.array([int(value)] * len(cards), field.type)
        else:
            columns[field.name] = pa.array([value] * len(cards), field.type)
    if view.offline.created_timestamp_column:
        columns[view.offline.created_timestamp_column] = pa.array(
            [at] * len(cards), pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def _online(store, view, cards: range) -> list:
    feature = f"{VIEW}:{view.features[0].name}"
    answer = store.get_online_features(
        features=[feature], entity_rows=[{view.join_keys[0].name: c} for c in cards]
    ).to_dict()
    return answer[view.features[0].name]


def test_every_chunk_of_a_table_is_written(embedded) -> None:
    """Defect: Feast's converter reads a table's first record batch only, so the stream
    worker's one write per view (its partitions' rows concatenated, a chunk each) left every
    partition but the first unwritten, silently (the demo's normal traffic then drifted)."""
    store, view = embedded
    table = pa.concat_tables([_rows(view, range(1, 4), AT, 1.0), _rows(view, range(4, 9), AT, 2.0)])
    assert table.column(0).num_chunks == 2
    FeastFeatureWriter(store, view).write(table)
    assert _online(store, view, range(1, 9)) == [1.0] * 3 + [2.0] * 5


def test_an_older_row_in_a_later_chunk_is_not_written(embedded) -> None:
    store, view = embedded
    writer = FeastFeatureWriter(store, view)
    writer.write(_rows(view, range(1, 3), AT, 5.0))
    older = _rows(view, range(1, 3), AT - timedelta(hours=1), 9.0)
    newer = _rows(view, range(3, 5), AT, 7.0)
    writer.write(pa.concat_tables([newer, older]))
    assert _online(store, view, range(1, 5)) == [5.0, 5.0, 7.0, 7.0]
