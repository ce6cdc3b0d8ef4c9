"""Bad input: a clear error naming the problem, exit code 2, and nothing half-written."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from featurestore.cli import app
from tests.conftest import applied_example


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Path:
    """One `apply` for the module (it took most of each test's time). The registry holds the
    absolute paths of the data dir, so the tests share that dir; `repo` resets it."""
    root = tmp_path_factory.mktemp("cli-errors")
    applied_example(root)
    shutil.copytree(root / "data", root / "pristine")
    return root


@pytest.fixture
def repo(applied, monkeypatch):
    """The settings of a data dir as `apply` left it, as if each test had applied its own."""
    from featurestore.settings import get_settings

    data = applied / "data"
    shutil.rmtree(data)
    shutil.copytree(applied / "pristine", data)
    monkeypatch.setenv("FEATURESTORE_DATA_DIR", str(data))
    monkeypatch.setenv("FEATURESTORE_CONFIG", str(applied / "absent.yaml"))
    return get_settings()


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _assert_untouched(settings) -> None:
    offline = settings.offline_dir
    assert not offline.exists() or not any(offline.rglob("*.parquet")), "offline data written"
    assert not any(settings.data_dir.rglob("_staging-*")), "staging left behind"


def _raw_transactions(settings, day: date, table: pa.Table) -> None:
    path = settings.raw_dir / "transactions" / f"event_date={day}"
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-00000.parquet")


def _good_events(n: int = 3) -> pa.Table:
    moment = datetime(2026, 2, 1, 12, tzinfo=UTC)
    return pa.table(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": pa.array(range(n), pa.int64()),
            "merchant_id": pa.array(range(n), pa.int64()),
            "amount": [1.0] * n,
            "currency": ["EUR"] * n,
            "merchant_category": ["grocery"] * n,
            "country": ["DE"] * n,
            "channel": ["pos"] * n,
            "event_timestamp": pa.array([moment] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_missing_raw_data(repo) -> None:
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "transactions_raw" in result.output and "does not exist" in result.output
    _assert_untouched(repo)


def test_empty_parquet_file(repo) -> None:
    path = repo.raw_dir / "transactions" / "event_date=2026-02-01"
    path.mkdir(parents=True)
    (path / "part-00000.parquet").write_bytes(b"")
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "part-00000.parquet is not a readable Parquet file" in result.output
    _assert_untouched(repo)


def test_zero_rows(repo) -> None:
    _raw_transactions(repo, date(2026, 2, 1), _good_events().slice(0, 0))
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "are empty" in result.output
    _assert_untouched(repo)


def test_schema_mismatch(repo) -> None:
    events = _good_events()
    events = events.set_column(3, "amount", pa.array(["1.0"] * 3))
    _raw_transactions(repo, date(2026, 2, 1), events)
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "column 'amount'" in result.output and "expected double" in result.output
    _assert_untouched(repo)


def test_nanosecond_timestamps_are_named_before_spark_starts(repo) -> None:
    events = _good_events()
    events = events.set_column(
        8, "event_timestamp", events.column("event_timestamp").cast(pa.timestamp("ns", tz="UTC"))
    )
    _raw_transactions(repo, date(2026, 2, 1), events)
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "column 'event_timestamp'" in output and "nanosecond timestamps" in output
    assert "coerce_timestamps='us'" in output
    _assert_untouched(repo)


def test_missing_column(repo) -> None:
    _raw_transactions(repo, date(2026, 2, 1), _good_events().drop_columns(["merchant_id"]))
    result = _run("backfill", "--start", "2026-02-01", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "no column 'merchant_id'" in result.output
    _assert_untouched(repo)


@pytest.mark.parametrize("command", ["backfill", "materialize"])
def test_unknown_feature_view(repo, command) -> None:
    result = _run(command, "--start", "2026-02-01", "--end", "2026-02-02", "--view", "nope")
    assert result.exit_code == 2
    assert "['nope']" in result.output and "card_transaction_features" in result.output


@pytest.mark.parametrize("command", ["backfill", "materialize"])
def test_end_before_start(repo, command) -> None:
    _raw_transactions(repo, date(2026, 2, 1), _good_events())
    result = _run(command, "--start", "2026-02-02", "--end", "2026-02-01")
    assert result.exit_code == 2
    assert "must be after start" in result.output
    _assert_untouched(repo)


def test_unparseable_date(repo) -> None:
    result = _run("backfill", "--start", "yesterday", "--end", "2026-02-01")
    assert result.exit_code == 2
    assert "--start must be a day YYYY-MM-DD" in result.output


def test_materialize_without_offline_table(repo) -> None:
    result = _run("materialize", "--start", "2026-02-01", "--end", "2026-02-02", "--view", "card_transaction_features")
    assert result.exit_code == 2
    assert "card_transaction_features_offline" in result.output and "does not exist" in result.output


def test_materialize_needs_a_start(repo) -> None:
    result = _run("materialize", "--end", "2026-02-02")
    assert result.exit_code == 2
    assert "--start or --incremental" in result.output


def test_generator_rejects_bad_config(repo) -> None:
    result = _run("example", "generate", "--days", "0")
    assert result.exit_code == 2
    assert "days" in result.output


def test_incremental_with_nothing_new_is_not_an_error(repo) -> None:
    for view in ("card_transaction_features", "merchant_transaction_features"):
        (repo.offline_dir / view).mkdir(parents=True)
    (repo.raw_dir / "card_profiles").mkdir(parents=True)
    result = _run("materialize", "--incremental", "--end", "2026-02-02")
    assert result.exit_code == 0, result.output
    assert "read 0 rows" in result.output


_OTHER_REPO = '''
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Int64

user = Entity(name="user", join_keys=["user_id"])
users_raw = FileSource(name="users_raw", path="users", timestamp_field="event_timestamp")
users = FeatureView(name="users", entities=[user], source=users_raw, ttl=timedelta(days=1),
                    schema=[Field(name="user_id", dtype=Int64), Field(name="age", dtype=Int64)])
'''


def test_entities_on_a_repo_without_the_examples_sources(configure, tmp_path) -> None:
    from featurestore.feast_config import apply

    repo = tmp_path / "other_repo"
    repo.mkdir()
    (repo / "users.py").write_text(_OTHER_REPO)
    apply(configure(feature_repo=str(repo), project="other"))
    result = _run("example", "entities", "--start", "2026-02-01", "--end", "2026-02-02",
                  "--out", str(tmp_path / "entities.parquet"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "no data source 'transactions_raw' (it has: ['users_raw'])" in lines[0]
    assert not (tmp_path / "entities.parquet").exists()


def test_entities_from_nanosecond_times_microseconds_cannot_hold(repo, tmp_path) -> None:
    events = _good_events()
    nanos = pa.array([1_769_947_200_000_000_001] * 3, pa.timestamp("ns", tz="UTC"))
    _raw_transactions(repo, date(2026, 2, 1), events.set_column(8, "event_timestamp", nanos))
    out = tmp_path / "entities.parquet"
    result = _run("example", "entities", "--start", "2026-02-01", "--end", "2026-02-02",
                  "--out", str(out))
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "raw source 'transactions_raw'" in output and "would lose data" in output
    assert not out.exists()
