"""Point-in-time export on generated data: against a naive oracle, Spark, and Feast itself."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from featurestore.cli import app
from tests.featurestore import pipeline

pytestmark = [pytest.mark.spark, pytest.mark.redis]
CARDS = 500
SERVICE = "fraud_detection_v1"
NO_HISTORY_CARD = 9_999_999
US = pa.timestamp("us", tz="UTC")


@pytest.fixture(scope="module")
def built(tmp_path_factory, spark) -> pipeline.Pipeline:
    return pipeline.build(tmp_path_factory.mktemp("export"), cards=CARDS)


@pytest.fixture
def repo(built, monkeypatch):
    from featurestore.feast_config import feature_store
    from featurestore.settings import get_settings

    for key, value in built.env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    return settings, feature_store(settings)


@pytest.fixture
def entities(repo) -> pa.Table:
    """The labelled transactions of the backfilled days, plus rows at the edges of history."""
    from fraud_example.labels import labeled_transactions

    settings, _ = repo
    table = labeled_transactions(settings, pipeline.BACKFILL_START, pipeline.END)
    return pa.concat_tables([table, _edge_rows(table)])


def _moment(day) -> datetime:
    return datetime.combine(day, time(), UTC)


def _edge_rows(table: pa.Table) -> pa.Table:
    """Rows before any feature row, for a card without history, and on the ttl edges.

    The last card profiles are at END - 1 day, 00:00, and live 2 days: exactly then they are
    still valid, a microsecond later no longer. The window views have no row on START's day.
    """
    last_profile = _moment(pipeline.END - timedelta(days=1))
    card, merchant = table.column("card_id")[0].as_py(), table.column("merchant_id")[0].as_py()
    moments = [
        _moment(pipeline.START) + timedelta(hours=12),
        _moment(pipeline.BACKFILL_START) + timedelta(hours=12),
        last_profile + timedelta(days=2),
        last_profile + timedelta(days=2, microseconds=1),
    ]
    n = len(moments)
    return pa.table(
        {
            "transaction_id": [f"edge-entity-{i}" for i in range(n)],
            "card_id": pa.array([card, NO_HISTORY_CARD, card, card], pa.int64()),
            "merchant_id": pa.array([merchant] * n, pa.int64()),
            "amount": [12.5, 3.0, 7.0, 7.0],
            "event_timestamp": pa.array(moments, US),
            "is_fraud": [False] * n,
        }
    ).cast(table.schema)


def _export(settings, entities, path: Path, **options) -> pa.Table:
    from featurestore.export import export

    export(settings, entities, path, **options)
    return pq.read_table(path)


# ---------------------------------------------------------------------------------------------
# The naive oracle: every entity row, every view, straight from the definition


def _offline(view) -> pd.DataFrame:
    return (
        ds.dataset(str(view.offline.path), format="parquet", partitioning="hive")
        .to_table()
        .to_pandas()
    )


def _oracle(entities: pa.Table, views, service_features: list[str]) -> dict[str, list]:
    expected: dict[str, list] = defaultdict(list)
    frame = entities.to_pandas()
    for view in views:
        key = view.join_keys[0].name
        names = [f.name for f in view.features if f.name in service_features]
        history: dict[int, list[tuple]] = defaultdict(list)
        created = view.offline.created_timestamp_column
        for row in _offline(view).itertuples(index=False):
            stamp = getattr(row, created) if created else None
            history[getattr(row, key)].append(
                (row.event_timestamp, stamp, [getattr(row, n) for n in names])
            )
        for entity_key, t in zip(frame[key], frame["event_timestamp"]):
            valid = [h for h in history[entity_key] if t - view.ttl <= h[0] <= t]
            best = max(valid, key=lambda h: (h[0], h[1] or 0), default=None)
            for i, name in enumerate(names):
                expected[name].append(None if best is None else best[2][i])
    mean = expected["card_amount_mean_24h"]
    expected["amount_to_card_mean_24h"] = [
        a / m if m is not None and m > 0 else None for a, m in zip(frame["amount"], mean)
    ]
    return expected


def _values(column: pa.ChunkedArray) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in column.to_pylist()]


def test_local_export_matches_the_oracle(repo, entities, tmp_path) -> None:
    from featurestore.definitions import select_views

    settings, store = repo
    got = _export(settings, entities, tmp_path / "out.parquet", feature_service=SERVICE)
    service = store.get_feature_service(SERVICE)
    features = [f.name for p in service.feature_view_projections for f in p.features]
    assert got.column_names == entities.column_names + features
    assert got.select(entities.column_names).equals(entities)  # rows in order, passed through

    views = select_views(
        store, ["card_transaction_features", "merchant_transaction_features", "card_profile"]
    )
    expected = _oracle(entities, views, features)
    for name in features:
        want = [None if isinstance(v, float) and math.isnan(v) else v for v in expected[name]]
        assert _values(got.column(name)) == pytest.approx(want), name

    edges = got.slice(entities.num_rows - 4).to_pylist()
    assert all(e["card_txn_count_24h"] is None for e in edges)  # before or after any window row
    assert all(e["amount_to_card_mean_24h"] is None for e in edges)  # no 24 h mean to divide by
    assert edges[1]["credit_limit"] is None  # no history at all
    assert edges[2]["credit_limit"] is not None  # exactly t - ttl: still valid
    assert edges[3]["credit_limit"] is None  # a microsecond later: expired


def test_chunks_change_nothing_but_row_groups(repo, entities, tmp_path, monkeypatch) -> None:
    """Chunk by chunk (row groups, statistics merged) gives the rows and figures of one chunk."""
    from featurestore import export as exporting

    settings, _ = repo
    whole = _export(settings, entities, tmp_path / "whole.parquet", feature_service=SERVICE)
    monkeypatch.setattr(exporting, "CHUNK_ROWS", 333)
    chunked = _export(settings, entities, tmp_path / "chunked.parquet", feature_service=SERVICE)
    assert chunked.replace_schema_metadata(None).equals(whole.replace_schema_metadata(None))
    assert pq.read_metadata(tmp_path / "chunked.parquet").num_row_groups == math.ceil(
        entities.num_rows / 333
    )
    one = exporting.read_export_metadata(tmp_path / "whole.parquet")["statistics"]
    many = exporting.read_export_metadata(tmp_path / "chunked.parquet")["statistics"]
    assert many.keys() == one.keys()
    for name, figures in one.items():
        for figure, value in figures.items():
            assert many[name][figure] == pytest.approx(value, rel=1e-9), (name, figure)


def test_spark_engine_writes_the_same_rows(repo, entities, tmp_path, monkeypatch) -> None:
    from featurestore import export as exporting

    settings, _ = repo
    local = _export(settings, entities, tmp_path / "local.parquet", feature_service=SERVICE)
    monkeypatch.setattr(exporting, "CHUNK_ROWS", 1_000)
    spark = _export(
        settings, entities, tmp_path / "spark.parquet", feature_service=SERVICE, engine="spark"
    )
    assert spark.replace_schema_metadata(None).equals(local.replace_schema_metadata(None))


def _feast(store, frame: pd.DataFrame) -> pd.DataFrame:
    service = store.get_feature_service(SERVICE)
    return store.get_historical_features(frame, features=service).to_df()


def test_same_values_as_feast_get_historical_features(repo, entities, tmp_path) -> None:
    """Feast's file offline store reads the same tables and gives the same values.

    Except for the rows Feast loses: it keeps one row per (join keys, event_timestamp), so
    entity rows sharing a card or a merchant and a timestamp (split payments) are compared
    without their duplicates; and it drops an entity row whose key has rows in a view but none
    valid at its time (it filters the merged rows by ttl, then nothing is left to keep).
    """
    settings, store = repo
    frame = entities.to_pandas()
    duplicated = frame.duplicated(["card_id", "event_timestamp"], keep=False) | (
        frame.duplicated(["merchant_id", "event_timestamp"], keep=False)
    )
    assert duplicated.sum() > 10
    unique = entities.filter(pa.array(~duplicated.to_numpy()))
    ours = _export(settings, unique, tmp_path / "out.parquet", feature_service=SERVICE)
    ours = ours.to_pandas().set_index("transaction_id").sort_index()
    theirs = _feast(store, unique.to_pandas()).set_index("transaction_id").sort_index()

    # Rows out of every view's reach (edge-entity-1: a card never seen) are still there.
    lost = {"edge-entity-0", "edge-entity-2", "edge-entity-3"}
    assert set(ours.index) - set(theirs.index) == lost
    ours = ours.drop(index=sorted(lost))
    assert list(theirs.index) == list(ours.index)
    assert len(ours) > CARDS
    assert set(theirs.columns) == set(ours.columns)
    for name in ours.columns:
        pd.testing.assert_series_equal(
            theirs[name], ours[name], check_dtype=False, check_names=False, obj=name
        )

    # With the duplicates Feast drops more entity rows; the export keeps every one.
    assert len(_feast(store, frame)) < len(frame) - len(lost)


def test_metadata_describes_the_export(repo, entities, tmp_path) -> None:
    from featurestore.export import read_export_metadata

    settings, _ = repo
    path = tmp_path / "out.parquet"
    table = _export(settings, entities, path, feature_service=SERVICE)
    meta = read_export_metadata(path)
    assert meta["export_id"].startswith("exp-") and len(meta["export_id"]) == 16
    assert meta["feature_service"] == SERVICE
    assert meta["entity_columns"] == entities.column_names
    assert meta["features"] == table.column_names[entities.num_columns :]
    assert meta["timestamp_field"] == "event_timestamp"
    assert meta["rows"] == entities.num_rows
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None
    stats = meta["statistics"]
    assert set(stats) == set(meta["features"])
    for name in meta["features"]:
        series = table.column(name).to_pandas()
        assert stats[name]["count"] == series.notna().sum(), name
        assert stats[name]["null_count"] == series.isna().sum(), name
        if series.dtype == object:
            assert stats[name]["categories"] == series.value_counts().to_dict(), name
        else:
            assert stats[name]["mean"] == pytest.approx(series.mean()), name
            assert stats[name]["std"] == pytest.approx(series.std()), name
            assert stats[name]["min"] == series.min() and stats[name]["max"] == series.max()
    assert stats["amount_to_card_mean_24h"]["null_count"] > 0


def test_feature_references_export_only_what_they_name(repo, entities, tmp_path) -> None:
    settings, _ = repo
    full = _export(settings, entities, tmp_path / "full.parquet", feature_service=SERVICE)
    refs = ["transaction_amount_ratio:amount_to_card_mean_24h", "card_profile:card_tier"]
    got = _export(settings, entities, tmp_path / "refs.parquet", features=refs)
    assert got.column_names == [*entities.column_names, "amount_to_card_mean_24h", "card_tier"]
    for name in ("amount_to_card_mean_24h", "card_tier"):
        assert got.column(name).equals(full.column(name))


def test_an_empty_entity_table_is_bad_input(repo, entities, tmp_path) -> None:
    """Empty input is bad input, as for every command: an export of nothing is a mistake."""
    from featurestore.errors import InputDataError

    settings, _ = repo
    with pytest.raises(InputDataError, match=r"entity table: it has no rows \(nothing to export\)"):
        _export(settings, entities.slice(0, 0), tmp_path / "out.parquet", feature_service=SERVICE)
    assert not (tmp_path / "out.parquet").exists()


YEAR_1, YEAR_3000 = datetime(1, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)
YEAR_9999_END = datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("engine", "edges"),
    [
        ("local", [YEAR_3000]),  # no overflow on the way: the scan alone
        ("local", [YEAR_1, YEAR_3000, YEAR_9999_END]),
        ("spark", [YEAR_1, YEAR_3000, YEAR_9999_END]),
    ],
)
def test_entity_times_at_the_ends_of_the_datetime_range(
    repo, entities, tmp_path, monkeypatch, engine, edges
) -> None:
    """Years 1, 3000 and 9999 have no feature rows in any ttl: nulls, the other rows untouched,
    and the day partitions are listed, not walked day by day to year 9999."""
    from pathlib import Path as PathType

    settings, _ = repo
    sample = entities.slice(0, 20)
    far = pa.concat_tables([sample.slice(0, 1)] * len(edges))
    far = _replace(far, "event_timestamp", pa.array(edges, US))
    globs = []
    glob = PathType.glob

    def counted(path, pattern):
        globs.append(path)
        assert len(globs) < 1_000, "day partitions walked one by one"
        return glob(path, pattern)

    expected = _export(settings, sample, tmp_path / "near.parquet", feature_service=SERVICE)
    monkeypatch.setattr(PathType, "glob", counted)
    got = _export(settings, pa.concat_tables([sample, far]), tmp_path / "far.parquet",
                  feature_service=SERVICE, engine=engine)
    monkeypatch.undo()
    features = [n for n in got.column_names if n not in entities.column_names]
    assert got.slice(0, sample.num_rows).select(features).equals(expected.select(features))
    for name in features:
        assert got.column(name).slice(sample.num_rows).null_count == len(edges), name


def test_labeled_transactions_join_raw_events_with_labels(repo) -> None:
    from featurestore.errors import RangeError
    from fraud_example.labels import labeled_transactions

    settings, _ = repo
    table = labeled_transactions(settings, pipeline.START, pipeline.END)

    def raw(name: str) -> pd.DataFrame:
        path = settings.raw_dir / name
        return ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()

    expected = raw("transactions").merge(raw("labels")[["transaction_id", "is_fraud"]], how="left")
    expected = expected.sort_values(["event_timestamp", "transaction_id"], kind="stable")
    got = table.to_pandas()
    assert got.columns.tolist() == [
        "transaction_id", "card_id", "merchant_id", "amount", "event_timestamp", "is_fraud"
    ]  # fmt: skip
    expected = expected[got.columns].reset_index(drop=True)
    for frame in (got, expected):
        frame["is_fraud"] = frame["is_fraud"].astype("boolean")
    pd.testing.assert_frame_equal(got, expected)
    # The edge events of the pipeline are the only transactions without a label.
    assert got["is_fraud"].isna().sum() == pipeline.edge_events().num_rows
    with pytest.raises(RangeError, match="must be after"):
        labeled_transactions(settings, pipeline.END, pipeline.START)


# ---------------------------------------------------------------------------------------------
# The command line


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_entities_then_export(repo, tmp_path) -> None:
    from featurestore.export import read_export_metadata

    entities_path, out = tmp_path / "entities.parquet", tmp_path / "export.parquet"
    result = _run(
        "example", "entities", "--start", str(pipeline.BACKFILL_START), "--end", str(pipeline.END),
        "--out", str(entities_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pq.read_metadata(entities_path).num_rows
    assert f"wrote {rows:,} transactions" in result.output
    result = _run(
        "export", "--entities", str(entities_path), "--feature-service", SERVICE,
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = read_export_metadata(out)
    assert f"exported {rows:,} rows" in result.output and meta["export_id"] in result.output
    assert meta["rows"] == rows


@pytest.fixture
def bad_entities(repo, entities, tmp_path):
    """Write a variant of the entity table; returns a function giving its path."""

    def write(table: pa.Table) -> Path:
        path = tmp_path / "entities.parquet"
        pq.write_table(table, path)
        return path

    return write


def _export_cli(entities_path: Path, *options: str):
    out = entities_path.parent / "out.parquet"
    result = _run("export", "--entities", str(entities_path), "--out", str(out), *options)
    assert result.exit_code == 2, result.output
    assert not out.exists(), "an export was written"
    return " ".join(result.output.split())


SERVICE_OPTION = ("--feature-service", SERVICE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--feature-service", "fraud_v9"), "unknown feature service 'fraud_v9'"),
        (("--feature", "card_profle:credit_limit"), "unknown feature view 'card_profle'"),
        (
            ("--feature", "card_profile:credit"),
            "feature view 'card_profile' has no feature 'credit'",
        ),
        (("--feature", "credit_limit"), "'credit_limit' must look like 'view:feature'"),
        ((), "give either --feature-service or --feature"),
        ((*SERVICE_OPTION, "--feature", "card_profile:card_tier"), "exactly one"),
        ((*SERVICE_OPTION, "--engine", "dask"), "engine must be one of ['local', 'spark']"),
        (
            ("--feature", "card_profile:card_tier", "--feature", "card_profile:card_tier"),
            "give the same column name 'card_tier'",
        ),
    ],
)
def test_cli_names_a_wrong_request(bad_entities, entities, options, message) -> None:
    assert message in _export_cli(bad_entities(entities), *options)


def _replace(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, column)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["merchant_id"]), "no column 'merchant_id' (join key, int64)"),
        (lambda t: t.drop_columns(["event_timestamp"]), "no column 'event_timestamp'"),
        (
            lambda t: _replace(t, "card_id", pc.cast(t.column("card_id"), pa.string())),
            "column 'card_id' is string, expected int64",
        ),
        (
            lambda t: _replace(t, "event_timestamp", pc.cast(t.column("card_id"), pa.string())),
            "column 'event_timestamp' is string, expected a timestamp",
        ),
        (
            lambda t: _replace(
                t, "merchant_id", pa.array(t.column("merchant_id").to_pylist()[:-2] + [None] * 2)
            ),
            "column 'merchant_id' has 2 null value(s)",
        ),
        (
            lambda t: t.drop_columns(["amount"]),
            "no column 'amount' (request field of on-demand view 'transaction_amount_ratio')",
        ),
        (
            lambda t: t.append_column("card_tier", pa.array(["x"] * t.num_rows)),
            "columns ['card_tier'] have the names of exported features",
        ),
        (
            lambda t: _replace(t, "amount", pc.cast(t.column("amount"), pa.string())),
            "column 'amount' is string, expected double (request field of on-demand view",
        ),
        (
            lambda t: _replace(t, "amount", pa.array([i % 2 == 0 for i in range(t.num_rows)])),
            "column 'amount' is bool, expected double",
        ),
        (lambda t: t.slice(0, 0), "it has no rows (nothing to export)"),
    ],
)
def test_cli_names_what_is_wrong_with_the_entities(bad_entities, entities, change, message) -> None:
    output = _export_cli(bad_entities(change(entities)), *SERVICE_OPTION)
    assert "entity table:" in output and message in output


def test_cli_entity_table_that_is_not_there(repo, tmp_path) -> None:
    output = _export_cli(tmp_path / "missing.parquet", *SERVICE_OPTION)
    assert f"entity table {tmp_path / 'missing.parquet'} does not exist" in output


def test_int32_keys_are_accepted(repo, entities, tmp_path) -> None:
    settings, _ = repo
    narrow = _replace(entities, "merchant_id", pc.cast(entities.column("merchant_id"), pa.int32()))
    got = _export(settings, narrow, tmp_path / "a.parquet", feature_service=SERVICE)
    wide = _export(settings, entities, tmp_path / "b.parquet", feature_service=SERVICE)
    assert got.column("merchant_id").type == pa.int32()  # passed through as given
    assert (
        got.drop_columns(["merchant_id"])
        .replace_schema_metadata(None)
        .equals(wide.drop_columns(["merchant_id"]).replace_schema_metadata(None))
    )


def test_json_metadata_round_trips(repo, entities, tmp_path) -> None:
    path = tmp_path / "out.parquet"
    _export(repo[0], entities.slice(0, 50), path, features=["card_profile:home_country"])
    raw = pq.read_schema(path).metadata[b"featurestore.export"]
    meta = json.loads(raw)
    assert meta["feature_service"] is None
    assert meta["feature_references"] == ["card_profile:home_country"]
    assert (
        sum(meta["statistics"]["home_country"]["categories"].values())
        == (meta["statistics"]["home_country"]["count"])
    )
    assert meta["rows"] == 50
