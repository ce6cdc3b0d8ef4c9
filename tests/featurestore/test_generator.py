"""The synthetic data generator: determinism, layout, schemas, realism hooks, drift and bounds."""

from __future__ import annotations

import dataclasses
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore import offline
from fraud_example import generator
from fraud_example.generator import (
    CARD_PROFILES,
    DATASETS,
    LABELS,
    SCHEMAS,
    TRANSACTIONS,
    GeneratorConfig,
    generate,
    partition_file,
)

START = date(2024, 3, 1)
# Fraud is made ten times likelier than the default so a small run holds dozens of bursts.
BASE = GeneratorConfig(start=START, days=3, cards=1500, merchants=300, seed=11,
                       compromised_card_rate=0.01)


def read(raw_dir: Path, dataset: str, day: date) -> pa.Table:
    return pq.read_table(partition_file(raw_dir, dataset, day))


def read_all(raw_dir: Path, dataset: str, config: GeneratorConfig) -> pa.Table:
    return pa.concat_tables([read(raw_dir, dataset, d) for d in config.dates])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, generator.GenerateSummary]:
    raw_dir = tmp_path_factory.mktemp("raw")
    return raw_dir, generate(BASE, raw_dir)


# --- determinism ---------------------------------------------------------------------------


def test_same_config_gives_identical_values(raw, tmp_path):
    raw_dir, summary = raw
    again = generate(BASE, tmp_path)
    assert again.rows == summary.rows
    assert [p.relative_to(tmp_path) for p in again.files] == [
        p.relative_to(raw_dir) for p in summary.files
    ]
    for first, second in zip(summary.files, again.files):
        assert pq.read_table(first).equals(pq.read_table(second)), first


def test_a_day_does_not_depend_on_how_many_days_are_generated(raw, tmp_path):
    raw_dir, _ = raw
    generate(dataclasses.replace(BASE, days=1), tmp_path)
    for dataset in DATASETS:
        assert read(tmp_path, dataset, START).equals(read(raw_dir, dataset, START))


def test_another_seed_gives_other_data(raw, tmp_path):
    raw_dir, _ = raw
    generate(dataclasses.replace(BASE, days=1, seed=12), tmp_path)
    assert not read(tmp_path, TRANSACTIONS, START).equals(read(raw_dir, TRANSACTIONS, START))


# --- layout and schemas --------------------------------------------------------------------


def test_one_file_per_day_per_dataset_in_hive_partitions(raw):
    raw_dir, summary = raw
    expected = {
        raw_dir / dataset / f"event_date={day.isoformat()}" / "part-00000.parquet"
        for dataset in DATASETS
        for day in BASE.dates
    }
    on_disk = {p for p in raw_dir.rglob("*") if p.is_file()}
    assert on_disk == expected
    assert set(summary.files) == expected and len(summary.files) == len(expected)
    for dataset in DATASETS:
        assert summary.rows[dataset] == read_all(raw_dir, dataset, BASE).num_rows


def test_schemas_are_exact_and_hold_no_partition_column(raw):
    raw_dir, _ = raw
    for dataset in DATASETS:
        for day in BASE.dates:
            path = partition_file(raw_dir, dataset, day)
            schema = pq.read_schema(path)
            assert schema.equals(SCHEMAS[dataset], check_metadata=False), (path, schema)
            assert "event_date" not in schema.names
            assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert SCHEMAS[TRANSACTIONS].names == [
        "transaction_id", "card_id", "merchant_id", "amount", "currency", "merchant_category",
        "country", "channel", "event_timestamp",
    ]
    assert SCHEMAS[TRANSACTIONS].field("event_timestamp").type == pa.timestamp("us", tz="UTC")


def test_hive_dataset_reads_back_with_the_partition_column(raw):
    raw_dir, summary = raw
    table = pq.read_table(raw_dir / TRANSACTIONS, partitioning="hive")
    assert table.num_rows == summary.rows[TRANSACTIONS]
    assert "event_date" in table.column_names


# --- transactions --------------------------------------------------------------------------


