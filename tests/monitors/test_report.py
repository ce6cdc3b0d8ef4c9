"""Evidently's report of a window: what its JSON says, that the HTML is there, sampling,
declared kinds and per-column options."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from monitors.drift import check_drift
from monitors.report import EVIDENTLY_METHODS, ReportError, write_report
from monitors.stattests import METHODS

SHIFTED = ["amount", "tier"]
STEADY = ["count", "score", "country", "level"]


def _window(rng: np.random.Generator, rows: int, shifted: bool) -> pa.Table:
    """`amount` (numbers) and `tier` (categories) move in the shifted window; the rest do not."""
    tiers = ["standard", "gold", "platinum"]
    return pa.table(
        {
            "amount": rng.lognormal(3.0 + (0.8 if shifted else 0.0), 1.0, rows),
            "count": pa.array(rng.poisson(20, rows), mask=rng.random(rows) < 0.05),
            "score": rng.beta(1, 20, rows),
            "tier": rng.choice(tiers, rows, p=[0.2, 0.3, 0.5] if shifted else [0.6, 0.3, 0.1]),
            "country": rng.choice(["DE", "FR", "NL"], rows, p=[0.5, 0.3, 0.2]),
            "level": rng.integers(0, 4, rows),  # integers with few values: categorical
        }
    )


def _value_drifts(document: dict) -> dict[str, dict]:
    """column -> ValueDrift metric config and value, from Evidently's snapshot JSON."""
    found = {}
    for metric in document["metrics"]:
        if metric["config"]["type"] == "evidently:metric_v2:ValueDrift":
            found[metric["config"]["column"]] = metric["config"] | {"value": metric["value"]}
    return found


def _drift_tests(document: dict) -> dict[str, str]:
    """column -> status of Evidently's "Value Drift for column X" test (FAIL = drifted)."""
    prefix = "Value Drift for column "
    return {
        test["name"].removeprefix(prefix): test["status"]
        for test in document["tests"]
        if test["name"].startswith(prefix)
    }


@pytest.fixture(scope="module")
def windows() -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(21)
    return _window(rng, 3_000, False), _window(rng, 2_500, True)


def test_json_names_the_shifted_columns_drifted_and_the_html_shows_every_column(
    windows, tmp_path: Path
) -> None:
    reference, current = windows
    files = write_report(
        reference, current, methods={}, thresholds={}, drift_share=0.5, max_rows=10_000,
        out=tmp_path / "reports" / "run-1",
    )  # fmt: skip
    assert files.html == tmp_path / "reports" / "run-1.html"
    assert files.json == tmp_path / "reports" / "run-1.json"
    assert (files.reference_rows, files.current_rows) == (3_000, 2_500)
    document = json.loads(files.json.read_text())
    assert _drift_tests(document) == {
        **dict.fromkeys(SHIFTED, "FAIL"),
        **dict.fromkeys(STEADY, "SUCCESS"),
    }
    assert document["data_definition"] == {
        "numerical_columns": ["amount", "count", "score"],
        "categorical_columns": ["tier", "country", "level"],
    }
    # The same verdicts and statistics as the fast check on the same rows.
    fast = {c.column: c for c in check_drift(reference, current).columns}
    for column, drift in _value_drifts(document).items():
        assert drift["value"] == pytest.approx(fast[column].statistic, rel=1e-6, abs=1e-12)
        assert (_drift_tests(document)[column] == "FAIL") == fast[column].drifted
    html = files.html.read_text()
    assert all(column in html for column in SHIFTED + STEADY)
    assert not list(files.html.parent.glob(".*"))  # nothing staged left behind


