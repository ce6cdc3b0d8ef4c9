"""The one reading of times users give (CLI options, API bodies): ISO-8601 in, UTC out.

Every time the store keeps is UTC and every day partition is a UTC day, so a time with an offset
is converted to UTC before anything looks at its date, and a time without one is UTC. Errors name
the option or field and what was given.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from featurestore.errors import InputDataError, RangeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FORMATS = "2026-01-31, 2026-01-31T12:00:00Z or 2026-01-31T07:00:00-05:00"


def assume_utc(moment: datetime) -> datetime:
    """Naive means UTC: `moment` with UTC attached when it has no zone, else as it is.

    For times read back from where we only ever write UTC (SQLite keeps no zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def to_utc(moment: datetime, name: str = "time") -> datetime:
    """`moment` as an aware UTC datetime (naive means UTC already)."""
    try:
        return assume_utc(moment).astimezone(UTC)
    except OverflowError:
        raise RangeError(
            f"{name} {moment.isoformat()} is outside years 1 to 9999 once converted to UTC"
        ) from None


def parse_time(value: str, name: str) -> datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InputDataError(
            f"{name} must be an ISO-8601 date or time ({_FORMATS}), got {value!r}"
        ) from None
    return to_utc(moment, name)


def parse_day(value: str, name: str) -> date:
    """A UTC day: YYYY-MM-DD, or a time that is midnight in UTC (2026-01-30T19:00:00-05:00)."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    try:
        moment = parse_time(value, name)
    except InputDataError:
        raise InputDataError(f"{name} must be a day YYYY-MM-DD (UTC), got {value!r}") from None
    if moment.timetz() != time(tzinfo=UTC):
        raise InputDataError(
            f"{name} must be a day YYYY-MM-DD (UTC); {value!r} is {moment.isoformat()} in UTC, "
            "not midnight"
        )
    return moment.date()


def utc_micros(values: list[object], name: str) -> list[int]:
    """Microseconds since the epoch of ISO-8601 strings (a column of an API body)."""
    micros = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise InputDataError(f"{name}[{row}] must be an ISO-8601 string, got {value!r}")
        micros.append((parse_time(value, f"{name}[{row}]") - _EPOCH) // timedelta(microseconds=1))
    return micros
