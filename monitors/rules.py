"""Alert rules: which conditions fire after a window, from the monitor's recent runs (pure).

`evaluate(monitor, history)` looks at the runs of one monitor, oldest first, the newest last, and
returns what fires now, plus which rules could be judged at all: a window too small to test
says nothing about drift or null rates (an open alert of those rules neither fires nor counts a
clean window), while freshness is judged on every window, empty ones included.

`damp` moves one open alert on by one window's verdict (flap damping): it resolves after
`auto_resolve_after` clean windows in a row, and only once it has been open `min_open_windows`
judged windows; a window where its feature drifted without completing `consecutive` windows in a
row is not clean; each time it fires again after a clean window (a flap), the clean windows it
needs double, up to 2^MAX_FLAP_DOUBLINGS times `auto_resolve_after`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitors.config import (
    SCORE_COLUMN,
    DriftShareRule,
    FeatureDriftRule,
    FreshnessRule,
    MonitorConfig,
    MultivariateRule,
    NullRateRule,
)

CHECKED = "checked"
TOO_FEW_ROWS = "too_few_rows"
DATASET = "dataset"  # the target of dataset-wide rules
JOINT = "joint"  # the target of the multivariate rule


@dataclass(frozen=True)
class ColumnOutcome:
    drifted: bool
    method: str
    statistic: float
    threshold: float
    reference_null_rate: float
    current_null_rate: float


@dataclass(frozen=True)
class RunOutcome:
    """What the rules need of one stored run; `columns` by definition name (or `score`)."""

    run_id: int
    status: str  # CHECKED | TOO_FEW_ROWS
    window_end: datetime
    current_rows: int
    columns: dict[str, ColumnOutcome] = field(default_factory=dict)
    drift_share: float = 0.5  # the monitor's threshold when the run was made
    multivariate_p_value: float | None = None
    multivariate_drifted: bool | None = None
    newest_events: dict[str, datetime] = field(default_factory=dict)

    @property
    def drifted_share(self) -> float:
        if not self.columns:
            return 0.0
        return sum(c.drifted for c in self.columns.values()) / len(self.columns)


@dataclass(frozen=True)
class Firing:
    rule: str
    target: str  # a feature's definition name, a feature view, DATASET or JOINT
    severity: str
    summary: str
    details: dict

    def dedup_key(self, monitor: str) -> str:
        return f"{monitor}/{self.rule}/{self.target}"


FIRED, DIRTY, CLEAN, UNJUDGED = "fired", "dirty", "clean", "unjudged"  # window verdicts
MAX_FLAP_DOUBLINGS = 3


@dataclass(frozen=True)
class Evaluation:
    firing: list[Firing]
    judged: frozenset[str]  # rule kinds this window could judge
    # (rule, target) that showed their condition without firing: a feature that drifted in a
    # window not (yet) `consecutive` in a row.
    symptoms: frozenset[tuple[str, str]] = frozenset()

    def verdict(self, rule: str, target: str) -> str:
        """What this window says of the condition (rule, target): FIRED, DIRTY, CLEAN or
        UNJUDGED."""
        if any(f.rule == rule and f.target == target for f in self.firing):
            return FIRED
        if rule not in self.judged:
            return UNJUDGED
        return DIRTY if (rule, target) in self.symptoms else CLEAN


@dataclass(frozen=True)
class OpenAlert:
    """The damping state of an open alert."""

    clean_windows: int = 0  # clean windows in a row
    open_windows: int = 1  # judged windows since it opened, the opening one included
    flaps: int = 0  # times it fired again after a clean window


def clean_windows_needed(auto_resolve_after: int, flaps: int) -> int:
    return auto_resolve_after * 2 ** min(flaps, MAX_FLAP_DOUBLINGS)


def damp(state: OpenAlert, verdict: str, *, auto_resolve_after: int,
         min_open_windows: int) -> tuple[OpenAlert, bool]:
    """The open alert after one window's `verdict`, and whether it resolves now."""
    if verdict == UNJUDGED:
        return state, False
    opened = state.open_windows + 1
    if verdict == FIRED:
        flaps = state.flaps + (state.clean_windows > 0)
        return OpenAlert(0, opened, flaps), False
    if verdict == DIRTY:
        return OpenAlert(0, opened, state.flaps), False
    clean = state.clean_windows + 1
    resolves = (clean >= clean_windows_needed(auto_resolve_after, state.flaps)
                and opened >= min_open_windows)
    return OpenAlert(clean, opened, state.flaps), resolves


def _feature_drift(rule: FeatureDriftRule, name: str, history: Sequence[RunOutcome]) -> list[Firing]:
    checked = [run for run in history if run.status == CHECKED][-rule.consecutive:]
    if len(checked) < rule.consecutive:
        return []
    latest = checked[-1]
    fired = []
    for feature, outcome in latest.columns.items():
        if all(feature in run.columns and run.columns[feature].drifted for run in checked):
            windows = "window" if rule.consecutive == 1 else f"{rule.consecutive} windows in a row"
            fired.append(Firing(
                "feature_drift", feature, rule.severity,
                f"[{name}] {feature} drifted in {windows} ({outcome.method} "
                f"{outcome.statistic:.4g}, threshold {outcome.threshold:.4g})",
                {"method": outcome.method, "statistic": outcome.statistic,
                 "threshold": outcome.threshold, "consecutive_windows": rule.consecutive,
                 "runs": [run.run_id for run in checked]},
            ))
    return fired


