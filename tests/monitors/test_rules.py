"""Alert rules against a naive oracle on random run histories."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitors.config import parse_monitors
from monitors.rules import (
    CHECKED,
    CLEAN,
    DIRTY,
    FIRED,
    TOO_FEW_ROWS,
    UNJUDGED,
    ColumnOutcome,
    OpenAlert,
    RunOutcome,
    damp,
    evaluate,
)

FEATURES = ("v:a", "v:b", "v:c")
END = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _monitor(rules: str):
    text = f"""
monitors:
  m:
    feature_view: v
    window: {{rows: 100}}
    drift: {{multivariate: {{}}}}
    rules: {rules}
"""
    return parse_monitors(text).monitors["m"]


def _run(rng: np.random.Generator, run_id: int) -> RunOutcome:
    status = CHECKED if rng.random() < 0.85 else TOO_FEW_ROWS
    columns = {}
    if status == CHECKED:
        for feature in FEATURES:
            ref_nulls = float(rng.choice([0.0, 0.05]))
            columns[feature] = ColumnOutcome(
                drifted=bool(rng.random() < 0.5), method="wasserstein",
                statistic=float(rng.random()), threshold=0.1, reference_null_rate=ref_nulls,
                current_null_rate=float(rng.choice([0.0, 0.05, 0.2, 0.5])),
            )
    newest = {}
    if rng.random() < 0.8:
        newest["v"] = END - timedelta(minutes=float(rng.integers(0, 60)))
    p_value = float(rng.random()) if status == CHECKED else None
    return RunOutcome(
        run_id=run_id, status=status, window_end=END, current_rows=500, columns=columns,
        multivariate_p_value=p_value,
        multivariate_drifted=None if p_value is None else p_value < 0.05,
        newest_events=newest,
    )


def _oracle(history: list[RunOutcome], k: int, share: float, jump: float,
            max_age: float) -> set[tuple[str, str]]:
    fired = set()
    latest = history[-1]
    checked = [run for run in history if run.status == CHECKED]
    if latest.status == CHECKED:
        if len(checked) >= k:
            for feature in FEATURES:
                if all(run.columns[feature].drifted for run in checked[-k:]):
                    fired.add(("feature_drift", feature))
        drifted = sum(c.drifted for c in latest.columns.values())
        if drifted / len(FEATURES) >= share:
            fired.add(("drift_share", "dataset"))
        if latest.multivariate_drifted:
            fired.add(("multivariate", "joint"))
        for feature, c in latest.columns.items():
            if c.current_null_rate - c.reference_null_rate >= jump:
                fired.add(("null_rate", feature))
    newest = latest.newest_events.get("v")
    if newest is None or (END - newest) > timedelta(minutes=max_age):
        fired.add(("freshness", "v"))
    return fired


@pytest.mark.parametrize("seed", range(40))
def test_rules_match_the_oracle_on_random_histories(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 4))
    share, jump, max_age = float(rng.choice([0.34, 0.67, 1.0])), 0.1, 30.0
    monitor = _monitor(
        f"[{{kind: feature_drift, consecutive: {k}}}, {{kind: drift_share, at_least: {share}}},"
        f" {{kind: multivariate}}, {{kind: null_rate, jump: {jump}}},"
        f" {{kind: freshness, feature_view: v, max_age_minutes: {max_age}}}]"
    )
    history = [_run(rng, i) for i in range(int(rng.integers(1, 8)))]
    evaluation = evaluate("m", monitor, history)
    assert {(f.rule, f.target) for f in evaluation.firing} == _oracle(
        history, k, share, jump, max_age
    )
    expected = {"freshness"} | (
        {"feature_drift", "drift_share", "multivariate", "null_rate"}
        if history[-1].status == CHECKED else set()
    )
    assert evaluation.judged == expected


def test_a_too_small_window_breaks_no_streak_and_judges_only_freshness() -> None:
    drifted = {"v:a": ColumnOutcome(True, "ks", 0.001, 0.05, 0.0, 0.0)}
    runs = [
        RunOutcome(1, CHECKED, END, 500, drifted, newest_events={"v": END}),
        RunOutcome(2, TOO_FEW_ROWS, END, 3, newest_events={"v": END}),
        RunOutcome(3, CHECKED, END, 500, drifted, newest_events={"v": END}),
    ]
    monitor = _monitor("[{kind: feature_drift, consecutive: 2}]")
    assert [f.target for f in evaluate("m", monitor, runs).firing] == ["v:a"]
    assert evaluate("m", monitor, runs[:2]).judged == {"freshness"}


def test_the_most_severe_of_two_rules_of_a_kind_speaks_for_the_key() -> None:
    drifted = {"v:a": ColumnOutcome(True, "ks", 0.001, 0.05, 0.0, 0.0)}
    runs = [RunOutcome(i, CHECKED, END, 500, drifted) for i in range(3)]
    monitor = _monitor(
        "[{kind: feature_drift, consecutive: 1, severity: warning},"
        " {kind: feature_drift, consecutive: 3, severity: critical}]"
    )
    fired = evaluate("m", monitor, runs).firing
    assert [(f.target, f.severity) for f in fired] == [("v:a", "critical")]
    assert fired[0].dedup_key("m") == "m/feature_drift/v:a"
    assert "3 windows in a row" in fired[0].summary


# -- flap damping ------------------------------------------------------------------------------

VERDICTS = (FIRED, DIRTY, CLEAN, UNJUDGED)


def _lifecycle(verdicts, auto_resolve_after: int, min_open_windows: int) -> list[str | None]:
    """What `damp` makes of a condition's verdicts: per window, trigger / resolve / None."""
    events, state = [], None
    for verdict in verdicts:
        if state is None:
            state = OpenAlert() if verdict == FIRED else None
            events.append("trigger" if state else None)
            continue
        state, resolves = damp(state, verdict, auto_resolve_after=auto_resolve_after,
                               min_open_windows=min_open_windows)
        events.append("resolve" if resolves else None)
        state = None if resolves else state
    return events