def test_transactions_are_valid_and_sorted_within_each_day(raw):
    raw_dir, _ = raw
    ids = []
    for day in BASE.dates:
        table = read(raw_dir, TRANSACTIONS, day)
        ts = table["event_timestamp"].to_numpy()
        assert np.all(np.diff(ts.astype(np.int64)) >= 0)
        midnight = np.datetime64(day.isoformat(), "us")
        assert ts.min() >= midnight and ts.max() < midnight + np.timedelta64(1, "D")
        ids.extend(table["transaction_id"].to_pylist())

        amount = table["amount"].to_numpy()
        assert np.all(amount > 0)
        np.testing.assert_array_equal(np.round(amount * 100) / 100, amount)
        cards = table["card_id"].to_numpy()
        merchants = table["merchant_id"].to_numpy()
        assert cards.min() >= 1 and cards.max() <= BASE.cards
        assert merchants.min() >= 1 and merchants.max() <= BASE.merchants
        assert set(table["channel"].to_pylist()) <= {"pos", "contactless", "ecom", "atm"}
        for column in table.column_names:
            assert table[column].null_count == 0, column
    assert len(set(ids)) == len(ids)


def test_transactions_have_plausible_mixes(raw):
    raw_dir, _ = raw
    table = read_all(raw_dir, TRANSACTIONS, BASE)
    per_card_day = table.num_rows / (BASE.cards * BASE.days)
    assert 1.6 < per_card_day < 2.6
    profiles = read(raw_dir, CARD_PROFILES, START).to_pandas().set_index("card_id")
    frame = table.to_pandas()
    domestic = frame["country"].to_numpy() == profiles.loc[frame["card_id"], "home_country"]
    assert domestic.mean() > 0.85
    assert frame["channel"].nunique() == 4
    # Zipf-like popularity: the busiest tenth of merchants takes far more than a tenth.
    counts = np.sort(frame["merchant_id"].value_counts().to_numpy())[::-1]
    assert counts[: BASE.merchants // 10].sum() > 0.3 * counts.sum()


def test_same_card_events_share_exact_timestamps(raw):
    raw_dir, _ = raw
    frame = read_all(raw_dir, TRANSACTIONS, BASE).to_pandas()
    ties = frame.duplicated(["card_id", "event_timestamp"], keep=False)
    assert 0.005 < ties.mean() < 0.05
    # Split halves keep the merchant (a few ties are chance: two payments in one whole second).
    tied = frame[ties].groupby(["card_id", "event_timestamp"])
    assert (tied["merchant_id"].nunique() == 1).mean() > 0.9
    assert (tied["transaction_id"].nunique() == tied.size()).all()


def test_timestamps_have_whole_second_and_sub_second_values(raw):
    raw_dir, _ = raw
    us = read_all(raw_dir, TRANSACTIONS, BASE)["event_timestamp"].cast(pa.int64()).to_numpy()
    whole = us % 1_000_000 == 0
    milli = (us % 1000 == 0) & ~whole
    micro = us % 1000 != 0
    assert 0.2 < whole.mean() < 0.6
    assert milli.any() and micro.mean() > 0.2


# --- fraud and labels ----------------------------------------------------------------------


def test_labels_match_transactions_and_arrive_later(raw):
    raw_dir, _ = raw
    late_days = 0
    for day in BASE.dates:
        transactions = read(raw_dir, TRANSACTIONS, day)
        labels = read(raw_dir, LABELS, day)
        for column in ("transaction_id", "card_id", "event_timestamp"):
            assert labels[column].equals(transactions[column]), column
        delay = pc.subtract(labels["label_timestamp"], labels["event_timestamp"])
        delay_us = delay.cast(pa.int64()).to_numpy()
        assert delay_us.min() >= 3600 * 1_000_000
        assert delay_us.max() <= 21 * 86_400 * 1_000_000
        # Partitioned by the transaction's date even when the label comes days later.
        label_days = labels["label_timestamp"].to_numpy().astype("datetime64[D]")
        late_days += int((label_days > np.datetime64(day.isoformat())).sum())
    assert late_days > 0


def test_fraud_comes_in_high_foreign_ecom_bursts(raw):
    raw_dir, _ = raw
    transactions = read_all(raw_dir, TRANSACTIONS, BASE).to_pandas()
    labels = read_all(raw_dir, LABELS, BASE).to_pandas()
    frame = transactions.merge(labels[["transaction_id", "is_fraud"]], on="transaction_id")
    assert 0.001 < frame["is_fraud"].mean() < 0.05
    homes = read(raw_dir, CARD_PROFILES, START).to_pandas().set_index("card_id")["home_country"]

    bursts = frame[frame["is_fraud"] & (frame["channel"] == "ecom")]
    burst_stats = bursts.groupby(["card_id", bursts["event_timestamp"].dt.date]).agg(
        rows=("transaction_id", "size"),
        span=("event_timestamp", lambda ts: ts.max() - ts.min()),
        country=("country", "first"),
        amount=("amount", "median"),
    )
    burst_stats = burst_stats[burst_stats["rows"] >= 3]
    assert len(burst_stats) >= 10
    assert (burst_stats["span"] < timedelta(hours=1)).all()
    cards = burst_stats.index.get_level_values("card_id")
    assert (burst_stats["country"].to_numpy() != homes.loc[cards].to_numpy()).all()
    assert burst_stats["amount"].median() > 3 * frame.loc[~frame["is_fraud"], "amount"].median()


# --- card profiles -------------------------------------------------------------------------


def test_card_profiles_one_row_per_card_per_day_changing_slowly(tmp_path):
    config = dataclasses.replace(BASE, days=10, cards=3000, merchants=10,
                                 mean_daily_txn_per_card=0.1)
    generate(config, tmp_path)
    days = [read(tmp_path, CARD_PROFILES, d).to_pandas() for d in config.dates]
    for day, frame in zip(config.dates, days):
        assert frame["card_id"].tolist() == list(range(1, config.cards + 1))
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        assert (frame["event_timestamp"] == midnight).all()
        assert frame["home_country"].notna().all() and frame["card_tier"].notna().all()
    first, last = days[0], days[-1]
    assert (last["card_age_days"] - first["card_age_days"] == config.days - 1).all()
    assert (last["home_country"] == first["home_country"]).all()
    changed = (last["credit_limit"] != first["credit_limit"]).mean()
    assert 0.0 < changed < 0.1
    assert (first["credit_limit"] > 0).all()


# --- drift ---------------------------------------------------------------------------------

DRIFT_DAY = START + timedelta(days=1)
DRIFT_BASE = dataclasses.replace(BASE, days=2, cards=4000, merchants=200)


def test_amount_shift_scales_amounts_from_drift_start(tmp_path):
    generate(DRIFT_BASE, tmp_path / "base")
    generate(dataclasses.replace(DRIFT_BASE, drift_start=DRIFT_DAY, amount_shift=1.5),
             tmp_path / "drift")
    base, drift = tmp_path / "base", tmp_path / "drift"
    assert read(drift, TRANSACTIONS, START).equals(read(base, TRANSACTIONS, START))
    before = read(base, TRANSACTIONS, DRIFT_DAY)
    after = read(drift, TRANSACTIONS, DRIFT_DAY)
    ratio = pc.mean(after["amount"]).as_py() / pc.mean(before["amount"]).as_py()
    assert ratio == pytest.approx(1.5, rel=0.01)
    # Only the amounts move: the rest of the day is the same draw.
    assert after.drop_columns(["amount"]).equals(before.drop_columns(["amount"]))


def test_amount_spread_widens_amounts_at_the_same_median(tmp_path):
    generate(DRIFT_BASE, tmp_path / "base")
    generate(dataclasses.replace(DRIFT_BASE, drift_start=DRIFT_DAY, amount_spread=2.0),
             tmp_path / "drift")
    before = read(tmp_path / "base", TRANSACTIONS, DRIFT_DAY)
    after = read(tmp_path / "drift", TRANSACTIONS, DRIFT_DAY)
    log_before = np.log(before["amount"].to_numpy())
    log_after = np.log(after["amount"].to_numpy())
    assert np.median(log_after) == pytest.approx(np.median(log_before), abs=0.1)
    # Per-card scale and category multipliers add spread of their own: the total grows less
    # than 2x, but clearly.
    assert np.std(log_after) > 1.3 * np.std(log_before)
    assert after.drop_columns(["amount"]).equals(before.drop_columns(["amount"]))


def test_country_mix_brings_new_countries_from_drift_start(tmp_path):
    mix = {"US": 0.5, "ZZ": 0.3, "QQ": 0.2}
    generate(dataclasses.replace(DRIFT_BASE, drift_start=DRIFT_DAY, country_mix=mix), tmp_path)
    before = read(tmp_path, TRANSACTIONS, START).to_pandas()
    after = read(tmp_path, TRANSACTIONS, DRIFT_DAY).to_pandas()
    assert not before["country"].isin(["ZZ", "QQ"]).any()
    share = after["country"].value_counts(normalize=True)
    for country, weight in mix.items():
        assert share[country] == pytest.approx(weight, abs=0.03), country
    assert (after.loc[after["country"] == "ZZ", "currency"] != "").all()


def test_null_burst_nulls_category_and_country_at_the_configured_rate(tmp_path):
    generate(dataclasses.replace(DRIFT_BASE, drift_start=DRIFT_DAY, null_burst_rate=0.2),
             tmp_path)
    before = read(tmp_path, TRANSACTIONS, START)
    after = read(tmp_path, TRANSACTIONS, DRIFT_DAY)
    assert before["merchant_category"].null_count == 0 and before["country"].null_count == 0
    category_null = after["merchant_category"].is_null().to_numpy(zero_copy_only=False)
    country_null = after["country"].is_null().to_numpy(zero_copy_only=False)
    assert category_null.mean() == pytest.approx(0.2, abs=0.02)
    np.testing.assert_array_equal(category_null, country_null)
    for column in ("transaction_id", "card_id", "amount", "currency", "channel",
                   "event_timestamp"):
        assert after[column].null_count == 0, column


# --- config validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("days", 0),
        ("cards", 0),
        ("merchants", -3),
        ("seed", -1),
        ("days", 2.5),
        ("start", datetime(2024, 1, 1, 12)),
        ("start", "2024-01-01"),
        ("mean_daily_txn_per_card", 0.0),
        ("mean_daily_txn_per_card", float("nan")),
        ("compromised_card_rate", 1.5),
        ("split_payment_rate", -0.1),
        ("null_burst_rate", 1.01),
        ("amount_shift", 0.0),
        ("amount_spread", -1.0),
    ],
)
def test_invalid_config_names_the_field(field, value):
    drifting = ("null_burst_rate", "amount_shift", "amount_spread")
    drift = {"drift_start": START} if field in drifting else {}
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(BASE, **drift, **{field: value})


