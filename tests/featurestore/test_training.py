"""Training on exports: the encoding against a row-by-row oracle, the dataset, the fraud model."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from featurestore.errors import InputDataError
from featurestore.export import EXPORT_METADATA_KEY, Statistics
from featurestore.training.dataset import ExportDataset, open_export
from featurestore.training.encoding import FeatureEncoding
from featurestore.training.model import load_model, time_split, train

START = datetime(2026, 3, 1, tzinfo=UTC)
TIMESTAMP = pa.timestamp("us", tz="UTC")
LABEL = "is_fraud"  # the fraud example's label column, which these exports carry
NUMERIC = [
    "card_txn_count_10m",
    "card_amount_sum_1h",
    "card_distinct_merchants_24h",
    "merchant_txn_count_1h",
    "credit_limit",
    "card_age_days",
    "amount_to_card_mean_24h",
]
STRINGS = ["home_country", "card_tier"]
FEATURES = NUMERIC[:5] + STRINGS[:1] + NUMERIC[5:] + STRINGS[1:]
COUNTRIES = ["DE", "FR", "NL", "ES", "IT", "PL"]
TIERS = ["standard", "gold", "platinum"]
SERVICE = "fraud_detection_v1"
INTEGRATION_CARDS = 10_000


@pytest.fixture(autouse=True, scope="module")
def _two_cores_at_most():
    """The machine has two cores; torch would otherwise take a thread for each core it sees."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _statistics(features: pa.Table) -> dict:
    statistics = Statistics(features.schema)
    statistics.add(features)
    return statistics.result()