def _damping_oracle(verdicts, auto_resolve_after: int, min_open_windows: int) -> list[str | None]:
    """The rules restated over the whole history since the alert opened, window by window."""
    events, opened_at = [], None
    for now, verdict in enumerate(verdicts):
        if opened_at is None:
            opened_at = now if verdict == FIRED else None
            events.append("trigger" if verdict == FIRED else None)
            continue
        judged = [v for v in verdicts[opened_at:now + 1] if v != UNJUDGED]
        trailing_clean = len(judged) - len("".join(
            "c" if v == CLEAN else "x" for v in judged).rstrip("c"))
        # A flap: firing again right after a clean window (dirty ones reset the clean run).
        flaps = sum(a == CLEAN and b == FIRED for a, b in itertools.pairwise(judged))
        needed = auto_resolve_after * 2 ** min(flaps, 3)
        if (verdict == CLEAN and trailing_clean >= needed
                and len(judged) >= min_open_windows):
            events.append("resolve")
            opened_at = None
        else:
            events.append(None)
    return events


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    verdicts=st.lists(st.sampled_from(VERDICTS), max_size=80),
    auto_resolve_after=st.integers(1, 5) | st.just(2**62),  # huge: past any 64-bit product
    min_open_windows=st.integers(1, 8) | st.just(2**63 - 1),
)
def test_flap_damping_matches_the_oracle(verdicts, auto_resolve_after, min_open_windows) -> None:
    assert _lifecycle(verdicts, auto_resolve_after, min_open_windows) == _damping_oracle(
        verdicts, auto_resolve_after, min_open_windows
    )


def test_flapping_every_window_pages_once() -> None:
    # The case: auto_resolve_after 1, drifted / clean in turn for 20 windows.
    events = _lifecycle([FIRED, CLEAN] * 10, 1, 3)
    assert events.count("trigger") == 1 and events.count("resolve") == 0
    # A drifted window that does not complete `consecutive` is not clean: DD then DC x4.
    monitor = _monitor("[{kind: feature_drift, consecutive: 2}]")
    drifted = [True, True] + [False, True] * 4
    history, verdicts = [], []
    for run_id, drift in enumerate(drifted):
        history.append(RunOutcome(
            run_id, CHECKED, END + timedelta(minutes=run_id), 100,
            {"v:a": ColumnOutcome(drift, "psi", 0.3, 0.1, 0.0, 0.0)},
        ))
        verdicts.append(evaluate("m", monitor, history).verdict("feature_drift", "v:a"))
    assert verdicts == [DIRTY, FIRED] + [CLEAN, DIRTY] * 4
    assert _lifecycle(verdicts, 3, 1).count("resolve") == 0
    # Clean for long enough, it resolves: after 3 x 2 clean windows (it flapped once).
    calm = [FIRED, CLEAN, FIRED] + [CLEAN] * 6
    assert _lifecycle(calm, 3, 1) == ["trigger"] + [None] * 7 + ["resolve"]
