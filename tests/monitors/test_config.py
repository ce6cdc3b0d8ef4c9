"""The monitors file: every problem is reported with the field that holds it."""

from __future__ import annotations

import textwrap

import pytest

from monitors.config import (
    CONFIG_VALID,
    MonitorConfigError,
    MonitorsConfigSource,
    check_names,
    check_secrets,
    parse_monitors,
)

GOOD = """
interval_seconds: 10
notifiers:
  oncall:
    type: pagerduty
    routing_key_env: TEST_PD_KEY
  chat:
    type: slack
    webhook_url_env: TEST_SLACK_URL
monitors:
  fraud:
    feature_service: fraud_detection_v1
    features: [card_transaction_features:card_txn_count_1h]
    score: true
    window: {rows: 5000}
    drift:
      methods: {card_transaction_features:card_txn_count_1h: psi}
      multivariate: {permutations: 100}
    rules:
      - {kind: feature_drift, consecutive: 2}
      - {kind: drift_share, at_least: 0.5, severity: critical}
      - {kind: multivariate}
      - {kind: freshness, feature_view: card_transaction_features, max_age_minutes: 30}
      - {kind: null_rate, jump: 0.1}
    notify: [oncall, chat]
"""


def _with(change: str) -> str:
    return GOOD + textwrap.dedent(change)


def test_a_good_file_parses_with_defaults() -> None:
    config = parse_monitors(GOOD)
    fraud = config.monitors["fraud"]
    assert fraud.subject == "service:fraud_detection_v1"
    assert fraud.window.rows == 5000 and fraud.window.min_rows == 100
    assert fraud.auto_resolve_after == 3 and fraud.baseline == "latest"
    assert [r.kind for r in fraud.rules] == [
        "feature_drift", "drift_share", "multivariate", "freshness", "null_rate",
        "monitor_health",  # on by default
    ]
    assert config.notifiers["oncall"].url == "https://events.pagerduty.com/v2/enqueue"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("rows: 5000", "rows: 0"), "monitors.fraud.window.rows: Input should be greater than 0"),
        (GOOD.replace("{rows: 5000}", "{rows: 5000, minutes: 5}"), "monitors.fraud.window: set exactly one of rows"),
        (GOOD.replace("at_least: 0.5", "at_least: 1.5"), "monitors.fraud.rules.1.at_least"),
        (GOOD.replace("kind: null_rate", "kind: nul_rate"), "monitors.fraud.rules.4"),
        (GOOD.replace("psi}", "kolmogorov}"), "unknown method 'kolmogorov'"),
        (GOOD.replace("notify: [oncall, chat]", "notify: [oncall, pager]"),
         "monitors.fraud.notify: unknown notifier 'pager'"),
        (GOOD.replace("    score: true\n", "    score: true\n    feature_view: x\n"),
         "monitors.fraud: set exactly one of feature_service or feature_view"),
        (GOOD.replace("type: slack", "type: teams"), "notifiers.chat"),
        (GOOD.replace("routing_key_env: TEST_PD_KEY", "routing_key: abc"),
         "notifiers.oncall.routing_key_env: Field required"),
        (GOOD.replace("      multivariate: {permutations: 100}\n", ""),
         "rules: a multivariate rule needs drift.multivariate"),
        (GOOD.replace("window: {rows: 5000}", "windw: {rows: 5000}"), "monitors.fraud.windw: Extra inputs"),
        ("monitors: [", "not valid YAML"),
        ("", "monitors: Field required"),
    ],
)
def test_bad_files_name_the_field(text: str, message: str) -> None:
    with pytest.raises(MonitorConfigError, match="^monitors.yaml: ") as error:
        parse_monitors(text)
    assert message in str(error.value)


@pytest.fixture
def registry(configure):
    """feature_repo/ applied to a fresh registry."""
    from featurestore.feast_config import apply

    return apply(configure())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("feature_service: fraud_detection_v1", "feature_service: fraud_v9",
         "monitors.fraud.feature_service: unknown feature service 'fraud_v9'"),
        ("[card_transaction_features:card_txn_count_1h]", "[card_transaction_features:nope]",
         "monitors.fraud.features: 'card_transaction_features:nope' is not a feature"),
        ("{card_transaction_features:card_txn_count_1h: psi}",
         "{card_transaction_features:card_amount_sum_24h: psi}",
         ("monitors.fraud.drift.methods: 'card_transaction_features:card_amount_sum_24h' is "
          "not checked")),
        ("feature_view: card_transaction_features, max", "feature_view: cards, max",
         "freshness feature_view 'cards' is unknown"),
    ],
)
def test_names_are_checked_against_the_registry(registry, old: str, new: str,
                                                message: str) -> None:
    check_names(parse_monitors(GOOD), registry)
    with pytest.raises(MonitorConfigError) as error:
        check_names(parse_monitors(GOOD.replace(old, new)), registry)
    assert message in str(error.value)