def write_export(
    path: Path, rows: int, *, seed: int = 1, fraud_rate: float = 0.06, row_group_size: int = 1_000
) -> pa.Table:
    """An export in the layout of featurestore.export, with fraud that the features reveal.

    Fraud bursts: several payments within minutes, far above the card's mean amount, more often
    on basic-tier foreign cards. A tenth of the cards have no history (null window features).
    """
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < fraud_rate
    no_history = rng.random(rows) < 0.1
    moments = START + np.sort(rng.integers(0, 10 * 86_400, rows)) * timedelta(seconds=1)
    amount = np.round(rng.lognormal(3.5, 0.8, rows) * np.where(fraud, 3.0, 1.0), 2)
    ratio = np.where(fraud, rng.lognormal(1.2, 0.5, rows), rng.lognormal(0.0, 0.5, rows))
    count_10m = rng.poisson(np.where(fraud, 3.0, 0.4))

    def nullable(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind, mask=no_history)

    countries = rng.choice(COUNTRIES, rows, p=[0.5, 0.2, 0.1, 0.1, 0.07, 0.03])
    table = pa.table(
        {
            "card_id": pa.array(rng.integers(0, 500, rows), pa.int64()),
            "merchant_id": pa.array(rng.integers(0, 80, rows), pa.int64()),
            "transaction_id": [f"t{i}" for i in range(rows)],
            "amount": amount,
            "event_timestamp": pa.array(moments, TIMESTAMP),
            "is_fraud": fraud,
            "card_txn_count_10m": nullable(count_10m, pa.int64()),
            "card_amount_sum_1h": nullable(amount * (count_10m + 1), pa.float64()),
            "card_distinct_merchants_24h": nullable(rng.integers(1, 6, rows), pa.int64()),
            "merchant_txn_count_1h": pa.array(rng.poisson(20, rows), pa.int64()),
            "credit_limit": rng.choice([1_000.0, 5_000.0, 10_000.0], rows),
            "home_country": pa.array(countries, mask=rng.random(rows) < 0.02),
            "card_age_days": pa.array(rng.integers(0, 3_000, rows), pa.int64()),
            "amount_to_card_mean_24h": nullable(ratio, pa.float64()),
            "card_tier": np.where(
                fraud & (rng.random(rows) < 0.5), "basic", rng.choice(TIERS, rows)
            ),
        }
    )
    metadata = {
        "export_id": f"exp-{rng.bytes(6).hex()}",
        "feature_service": "fraud_detection_v1",
        "features": FEATURES,
        "entity_columns": [
            "card_id",
            "merchant_id",
            "transaction_id",
            "amount",
            "event_timestamp",
            "is_fraud",
        ],
        "timestamp_field": "event_timestamp",
        "rows": rows,
        "created_at": datetime.now(UTC).isoformat(),
        "statistics": _statistics(table.select(FEATURES)),
    }
    table = table.replace_schema_metadata({EXPORT_METADATA_KEY: json.dumps(metadata)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return table


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, pa.Table]:
    path = tmp_path_factory.mktemp("export") / "export.parquet"
    return path, write_export(path, 5_000)


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> tuple[Path, pa.Table]:
    path = tmp_path_factory.mktemp("big-export") / "export.parquet"
    return path, write_export(path, 20_000, seed=2, row_group_size=4_096)


def _encoding(path: Path) -> FeatureEncoding:
    export = open_export(path)
    return FeatureEncoding.from_export(export.schema, export.metadata)


def _request(table: pa.Table, index: int) -> dict[str, list]:
    """Row `index` as an online request gives it: {name: [value]}."""
    return {name: [value] for name, value in table.slice(index, 1).to_pylist()[0].items()}


# -- encoding ------------------------------------------------------------------------------------


def _oracle_row(encoding: FeatureEncoding, row: dict) -> list[float]:
    """The documented encoding, one row at a time in plain Python."""
    out: list[float] = []
    for spec in encoding.to_dict()["features"]:
        value = row[spec["name"]]
        if spec["kind"] == "numeric":
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            out.append(0.0 if missing else (float(value) - spec["mean"]) / spec["scale"])
            if spec["missing_column"]:
                out.append(1.0 if missing else 0.0)
        else:
            slots = [0.0] * (len(spec["categories"]) + 1)
            known = value in spec["categories"]
            slots[spec["categories"].index(value) if known else -1] = 1.0
            out.extend(slots)
    return out


def test_encoding_matches_row_oracle(export) -> None:
    path, table = export
    encoding = _encoding(path)
    encoded = encoding.encode(table)
    expected = np.array([_oracle_row(encoding, row) for row in table.to_pylist()], np.float32)
    assert encoded.dtype == np.float32
    assert encoded.shape == (table.num_rows, encoding.width) == expected.shape
    np.testing.assert_array_equal(encoded, expected)


def test_encoding_of_missing_values_and_categories() -> None:
    schema = pa.schema(
        [("n", pa.int64()), ("full", pa.float64()), ("flag", pa.bool_()), ("s", pa.string())]
    )
    metadata = {
        "features": ["n", "full", "flag", "s"],
        "statistics": {
            "n": {"count": 9, "null_count": 1, "mean": 4.0, "std": 2.0, "min": 0, "max": 8},
            "full": {"count": 10, "null_count": 0, "mean": 1.0, "std": 0.0, "min": 1, "max": 1},
            "flag": {"count": 10, "null_count": 0},
            "s": {"count": 10, "null_count": 0, "categories": {"a": 1, "b": 6, "c": 3}},
        },
    }
    encoding = FeatureEncoding.from_export(schema, metadata, max_categories=2)
    assert encoding.column_names == ["n", "n:missing", "full", "flag", "s=b", "s=c", "s=<other>"]
    got = encoding.encode(
        {
            "n": [8, None, 4],
            "full": [3.0, None, float("nan")],  # never missing in the export: no missing column
            "flag": [True, False, None],
            "s": ["b", "a", None],  # "a" is rarer than the top 2; None was never seen
        }
    )
    np.testing.assert_array_equal(
        got,
        np.array(
            [
                [2.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0],  # std 0 scales by 1
                [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            ],
            np.float32,
        ),
    )
    assert FeatureEncoding.from_dict(json.loads(json.dumps(encoding.to_dict()))) == encoding


def test_online_row_encodes_as_offline(export) -> None:
    path, table = export
    encoding = _encoding(path)
    offline = encoding.encode(table)
    for index in (0, 7, 4_999):
        row = _request(table, index)
        assert encoding.encode(row).tobytes() == offline[index].tobytes()


def test_encoding_input_errors(export) -> None:
    path, table = export
    encoding = _encoding(path)
    with pytest.raises(InputDataError, match="'card_tier' is missing"):
        encoding.encode(table.drop_columns(["card_tier"]))
    with pytest.raises(InputDataError, match="'credit_limit' has type string"):
        encoding.encode(
            table.set_column(
                table.schema.get_field_index("credit_limit"),
                "credit_limit",
                pc.cast(table.column("credit_limit"), pa.string()),
            )
        )
    row = _request(table, 0)
    with pytest.raises(InputDataError, match="'card_age_days' must be a sequence"):
        encoding.encode(row | {"card_age_days": 12})
    with pytest.raises(InputDataError, match="differ in length"):
        encoding.encode(row | {"card_age_days": [12, 13]})
    metadata = open_export(path).metadata
    del metadata["statistics"]["card_tier"]
    with pytest.raises(InputDataError, match="no entry for feature 'card_tier'"):
        FeatureEncoding.from_export(table.schema, metadata)


# -- dataset -------------------------------------------------------------------------------------


def _collect(batches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in batches), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows = np.column_stack([x, y])
    return rows[np.lexsort(rows.T[::-1])]


def test_dataset_batches_shapes_and_dtypes(export) -> None:
    path, table = export
    dataset = ExportDataset(path, label=LABEL, batch_size=300)
    batches = list(dataset)
    for features, labels in batches:
        assert features.dtype == torch.float32 and labels.dtype == torch.float32
        assert features.shape == (len(labels), dataset.encoding.width)
        assert 0 < len(labels) <= 300
    x, y = _collect(batches)
    np.testing.assert_array_equal(x, dataset.encoding.encode(table))
    np.testing.assert_array_equal(y, table.column("is_fraud").to_numpy(zero_copy_only=False))


def test_dataset_time_range(export) -> None:
    path, table = export
    since, until = START + timedelta(days=2), START + timedelta(days=5)
    moments = table.column("event_timestamp").to_pylist()
    keep = [since <= m < until for m in moments]
    _, y = _collect(ExportDataset(path, label=LABEL, since=since, until=until))
    assert 0 < len(y) == sum(keep) < table.num_rows
    np.testing.assert_array_equal(
        y, table.column("is_fraud").filter(pa.array(keep)).to_numpy(False)
    )


def test_shuffle_is_a_seeded_permutation(export) -> None:
    path, _ = export

    def batches(seed: int, epoch: int = 0) -> list[np.ndarray]:
        dataset = ExportDataset(
            path, label=LABEL, batch_size=256, shuffle_seed=seed, shuffle_buffer=2_000
        )
        dataset.set_epoch(epoch)
        return [x.numpy() for x, _ in dataset]

    first = batches(5)
    assert all(len(b) == 256 for b in first[:-1])
    assert all(np.array_equal(a, b) for a, b in zip(first, batches(5), strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(batches(6)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(batches(5, epoch=1)))
    plain = ExportDataset(path, label=LABEL)
    x, y = _collect(plain)
    assert not np.array_equal(np.concatenate(first), x)
    shuffled = ExportDataset(
        path, label=LABEL, batch_size=256, shuffle_seed=5, shuffle_buffer=2_000
    )
    np.testing.assert_array_equal(_sorted_rows(*_collect(shuffled)), _sorted_rows(x, y))


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_two_workers_share_the_rows(export, shuffle_seed) -> None:
    path, _ = export
    assert open_export(path).row_groups == 5
    dataset = ExportDataset(path, label=LABEL, batch_size=200, shuffle_seed=shuffle_seed)
    single = _sorted_rows(*_collect(dataset))
    assert len(np.unique(single, axis=0)) == len(single), "fixture rows must be distinct"
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    parallel = _sorted_rows(*_collect(loader))
    # Same multiset of rows: together all rows, and none read by both workers.
    np.testing.assert_array_equal(parallel, single)


def test_dataset_errors(export, tmp_path) -> None:
    path, table = export
    with pytest.raises(InputDataError, match="no label column 'chargeback'.*card_id"):
        ExportDataset(path, label="chargeback")
    plain = tmp_path / "plain.parquet"
    pq.write_table(table.replace_schema_metadata(None), plain)
    with pytest.raises(InputDataError, match="not a featurestore export.*featurestore.export"):
        ExportDataset(plain, label=LABEL)
    garbage = tmp_path / "notes.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(InputDataError, match="not a readable Parquet file"):
        ExportDataset(garbage, label=LABEL)
    with pytest.raises(InputDataError, match="does not exist"):
        ExportDataset(tmp_path / "absent.parquet", label=LABEL)
    wrong = tmp_path / "wrong-label.parquet"
    pq.write_table(table.append_column("verdict", pa.array(["yes"] * table.num_rows)), wrong)
    with pytest.raises(InputDataError, match="label column 'verdict'.* is string"):
        ExportDataset(wrong, label="verdict")


def test_rows_without_label_are_left_out(export, tmp_path) -> None:
    path, table = export
    known = pa.array([i % 4 != 0 for i in range(table.num_rows)])
    labels = pc.if_else(known, table.column("is_fraud"), pa.scalar(None, pa.bool_()))
    partial = tmp_path / "partial.parquet"
    pq.write_table(table.set_column(5, "is_fraud", labels), partial)
    x, y = _collect(ExportDataset(partial, label=LABEL))
    np.testing.assert_array_equal(x, _encoding(path).encode(table.filter(known)))
    np.testing.assert_array_equal(y, table.column("is_fraud").filter(known).to_numpy(False))
    split = time_split(open_export(partial), "is_fraud", 0.2)
    assert (split.train_rows, split.holdout_rows, split.unlabelled_rows) == (3_000, 750, 1_250)


# -- model ---------------------------------------------------------------------------------------


def test_time_split_holds_out_the_latest_rows(tmp_path) -> None:
    path = tmp_path / "ties.parquet"
    table = write_export(path, 1_000)
    # Rows 700..849 share one instant: the cutoff falls inside them, and all of them go to the
    # holdout, so training stays strictly earlier.
    moments = table.column("event_timestamp").to_pylist()
    tied = moments[:700] + [moments[700]] * 150 + moments[850:]
    labels = [i % 9 == 0 for i in range(1_000)]
    table = table.set_column(4, "event_timestamp", pa.array(tied, TIMESTAMP))
    table = table.set_column(5, "is_fraud", pa.array(labels))
    pq.write_table(table, path)
    split = time_split(open_export(path), "is_fraud", 0.2)
    assert split.cutoff == moments[700]
    assert (split.train_rows, split.holdout_rows) == (700, 300)
    assert split.holdout_frauds == sum(labels[700:])
    _, y = _collect(ExportDataset(path, label=LABEL, until=split.cutoff))
    assert len(y) == 700


def test_train_learns_fraud(big_export, tmp_path) -> None:
    path, table = big_export
    epochs = []
    # Training is batched, never a step per row (what once was a 20 s wall-clock budget, which
    # could fail on a loaded machine): every optimizer step is counted, 3 epochs of 16,000 rows
    # in batches of 256 (62 full and one of 128 each).
    steps = []
    counting = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    try:
        result = train(
            path,
            tmp_path / "model.pt",
            label=LABEL,
            epochs=3,
            batch_size=256,
            seed=1,
            on_epoch=lambda e, loss: epochs.append((e, loss)),
        )
    finally:
        counting.remove()
    assert result.roc_auc > 0.8, result
    assert len(steps) == 3 * math.ceil(16_000 / 256)
    assert [e for e, _ in epochs] == [1, 2, 3] and epochs[-1][1] < epochs[0][1]
    assert (result.train_rows, result.holdout_rows) == (16_000, 4_000)
    assert result.export_id == open_export(path).metadata["export_id"]
    # The saved model reproduces the reported AUC on the latest fifth of the rows.
    model = load_model(result.model_path)
    holdout = table.slice(16_000)
    assert roc_auc_score(holdout.column("is_fraud"), model.score(holdout)) == result.roc_auc
    offline = model.score(table)
    for index in range(0, table.num_rows, 997):
        row = _request(table, index)
        assert model.score(row)[0] == offline[index], index
    assert model.export_id == result.export_id and model.features == FEATURES
    assert model.metrics["roc_auc"] == result.roc_auc


def test_training_is_deterministic(export, tmp_path) -> None:
    path, _ = export

    def weights(seed: int, name: str) -> dict:
        train(path, tmp_path / name, label=LABEL, epochs=1, batch_size=512, seed=seed)
        return torch.load(tmp_path / name, weights_only=True)["state_dict"]

    first, again, other = weights(4, "a.pt"), weights(4, "b.pt"), weights(5, "c.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_online_score_equals_offline_score(export, tmp_path) -> None:
    path, table = export
    model = load_model(train(path, tmp_path / "m.pt", label=LABEL, epochs=1, seed=0).model_path)
    offline = model.score(table)
    assert offline.dtype == np.float32 and offline.shape == (table.num_rows,)
    assert ((offline >= 0) & (offline <= 1)).all() and offline.std() > 0
    for index in range(0, 5_000, 97):
        row = _request(table, index)
        assert model.score(row)[0] == offline[index], index


def test_single_class_holdout_is_refused(tmp_path) -> None:
    path = tmp_path / "late-fraud-free.parquet"
    table = write_export(path, 1_000)
    labels = pa.array([i < 700 and i % 10 == 0 for i in range(1_000)])
    pq.write_table(table.set_column(5, "is_fraud", labels), path)
    with pytest.raises(InputDataError, match="holdout .* has only legitimate transactions"):
        train(path, tmp_path / "m.pt", label=LABEL, epochs=1)
    assert not (tmp_path / "m.pt").exists()


def test_any_zero_one_label_trains_and_other_values_are_refused(tmp_path) -> None:
    """A label under another name, as 0/1 integers, trains; a 0.5 in it is named, not truncated."""
    path = tmp_path / "churn.parquet"
    table = write_export(path, 2_000)
    churned = pc.cast(table.column("is_fraud"), pa.int64())
    pq.write_table(table.drop_columns(["is_fraud"]).append_column("churned", churned), path)
    result = train(path, tmp_path / "m.pt", label="churned", epochs=1)
    assert 0 <= result.roc_auc <= 1 and result.train_rows + result.holdout_rows == 2_000
    halves = pc.divide(pc.cast(churned, pa.float64()), 2.0)
    pq.write_table(table.drop_columns(["is_fraud"]).append_column("churned", halves), path)
    with pytest.raises(InputDataError, match=r"'churned' .* only 0 and 1 .* e\.g\. 0\.5"):
        train(path, tmp_path / "m2.pt", label="churned", epochs=1)


def test_load_model_errors(export, tmp_path) -> None:
    path, _ = export
    with pytest.raises(InputDataError, match="does not exist"):
        load_model(tmp_path / "absent.pt")
    with pytest.raises(InputDataError, match="not a fraud model file"):
        load_model(path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(InputDataError, match="not a fraud model file"):
        load_model(tmp_path / "other.pt")


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_train(export, tmp_path) -> None:
    from featurestore.cli import app

    path, _ = export
    out = tmp_path / "models" / "fraud.pt"
    args = ["train", "--export", str(path), "--out", str(out), "--epochs", "2", "--seed", "3",
            "--label", LABEL]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    export_id = open_export(path).metadata["export_id"]
    auc = load_model(out).metrics["roc_auc"]
    assert f"ROC AUC {auc:.4f}" in result.output
    assert export_id in result.output and str(out) in result.output and "4,000" in result.output

    bad = CliRunner().invoke(app, ["train", "--export", str(tmp_path / "no.parquet"), "--out", "m",
                                        "--label", LABEL])
    assert bad.exit_code == 2 and "does not exist" in bad.output


# -- on a real export ----------------------------------------------------------------------------


@pytest.mark.spark
def test_train_on_a_real_export(tmp_path_factory, spark, monkeypatch) -> None:
    """Generated transactions, backfilled by Spark, exported point-in-time, then trained on."""
    from featurestore.export import export
    from featurestore.settings import get_settings
    from fraud_example.labels import labeled_transactions
    from tests.featurestore import pipeline

    root = tmp_path_factory.mktemp("real-export")
    built = pipeline.build(root, cards=INTEGRATION_CARDS)
    for key, value in built.env.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    entities = labeled_transactions(settings, pipeline.BACKFILL_START, pipeline.END)
    written = export(settings, entities, root / "export.parquet", feature_service=SERVICE)
    result = train(written.path, root / "fraud.pt", label=LABEL, epochs=5, batch_size=256, seed=0)
    print(f"real export of {written.rows:,} rows: {result}")

    table = pq.read_table(written.path)
    labelled = table.filter(pc.is_valid(table.column("is_fraud")))
    assert result.export_id == written.export_id
    assert result.train_rows + result.holdout_rows == labelled.num_rows
    assert result.roc_auc > 0.8
    model = load_model(result.model_path)
    assert model.features == list(written.features)
    holdout = labelled.filter(
        pc.greater_equal(
            labelled.column("event_timestamp"), pa.scalar(result.holdout_start, TIMESTAMP)
        )
    )
    assert roc_auc_score(holdout.column("is_fraud"), model.score(holdout)) == result.roc_auc
    offline = model.score(table)
    for index in range(0, table.num_rows, 997):
        row = _request(table, index)
        assert model.score(row)[0] == offline[index], index
