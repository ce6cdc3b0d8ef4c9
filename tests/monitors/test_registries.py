"""The registries of rule kinds and notifier types name exactly the kinds the monitors file takes."""

from __future__ import annotations

import typing

import pytest

from monitors.config import MonitorConfigError, Notifier, Rule, parse_monitors
from monitors.notifiers import NOTIFIER_TYPES
from monitors.rules import RULE_KINDS


def _tags(union: object, field: str) -> set[str]:
    models = typing.get_args(typing.get_args(union)[0])
    return {typing.get_args(model.model_fields[field].annotation)[0] for model in models}


def test_every_rule_kind_of_the_config_but_monitor_health_is_judged_by_a_window() -> None:
    assert _tags(Rule, "kind") - {"monitor_health"} == set(RULE_KINDS)


def test_every_notifier_type_of_the_config_has_a_builder() -> None:
    assert _tags(Notifier, "type") == set(NOTIFIER_TYPES)


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(MonitorConfigError) as error:
        parse_monitors("""
notifiers:
  chat: {type: teams, url: "http://127.0.0.1:9"}
monitors:
  m: {feature_view: v, window: {rows: 10}, rules: [{kind: bogus}]}
""")
    message = str(error.value)
    for known in [*RULE_KINDS, *NOTIFIER_TYPES]:
        assert f"'{known}'" in message
