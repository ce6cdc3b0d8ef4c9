"""Every kind of bad event is rejected with its reason; good events come out typed."""

from __future__ import annotations

import json

import pytest

from featurestore.offline import schema_from_ddl
from streaming import validation as v

SCHEMA = schema_from_ddl(
    "transaction_id STRING, card_id BIGINT, merchant_id BIGINT, amount DOUBLE, currency STRING, "
    "merchant_category STRING, country STRING, channel STRING, event_timestamp TIMESTAMP"
)
GOOD = {
    "transaction_id": "t1",
    "card_id": 7,
    "merchant_id": 3,
    "amount": 12.34,
    "currency": "EUR",
    "merchant_category": "grocery",
    "country": "DE",
    "channel": "pos",
    "event_timestamp": "2026-03-01T12:00:00.000001+01:00",
}


@pytest.fixture
def validator() -> v.EventValidator:
    return v.EventValidator(SCHEMA, max_bytes=4096, bounds={"amount": (0.0, 1_000_000.0)})


def _with(**changes) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: val for k, val in event.items() if val is not ...}).encode()


def test_good_event_is_typed(validator) -> None:
    event = validator.parse(_with())
    assert event["card_id"] == 7 and event["amount"] == 12.34
    # 11:00:00.000001 UTC on 2026-03-01, in microseconds since the epoch.
    assert event["event_timestamp"] == 1_772_362_800_000_001


@pytest.mark.parametrize(
    ("message", "reason", "detail"),
    [
        (b"{not json", v.MALFORMED_JSON, "not JSON"),
        (b"\xff\xfe", v.MALFORMED_JSON, "not JSON"),
        (b"[1, 2]", v.MALFORMED_JSON, "JSON object"),
        (_with(card_id=...), v.MISSING_FIELD, "card_id"),
        (_with(extra=1), v.UNEXPECTED_FIELD, "extra"),
        (_with(card_id="7"), v.WRONG_TYPE, "card_id must be an integer"),
        (_with(card_id=True), v.WRONG_TYPE, "card_id must be an integer"),
        (_with(card_id=2**70), v.OUT_OF_RANGE, "64 bits"),
        (_with(amount="12"), v.WRONG_TYPE, "amount must be a number"),
        (_with(amount=None), v.WRONG_TYPE, "amount is null"),
        (b'{"amount": NaN}', v.MISSING_FIELD, "transaction_id"),
        (_with(amount=float("nan")), v.NOT_FINITE, "amount is nan"),
        (_with(amount=float("inf")), v.NOT_FINITE, "amount is inf"),
        (_with(amount=-1.0), v.OUT_OF_RANGE, "amount=-1.0"),
        (_with(amount=1e12), v.OUT_OF_RANGE, "amount=1000000000000.0"),
        (_with(event_timestamp="yesterday"), v.BAD_TIMESTAMP, "not ISO-8601"),
        (_with(event_timestamp="2026-03-01T12:00:00"), v.BAD_TIMESTAMP, "no UTC offset"),
        (_with(event_timestamp=1772362800), v.BAD_TIMESTAMP, "ISO-8601 string"),
        (_with(channel="x" * 5000), v.OVERSIZED, "the limit is 4096"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(validator, message, reason, detail) -> None:
    result = validator.parse(message)
    assert isinstance(result, v.Rejected)
    assert result.reason == reason and result.reason in v.REASONS
    assert detail in result.detail


def test_bounds_must_name_schema_fields() -> None:
    with pytest.raises(ValueError, match="amnt"):
        v.EventValidator(SCHEMA, max_bytes=10, bounds={"amnt": (0, 1)})
