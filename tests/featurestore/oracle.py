"""A naive oracle of the window semantics: row by row, straight from the definition."""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd


def aggregate(function: str, values: list) -> object:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if function == "count":
        return len(present)
    if function == "count_distinct":
        return len(set(present))
    if function == "max":
        return max(present) if present else None
    if function == "min":
        return min(present) if present else None
    units = sum(math.floor(v * 1_000_000 + 0.5) for v in present)
    if function == "sum":
        return units / 1_000_000 if present else None
    return (units / 1_000_000) / len(present) if present else None


def feature_rows(raw: pd.DataFrame, view, start: datetime, end: datetime) -> pd.DataFrame:
    """For each event in [start, end), aggregate its key's events in (t - w, t]."""
    key = view.join_keys[0].name
    rows = []
    for _, events in raw.groupby(key):
        for t in events["event_timestamp"].tolist():
            if not (start <= t < end):
                continue
            row = {key: events[key].iloc[0], "event_timestamp": t}
            for agg in view.aggregations:
                inside = events[
                    (events["event_timestamp"] > t - agg.window) & (events["event_timestamp"] <= t)
                ]
                row[agg.name] = aggregate(agg.function, inside[agg.column].tolist())
            rows.append(row)
    return pd.DataFrame(rows)