@pytest.mark.parametrize(
    "mix", [{}, {"ZZ": -1.0}, {"ZZ": 0.0}, {"": 1.0}, {"ZZ": float("inf")}]
)
def test_invalid_country_mix_is_rejected(mix):
    with pytest.raises(ValueError, match="country_mix"):
        dataclasses.replace(BASE, drift_start=START, country_mix=mix)


def test_drift_options_need_a_drift_start():
    with pytest.raises(ValueError, match="drift_start"):
        dataclasses.replace(BASE, amount_shift=2.0)


def test_rows_per_day_are_capped():
    with pytest.raises(ValueError, match="mean_daily_txn_per_card"):
        dataclasses.replace(BASE, cards=10_000_000, mean_daily_txn_per_card=10.0)


# --- writing -------------------------------------------------------------------------------


def test_regenerating_overwrites_each_day(tmp_path):
    config = dataclasses.replace(BASE, days=2, cards=200)
    generate(config, tmp_path)
    reference = read(tmp_path, TRANSACTIONS, START)
    partition_file(tmp_path, TRANSACTIONS, START).write_bytes(b"not parquet")
    generate(config, tmp_path)
    assert read(tmp_path, TRANSACTIONS, START).equals(reference)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    config = dataclasses.replace(BASE, days=1, cards=200)
    generate(config, tmp_path)
    reference = read(tmp_path, TRANSACTIONS, START)

    def crash_midway(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(offline.pq, "write_table", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        generate(dataclasses.replace(config, seed=99), tmp_path)
    monkeypatch.undo()
    assert read(tmp_path, TRANSACTIONS, START).equals(reference)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_progress_reports_each_day_s_transaction_rows(tmp_path):
    calls: list[int] = []
    summary = generate(dataclasses.replace(BASE, cards=200), tmp_path, progress=calls.append)
    assert len(calls) == BASE.days
    assert calls == [read(tmp_path, TRANSACTIONS, d).num_rows for d in BASE.dates]
    assert sum(calls) == summary.rows[TRANSACTIONS]


def test_peak_memory_follows_rows_per_day_not_days(tmp_path):
    # numpy reports its buffers to tracemalloc; Arrow's pool does not, but every per-row array
    # starts in numpy, so the numpy peak tracks the per-day working set.
    config = dataclasses.replace(BASE, cards=5000, merchants=100, days=2)
    generate(config, tmp_path / "warm")

    def peak(days: int) -> int:
        tracemalloc.start()
        try:
            generate(dataclasses.replace(config, days=days), tmp_path / f"d{days}")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(2), peak(8)
    assert long < 1.3 * short, (short, long)


def test_transactions_match_the_declared_stream_schema(configure) -> None:
    """The generator writes exactly the raw event schema feature_repo/ declares."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.offline import schema_from_ddl
    from fraud_example.generator import SCHEMAS, TRANSACTIONS

    for view in select_views(apply(configure()), None, aggregated_only=True):
        assert SCHEMAS[TRANSACTIONS].equals(schema_from_ddl(view.raw_schema))