def _drift_share(rule: DriftShareRule, name: str, history: Sequence[RunOutcome]) -> list[Firing]:
    latest = history[-1]
    share = latest.drifted_share
    if share < rule.at_least:
        return []
    drifted = sorted(f for f, c in latest.columns.items() if c.drifted)
    return [Firing(
        "drift_share", DATASET, rule.severity,
        f"[{name}] {len(drifted)} of {len(latest.columns)} features drifted "
        f"({share:.0%} >= {rule.at_least:.0%})",
        {"drifted_share": share, "at_least": rule.at_least, "drifted_features": drifted},
    )]


def _multivariate(rule: MultivariateRule, name: str, history: Sequence[RunOutcome]) -> list[Firing]:
    latest = history[-1]
    if not latest.multivariate_drifted:
        return []
    return [Firing(
        "multivariate", JOINT, rule.severity,
        f"[{name}] the joint feature distribution drifted (MMD p-value "
        f"{latest.multivariate_p_value:.4g})",
        {"p_value": latest.multivariate_p_value},
    )]


def _freshness(rule: FreshnessRule, name: str, history: Sequence[RunOutcome]) -> list[Firing]:
    latest = history[-1]
    newest = latest.newest_events.get(rule.feature_view)
    limit = rule.max_age_minutes * 60
    if newest is not None and (latest.window_end - newest).total_seconds() <= limit:
        return []
    if newest is None:
        summary = f"[{name}] no row of {rule.feature_view} in the window ending {latest.window_end:%Y-%m-%d %H:%M:%S} UTC"
        age = None
    else:
        age = (latest.window_end - newest).total_seconds()
        summary = (f"[{name}] {rule.feature_view} is stale: newest event {age / 60:,.1f} min "
                   f"old, SLA {rule.max_age_minutes:g} min")
    return [Firing(
        "freshness", rule.feature_view, rule.severity, summary,
        {"newest_event": newest.isoformat() if newest else None, "age_seconds": age,
         "max_age_minutes": rule.max_age_minutes},
    )]


def _null_rate(rule: NullRateRule, name: str, history: Sequence[RunOutcome]) -> list[Firing]:
    latest = history[-1]
    fired = []
    for feature, outcome in latest.columns.items():
        if feature == SCORE_COLUMN:
            continue  # rows served by /v1/online-features are captured without a score

        jump = outcome.current_null_rate - outcome.reference_null_rate
        if jump >= rule.jump:
            fired.append(Firing(
                "null_rate", feature, rule.severity,
                f"[{name}] {feature} null rate {outcome.current_null_rate:.1%} vs "
                f"{outcome.reference_null_rate:.1%} in the baseline (+{jump:.1%})",
                {"current_null_rate": outcome.current_null_rate,
                 "reference_null_rate": outcome.reference_null_rate, "jump": rule.jump},
            ))
    return fired


# The firings of one rule (a `monitors.config` rule of the kind) after the newest run of the
# monitor's history (oldest first), for monitor `name`.
Fire = Callable[[Any, str, Sequence[RunOutcome]], list[Firing]]


@dataclass(frozen=True)
class RuleKind:
    fire: Fire
    # Judged on every window, too small to test included (freshness), rather than on checked
    # windows only (a window too small to test says nothing about drift or null rates).
    every_window: bool = False


# The rule kinds a window judges, by `kind` (each one a model of `monitors.config.Rule`); the
# `monitor_health` rule is judged by the worker's passes instead (`monitors.alerts.raise_health`).
RULE_KINDS: dict[str, RuleKind] = {
    "feature_drift": RuleKind(_feature_drift),
    "drift_share": RuleKind(_drift_share),
    "multivariate": RuleKind(_multivariate),
    "freshness": RuleKind(_freshness, every_window=True),
    "null_rate": RuleKind(_null_rate),
}


def evaluate(name: str, monitor: MonitorConfig, history: Sequence[RunOutcome]) -> Evaluation:
    """The conditions firing after the newest run in `history` (oldest first)."""
    latest = history[-1]
    judged = frozenset(kind for kind, rule_kind in RULE_KINDS.items()
                       if rule_kind.every_window or latest.status == CHECKED)
    symptoms: frozenset[tuple[str, str]] = frozenset()
    if latest.status == CHECKED:
        symptoms = frozenset(
            ("feature_drift", feature) for feature, c in latest.columns.items() if c.drifted
        )
    firing = [fired for rule in monitor.rules if rule.kind in judged
              for fired in RULE_KINDS[rule.kind].fire(rule, name, history)]
    return Evaluation(_strongest(firing), judged, symptoms)


SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def _strongest(firing: list[Firing]) -> list[Firing]:
    """One firing per (rule, target): two rules of one kind (say, warning at 1 window and
    critical at 3) share a dedup key, so the most severe one speaks for it."""
    best: dict[tuple[str, str], Firing] = {}
    for fired in firing:
        key = (fired.rule, fired.target)
        if key not in best or SEVERITY_RANK[fired.severity] < SEVERITY_RANK[best[key].severity]:
            best[key] = fired
    return list(best.values())
