"""`featurestore monitors ...`: bad input is one line naming the problem and exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featurestore.cli import app


@pytest.fixture
def repo(configure, tmp_path, monkeypatch):
    from featurestore.feast_config import apply

    monkeypatch.setenv("FEATURESTORE_MONITORS_CONFIG", str(tmp_path / "monitors.yaml"))
    settings = configure()
    apply(settings)
    return settings


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_check_names_the_bad_field(repo) -> None:
    repo.monitors_config.write_text(
        "monitors:\n  m:\n    feature_view: card_transaction_features\n"
        "    window: {rows: 0}\n    rules: [{kind: feature_drift}]\n"
    )
    result = _run("monitors", "check")
    assert result.exit_code == 2
    assert "monitors.m.window.rows: Input should be greater than 0" in result.output


def test_check_accepts_a_good_file(repo) -> None:
    repo.monitors_config.write_text(
        "monitors:\n  m:\n    feature_view: card_transaction_features\n"
        "    window: {minutes: 5}\n    rules: [{kind: feature_drift}]\n"
    )
    result = _run("monitors", "check")
    assert result.exit_code == 0, result.output
    assert "1 monitors, ok" in result.output


def test_run_without_a_baseline_fails_naming_the_subject(repo, kafka_bootstrap) -> None:
    repo.monitors_config.write_text(
        "monitors:\n  m:\n    feature_view: card_transaction_features\n"
        "    window: {rows: 100}\n    rules: [{kind: feature_drift}]\n"
    )
    result = CliRunner(env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}).invoke(
        app, ["monitors", "run", "--once"]
    )
    assert result.exit_code == 1
    assert "monitor m failed" in result.output
    assert "view:card_transaction_features" in result.output


def test_baseline_needs_an_export_or_a_model(repo) -> None:
    result = _run("monitors", "baseline")
    assert result.exit_code == 2
    assert "give --export FILE, --model FILE, or both" in result.output


def test_baseline_of_a_file_that_is_not_an_export(repo, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    result = _run("monitors", "baseline", "--export", str(tmp_path / "plain.parquet"))
    assert result.exit_code == 2
    assert "plain.parquet" in result.output
