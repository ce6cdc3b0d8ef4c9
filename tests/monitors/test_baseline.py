"""Baselines from training exports: the sample and profile against naive oracles over the whole
file, subjects, the model's scores, versions under concurrent builders (SQLite and PostgreSQL),
and the errors that name what is wrong."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import torch

from featurestore import db
from featurestore.export import EXPORT_METADATA_KEY, Statistics
from featurestore.training.model import load_model, train
from monitors import baseline as baseline_module
from monitors.baseline import (
    QUANTILES,
    BaselineError,
    baseline_for_model,
    build_baseline,
    get_baseline,
    list_baselines,
)
from monitors.store import BASELINES
from tests.conftest import POSTGRES_URL

SERVICE = "fraud_detection_v1"
REFERENCES = {
    "card_txn_count_10m": "card_transaction_features:card_txn_count_10m",
    "card_amount_sum_1h": "card_transaction_features:card_amount_sum_1h",
    "merchant_txn_count_1h": "merchant_transaction_features:merchant_txn_count_1h",
    "credit_limit": "card_profile:credit_limit",
    "home_country": "card_profile:home_country",
    "card_tier": "card_profile:card_tier",
    "amount_to_card_mean_24h": "transaction_amount_ratio:amount_to_card_mean_24h",
}
FEATURES = list(REFERENCES)
START = datetime(2026, 3, 1, tzinfo=UTC)


def _rows(rng: np.random.Generator, first: int, rows: int) -> pa.Table:
    """Export rows (entity columns, label, features) with fraud the features reveal; a tenth
    of the cards have no history (null window features), some countries are unknown."""
    fraud = rng.random(rows) < 0.08
    no_history = rng.random(rows) < 0.1
    amount = np.round(rng.lognormal(3.5, 0.8, rows) * np.where(fraud, 3.0, 1.0), 2)
    count_10m = rng.poisson(np.where(fraud, 3.0, 0.4))
    ratio = np.where(fraud, rng.lognormal(1.2, 0.5, rows), rng.lognormal(0.0, 0.5, rows))
    ratio[rng.random(rows) < 0.02] = np.nan  # NaN counts as missing, as in export statistics
    seconds = np.arange(first, first + rows) * 7
    return pa.table(
        {
            "card_id": pa.array(rng.integers(0, 500, rows), pa.int64()),
            "transaction_id": [f"t{i}" for i in range(first, first + rows)],
            "amount": amount,
            "event_timestamp": pa.array(
                START + seconds * timedelta(seconds=1), pa.timestamp("us", tz="UTC")
            ),
            "is_fraud": fraud,
            "card_txn_count_10m": pa.array(count_10m, pa.int64(), mask=no_history),
            "card_amount_sum_1h": pa.array(amount * (count_10m + 1), mask=no_history),
            "merchant_txn_count_1h": pa.array(rng.poisson(20, rows), pa.int64()),
            "credit_limit": rng.choice([1_000.0, 5_000.0, 10_000.0], rows),
            "home_country": pa.array(
                rng.choice(["DE", "FR", "NL", "ES", "IT", "PL"], rows).tolist(),
                mask=rng.random(rows) < 0.03,
            ),
            "card_tier": np.where(
                fraud & (rng.random(rows) < 0.5), "basic", rng.choice(["standard", "gold"], rows)
            ).tolist(),
            "amount_to_card_mean_24h": pa.array(ratio, mask=no_history),
        }
    )


def write_export(
    path: Path,
    rows: int,
    *,
    seed: int = 1,
    service: str | None = SERVICE,
    row_group_size: int = 4_096,
    statistics: bool = True,
) -> str:
    """An export in featurestore.export's layout, written chunk by chunk as it writes one: row
    groups of `row_group_size`, the statistics of `featurestore.export.Statistics` and its
    description in the file's metadata. Returns the export id."""
    rng = np.random.default_rng(seed)
    schema = _rows(np.random.default_rng(0), 0, 1).schema
    described = Statistics(pa.schema([schema.field(f) for f in FEATURES]))
    path.parent.mkdir(parents=True, exist_ok=True)
    export_id = f"exp-{uuid.uuid4().hex[:12]}"
    with pq.ParquetWriter(path, schema, store_schema=False) as writer:
        for first in range(0, rows, row_group_size):
            chunk = _rows(rng, first, min(row_group_size, rows - first))
            described.add(chunk.select(FEATURES))
            writer.write_table(chunk)
        description = {
            "export_id": export_id,
            "feature_service": service,
            "feature_references": list(REFERENCES.values()),
            "features": FEATURES,
            "entity_columns": ["card_id", "transaction_id", "amount", "event_timestamp"],
            "timestamp_field": "event_timestamp",
            "rows": rows,
            "created_at": datetime.now(UTC).isoformat(),
        }
        if statistics:
            description["statistics"] = described.result()
        writer.add_key_value_metadata({EXPORT_METADATA_KEY: json.dumps(description)})
    return export_id


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "training.parquet"
    write_export(path, 12_000)
    return path