def test_per_column_methods_and_thresholds_show_in_the_json(windows, tmp_path: Path) -> None:
    reference, current = windows
    files = write_report(
        reference, current,
        methods={"amount": "psi", "country": "chisquare", "level": "z"},
        thresholds={"amount": 5.0, "score": 0.2},
        drift_share=0.3, max_rows=10_000, out=tmp_path / "run",
    )  # fmt: skip
    document = json.loads(files.json.read_text())
    drifts = _value_drifts(document)
    assert (drifts["amount"]["method"], drifts["amount"]["threshold"]) == ("psi", 5.0)
    assert drifts["country"]["method"] == "chisquare"
    assert drifts["level"]["method"] == "z"
    assert drifts["score"]["threshold"] == 0.2
    assert drifts["tier"]["method"] == "Jensen-Shannon distance"  # Evidently's default
    # PSI of the shifted amounts stays under the raised threshold: not drifted any more.
    assert _drift_tests(document)["amount"] == "SUCCESS"
    count = next(m for m in document["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    assert count["config"]["drift_share"] == 0.3
    assert count["config"]["per_column_method"] == {
        "amount": "psi", "country": "chisquare", "level": "z",
    }  # fmt: skip


def test_every_method_maps_to_an_evidently_stattest() -> None:
    from evidently.legacy.calculations.stattests.registry import get_stattest

    assert set(EVIDENTLY_METHODS) == set(METHODS)
    for ours, theirs in EVIDENTLY_METHODS.items():
        method = METHODS[ours]
        for kind in method.kinds:
            feature_type = "num" if kind == "numeric" else "cat"
            assert (
                get_stattest(None, None, feature_type, theirs).display_name == method.display_name
            )


def test_big_windows_are_drawn_on_seeded_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(22)
    reference = _window(rng, 60_000, False)
    current = _window(rng, 200_000, True)
    # CPU seconds of this process: other processes on a loaded machine cannot add to them.
    began = time.process_time()
    first = write_report(
        reference, current, methods={}, thresholds={}, drift_share=0.5, max_rows=5_000,
        out=tmp_path / "a", seed=3,
    )  # fmt: skip
    seconds = time.process_time() - began
    again = write_report(
        reference, current, methods={}, thresholds={}, drift_share=0.5, max_rows=5_000,
        out=tmp_path / "b", seed=3,
    )  # fmt: skip
    assert (first.reference_rows, first.current_rows) == (5_000, 5_000)
    documents = [json.loads(f.json.read_text()) for f in (first, again)]
    assert documents[0]["sample"] == {
        "reference_rows": 5_000, "current_rows": 5_000, "max_rows": 5_000, "seed": 3,
    }  # fmt: skip
    assert _value_drifts(documents[0]) == _value_drifts(documents[1])  # same seed, same rows
    assert _drift_tests(documents[0]) == {
        **dict.fromkeys(SHIFTED, "FAIL"),
        **dict.fromkeys(STEADY, "SUCCESS"),
    }
    assert seconds < 15, seconds


def test_declared_kinds_override_inference(windows, tmp_path: Path) -> None:
    reference, current = windows
    files = write_report(
        reference.select(["level"]), current.select(["level"]), methods={}, thresholds={},
        drift_share=0.5, max_rows=10_000, out=tmp_path / "run", kinds={"level": "numeric"},
    )  # fmt: skip
    document = json.loads(files.json.read_text())
    assert document["data_definition"]["numerical_columns"] == ["level"]
    # Few distinct values, a numeric column, a large reference: Evidently's default is J-S.
    assert _value_drifts(document)["level"]["method"] == "Jensen-Shannon distance"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methods": {"tier": "ks"}}, "column 'tier': drift method 'ks' does not apply"),
        ({"methods": {"amount": "nope"}}, "unknown drift method 'nope'"),
        ({"methods": {"absent": "psi"}}, "methods: 'absent' is not a column"),
        ({"thresholds": {"absent": 0.1}}, r"thresholds name columns .*\['absent'\]"),
    ],
)
def test_bad_options_are_named(windows, tmp_path: Path, options: dict, message: str) -> None:
    reference, current = windows
    arguments = {"methods": {}, "thresholds": {}} | options
    with pytest.raises(ReportError, match=message):
        write_report(
            reference, current, drift_share=0.5, max_rows=100, out=tmp_path / "r", **arguments
        )
    assert not list(tmp_path.iterdir())


def test_free_text_is_refused_by_name(tmp_path: Path) -> None:
    text = pa.table({"note": [f"note {i}" for i in range(200)]})
    with pytest.raises(ReportError, match="column 'note': Evidently would check it as text"):
        write_report(
            text, text, methods={}, thresholds={}, drift_share=0.5, max_rows=100, out=tmp_path / "r"
        )