def test_missing_secrets_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_monitors(GOOD)
    monkeypatch.setenv("TEST_PD_KEY", "routing-key")
    monkeypatch.delenv("TEST_SLACK_URL", raising=False)
    with pytest.raises(MonitorConfigError, match="notifiers.chat.webhook_url_env: the "
                       "environment variable TEST_SLACK_URL is not set"):
        check_secrets(config)
    monkeypatch.setenv("TEST_SLACK_URL", "https://hooks.example/T0")
    check_secrets(config)


def test_the_repository_monitors_file_is_valid(registry) -> None:
    from featurestore.settings import PROJECT_ROOT
    from monitors.config import load_monitors

    config = load_monitors(PROJECT_ROOT / "monitors.yaml", registry)
    assert {"fraud_scoring", "card_stream"} <= set(config.monitors)


def test_a_missing_file_says_where_it_looked(tmp_path) -> None:
    from monitors.config import load_monitors

    with pytest.raises(MonitorConfigError, match=f"no monitors file at {tmp_path}/absent.yaml"):
        load_monitors(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("change", "message"), [
    ("    features: [card_transaction_features:" + "x" * 300 + "]\n",
     ("monitors.fraud.features: 'card_transaction_features:xxxxxxxxxxxxxx'... is 326 "
     "characters, more than the 300 of monitor_run_features.feature")),
    ("    features: [\"card_transaction_features:a\\0b\"]\n",
     "monitors.fraud.features: 'card_transaction_features:a\\x00b' holds a NUL character"),
])
def test_inputs_the_tables_cannot_hold_are_refused_at_load(change: str, message: str) -> None:
    text = GOOD.replace(
        "    features: [card_transaction_features:card_txn_count_1h]\n", change
    ).replace("methods: {card_transaction_features:card_txn_count_1h: psi}", "methods: {}")
    with pytest.raises(MonitorConfigError) as caught:
        parse_monitors(text)
    assert message in str(caught.value)
    long_monitor = GOOD.replace("  fraud:\n", "  " + "m" * 201 + ":\n")
    with pytest.raises(MonitorConfigError, match="more than the 200 of monitor_runs.monitor"):
        parse_monitors(long_monitor)


def test_the_health_rule_is_on_by_default_and_can_be_turned_off() -> None:
    assert parse_monitors(GOOD).monitors["fraud"].health.after_failures == 3
    off = GOOD.replace("      - {kind: null_rate, jump: 0.1}\n",
                       "      - {kind: null_rate, jump: 0.1}\n"
                       "      - {kind: monitor_health, enabled: false}\n")
    assert parse_monitors(off).monitors["fraud"].health is None
    twice = off.replace("enabled: false}", "enabled: false}\n      - {kind: monitor_health}")
    with pytest.raises(MonitorConfigError, match="at most one monitor_health rule"):
        parse_monitors(twice)


def test_one_version_in_use_reloaded_on_change_and_kept_over_invalid_edits(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "monitors.yaml"
    source = MonitorsConfigSource(path)
    with pytest.raises(MonitorConfigError, match="no monitors file at"):
        source.current()  # never valid: nothing to fall back on
    path.write_text("monitors: {}\n")
    with pytest.raises(MonitorConfigError, match="monitors"):
        source.current()
    path.write_text(GOOD)
    first = source.current()
    assert source.current() is first and source.error is None  # unchanged: not read again
    path.write_text(GOOD.replace("interval_seconds: 10", "interval_seconds: 20"))
    assert source.current().interval_seconds == 20  # reloaded on change
    with caplog.at_level("ERROR", logger="monitors.config"):
        path.write_text(GOOD.replace("{rows: 5000}", "{rows: 0}"))
        kept = source.current()
        assert kept.interval_seconds == 20  # the last valid version stays in use
        assert source.current() is kept
    assert "monitors.fraud.window.rows" in source.error
    assert CONFIG_VALID._value.get() == 0
    assert [r.getMessage() for r in caplog.records if "not valid" in r.getMessage()] == [
        ("the monitors file changed but is not valid; the last valid version stays in use "
        f"until it is fixed: {source.error}")
    ]  # once per edit, not once per reading
    path.unlink()
    assert source.current() is kept and "no monitors file" in source.error
    path.write_text(GOOD)
    assert source.current().interval_seconds == 10 and source.error is None
    assert CONFIG_VALID._value.get() == 1