@pytest.fixture(scope="module")
def model_file(export_file: Path, tmp_path_factory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two shared cores
    try:
        path = tmp_path_factory.mktemp("model") / "fraud_mlp.pt"
        train(export_file, path, label="is_fraud", epochs=1, batch_size=1_024)
    finally:
        torch.set_num_threads(before)
    return path


@pytest.fixture
def settings(configure):
    return configure()


def _oracle_sample(path: Path, rows: int, seed: int, columns: list[str]) -> pa.Table:
    """The documented sample, from the whole file read at once: the rows at the sorted
    positions of a seeded uniform draw without replacement."""
    whole = pq.read_table(path, columns=columns)
    picked = np.sort(np.random.default_rng(seed).choice(whole.num_rows, rows, replace=False))
    return whole.take(pa.array(picked))


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Same columns, types and values, NaN equal to NaN (Table.equals says NaN != NaN)."""
    return a.schema.equals(b.schema) and a.to_pandas().equals(b.to_pandas())


def _missing(column: pa.ChunkedArray) -> int:
    values = column.to_pylist()
    return sum(v is None or (isinstance(v, float) and np.isnan(v)) for v in values)


# -- the sample and the profile ------------------------------------------------------------------


def test_service_baseline_sample_and_profile_match_oracles(settings, export_file: Path) -> None:
    built = build_baseline(settings, export_file, sample_rows=3_000, seed=5)
    metadata = json.loads(pq.read_metadata(export_file).metadata[EXPORT_METADATA_KEY.encode()])

    assert (built.subject, built.version) == (f"service:{SERVICE}", 1)
    assert (built.export_id, built.rows, built.sample_rows) == (
        metadata["export_id"],
        12_000,
        3_000,
    )
    assert built.export_path == export_file.absolute() and built.model_path is None
    assert built.sample_path == settings.baselines_dir / f"service__{SERVICE}-v1.parquet"
    assert built.references == REFERENCES

    sample = built.sample()
    assert _same(sample, _oracle_sample(export_file, 3_000, 5, FEATURES))
    assert built.sample(["card_tier", "credit_limit"]).column_names == ["card_tier", "credit_limit"]

    whole = pq.read_table(export_file, columns=FEATURES)
    kinds = {name: spec["kind"] for name, spec in built.profile.items()}
    assert kinds == {
        "card_txn_count_10m": "numeric",  # integers with nulls: floats to pandas
        "card_amount_sum_1h": "numeric",
        "merchant_txn_count_1h": "numeric",
        "credit_limit": "numeric",
        "home_country": "categorical",
        "card_tier": "categorical",
        "amount_to_card_mean_24h": "numeric",
    }
    for name in FEATURES:
        spec = built.profile[name]
        column = sample.column(name)
        assert spec["definition"] == REFERENCES[name]
        assert spec["dtype"] == str(whole.schema.field(name).type)
        assert spec["null_rate"] == pytest.approx(_missing(whole.column(name)) / 12_000)
        assert spec["sample_null_rate"] == pytest.approx(_missing(column) / 3_000)
        if spec["kind"] == "numeric":
            values = np.array([v for v in column.to_pylist() if v is not None], float)
            values = values[np.isfinite(values)]
            assert list(spec["quantiles"]) == [f"{q:g}" for q in QUANTILES]
            np.testing.assert_allclose(
                list(spec["quantiles"].values()), np.quantile(values, QUANTILES)
            )
            assert spec["quantiles"]["0"] == values.min() and spec["quantiles"]["1"] == values.max()
            assert sum(spec["histogram"]["counts"]) == values.size
            assert len(spec["histogram"]["edges"]) == len(spec["histogram"]["counts"]) + 1
            assert spec["mean"] == pytest.approx(values.mean())
            assert spec["std"] == pytest.approx(values.std(ddof=1))
        else:
            counts = Counter(v for v in column.to_pylist() if v is not None)
            total = sum(counts.values())
            assert {c["value"]: c["share"] for c in spec["categories"]} == pytest.approx(
                {value: count / total for value, count in counts.items()}
            )
            shares = [c["share"] for c in spec["categories"]]
            assert shares == sorted(shares, reverse=True)
            assert spec["other_share"] == pytest.approx(0.0, abs=1e-12)

    stored = get_baseline(settings, f"service:{SERVICE}", "latest")
    assert stored == built  # the profile round-trips through SQL as built


def test_sample_is_seeded_and_streamed_by_row_groups(settings, tmp_path: Path, monkeypatch) -> None:
    """Many row groups, batches smaller than a row group, no statistics in the metadata (null
    rates counted while streaming): still exactly the oracle's rows and rates."""
    path = tmp_path / "exports" / "small-groups.parquet"
    write_export(path, 5_000, seed=2, row_group_size=700, statistics=False)
    monkeypatch.setattr(baseline_module, "READ_BATCH_ROWS", 300)
    first = build_baseline(settings, path, sample_rows=800, seed=1)
    again = build_baseline(settings, path, sample_rows=800, seed=1)
    other = build_baseline(settings, path, sample_rows=800, seed=2)
    everything = build_baseline(settings, path, sample_rows=50_000)

    assert _same(first.sample(), _oracle_sample(path, 800, 1, FEATURES))
    assert _same(first.sample(), again.sample())
    assert not _same(first.sample(), other.sample())
    assert everything.sample_rows == 5_000
    assert _same(everything.sample(), pq.read_table(path, columns=FEATURES))
    whole = pq.read_table(path, columns=FEATURES)
    for name in FEATURES:
        assert first.profile[name]["null_rate"] == pytest.approx(
            _missing(whole.column(name)) / 5_000
        )
    assert [b.version for b in (first, again, other, everything)] == [1, 2, 3, 4]


def test_a_million_row_export_is_never_read_whole(settings, tmp_path: Path) -> None:
    """Peak Arrow memory while a baseline of a 1M-row export is built (counted by a pool of its
    own) stays a fraction of what the export takes in memory: a row group or two at a time."""
    path = tmp_path / "big.parquet"
    write_export(path, 1_000_000, seed=3, row_group_size=131_072)
    whole_bytes = pq.read_table(path, columns=FEATURES).nbytes
    before = pa.default_memory_pool()
    counted = pa.proxy_memory_pool(before)
    pa.set_memory_pool(counted)
    try:
        built = build_baseline(settings, path, sample_rows=20_000)
    finally:
        pa.set_memory_pool(before)
    assert (built.rows, built.sample_rows) == (1_000_000, 20_000)
    assert 0 < counted.max_memory() < whole_bytes / 3, (counted.max_memory(), whole_bytes)


# -- subjects ------------------------------------------------------------------------------------


def test_feature_view_baseline_holds_that_views_features(settings, export_file: Path) -> None:
    built = build_baseline(settings, export_file, feature_view="card_profile", sample_rows=500)
    assert built.subject == "view:card_profile"
    assert built.sample_path.name == "view__card_profile-v1.parquet"
    assert built.references == {
        "credit_limit": "card_profile:credit_limit",
        "home_country": "card_profile:home_country",
        "card_tier": "card_profile:card_tier",
    }
    assert built.sample().column_names == ["credit_limit", "home_country", "card_tier"]
    with pytest.raises(BaselineError, match="has no feature of feature view 'card_profil'"):
        build_baseline(settings, export_file, feature_view="card_profil")


def test_export_of_a_feature_list_needs_a_feature_view(settings, tmp_path: Path) -> None:
    path = tmp_path / "listed.parquet"
    write_export(path, 1_000, service=None)
    with pytest.raises(BaselineError, match=f"export {path} was built from a list of features"):
        build_baseline(settings, path)
    assert build_baseline(settings, path, feature_view="card_profile").subject == (
        "view:card_profile"
    )


def test_files_that_are_not_exports_are_named(settings, tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="export file .*absent.parquet does not exist"):
        build_baseline(settings, tmp_path / "absent.parquet")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(Exception, match="is not a featurestore export"):
        build_baseline(settings, plain)
    assert not settings.baselines_dir.exists() or not list(settings.baselines_dir.iterdir())


# -- with the model ------------------------------------------------------------------------------


def test_model_baseline_holds_the_models_scores(settings, export_file: Path, model_file) -> None:
    settings.exports_dir.mkdir(parents=True)
    (settings.exports_dir / "not-an-export.parquet").write_bytes(b"junk")
    (settings.exports_dir / "training.parquet").symlink_to(export_file)
    built = baseline_for_model(settings, model_file, sample_rows=2_000)

    assert built.subject == f"service:{SERVICE}"
    assert built.export_path == (settings.exports_dir / "training.parquet").absolute()
    assert built.model_path == model_file.absolute()
    assert built.references == REFERENCES | {"score": "score"}
    sample = built.sample()
    rows = _oracle_sample(export_file, 2_000, 0, FEATURES)
    expected = load_model(model_file).score(rows)
    np.testing.assert_array_equal(sample.column("score").to_numpy(), expected)
    score = built.profile["score"]
    assert (score["kind"], score["dtype"], score["null_rate"]) == ("numeric", "float", 0.0)
    assert 0.0 <= score["quantiles"]["0"] <= score["quantiles"]["1"] <= 1.0


def test_model_of_another_export_is_refused(settings, tmp_path: Path, model_file) -> None:
    other = tmp_path / "other.parquet"
    other_id = write_export(other, 1_000, seed=9)
    trained_on = load_model(model_file).export_id
    with pytest.raises(
        BaselineError, match=f"trained on export '{trained_on}', but .* is export '{other_id}'"
    ):
        build_baseline(settings, other, model_path=model_file)
    with pytest.raises(BaselineError, match="a feature-view baseline .* has no model score"):
        build_baseline(settings, other, feature_view="card_profile", model_path=model_file)
    settings.exports_dir.mkdir(parents=True)
    (settings.exports_dir / "other.parquet").symlink_to(other)
    with pytest.raises(
        BaselineError, match=rf"not among the 1 export\(s\) in {settings.exports_dir}"
    ):
        baseline_for_model(settings, model_file)


# -- versions ------------------------------------------------------------------------------------


def test_versions_get_and_list(settings, export_file: Path) -> None:
    first = build_baseline(settings, export_file, sample_rows=200)
    second = build_baseline(settings, export_file, sample_rows=300, seed=1)
    view = build_baseline(settings, export_file, feature_view="card_profile", sample_rows=100)
    subject = f"service:{SERVICE}"

    assert get_baseline(settings, subject, "latest") == second
    assert get_baseline(settings, subject, 1) == first
    assert get_baseline(settings, "view:card_profile", "latest") == view
    assert get_baseline(settings, subject, 1).created_at.tzinfo is not None
    with pytest.raises(BaselineError, match=rf"no baseline {subject} v7; its versions: \[1, 2\]"):
        get_baseline(settings, subject, 7)
    with pytest.raises(BaselineError, match="no baseline of view:nothing yet"):
        get_baseline(settings, "view:nothing", "latest")
    assert list_baselines(settings) == [first, second, view]
    assert list_baselines(settings, "view:card_profile") == [view]
    with pytest.raises(BaselineError, match=r"has no column \['nope'\]"):
        first.sample(["card_tier", "nope"])


def _concurrent_builds(settings, export_file: Path, builders: int) -> list:
    results: list = [None] * builders
    start = threading.Barrier(builders)
    # Tables created first: featurestore.db.engine's create_all is not safe against concurrent
    # first use (two creators both see the table missing); the race tested here is the version.
    db.engine(settings)

    def build(index: int) -> None:
        start.wait()
        results[index] = build_baseline(settings, export_file, sample_rows=400, seed=index)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(builders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _check_concurrent(results: list, settings, export_file: Path) -> None:
    assert all(results), results  # every builder stored its baseline
    assert sorted(b.version for b in results) == list(range(1, len(results) + 1))
    for seed, built in enumerate(results):
        # Each version's file holds that builder's sample, not a competitor's.
        assert _same(built.sample(), _oracle_sample(export_file, 400, seed, FEATURES))
        assert get_baseline(settings, built.subject, built.version) == built
    leftovers = [p.name for p in settings.baselines_dir.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_concurrent_builders_take_successive_versions_sqlite(settings, export_file: Path) -> None:
    _check_concurrent(_concurrent_builds(settings, export_file, 4), settings, export_file)


@pytest.fixture
def postgres_export(configure, tmp_path: Path):
    """Settings on the test PostgreSQL, and an export of a service no other test uses."""
    settings = configure(database_url=POSTGRES_URL)
    service = f"svc_{uuid.uuid4().hex[:10]}"
    path = tmp_path / "exports" / "pg.parquet"
    write_export(path, 3_000, seed=4, service=service)
    yield settings, path, f"service:{service}"
    with db.engine(settings).begin() as conn:
        conn.execute(sa.delete(BASELINES).where(BASELINES.c.subject == f"service:{service}"))


def test_postgresql_stores_versions_of_concurrent_builders(postgres_export) -> None:
    settings, path, subject = postgres_export
    assert db.engine(settings).dialect.name == "postgresql"
    results = _concurrent_builds(settings, path, 4)
    _check_concurrent(results, settings, path)
    assert [b.version for b in list_baselines(settings, subject)] == [1, 2, 3, 4]
    latest = get_baseline(settings, subject, "latest")
    assert latest.version == 4 and latest.created_at.tzinfo is not None
    assert latest.profile["home_country"]["kind"] == "categorical"
    assert list(latest.profile) == FEATURES  # column order survives PostgreSQL's JSON


def test_null_rate_counts_nan_like_the_export_statistics(settings, export_file: Path) -> None:
    built = build_baseline(settings, export_file, sample_rows=100)
    whole = pq.read_table(export_file, columns=["amount_to_card_mean_24h"]).column(0)
    nan = pc.sum(pc.is_nan(whole.drop_null())).as_py()
    assert nan > 0
    assert built.profile["amount_to_card_mean_24h"]["null_rate"] == pytest.approx(
        (whole.null_count + nan) / 12_000
    )


def test_names_the_tables_cannot_hold_are_refused_at_build(
    settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_name = "card_profile:" + "x" * 300  # monitor_run_features.feature holds 300
    monkeypatch.setitem(REFERENCES, FEATURES[0], long_name)
    path = tmp_path / "long.parquet"
    write_export(path, 200)
    with pytest.raises(BaselineError, match=r"the feature 'card_profile:xxx.*is 313 characters, "
                                            r"more than the 300 of monitor_run_features.feature"):
        build_baseline(settings, path)
    monkeypatch.setitem(REFERENCES, FEATURES[0], "card_profile:a\x00b")
    write_export(path, 200)
    with pytest.raises(BaselineError, match="holds a NUL character"):
        build_baseline(settings, path)
    assert list_baselines(settings) == []  # nothing stored
