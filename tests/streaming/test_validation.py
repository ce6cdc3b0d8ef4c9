"""Every kind of bad event is rejected with its reason; good events come out typed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from featurestore.offline import schema_from_ddl
from streaming import validation as v

SCHEMA = schema_from_ddl(
    "transaction_id STRING NOT NULL, card_id BIGINT NOT NULL, merchant_id BIGINT NOT NULL, "
    "amount DOUBLE NOT NULL, currency STRING NOT NULL, merchant_category STRING, country STRING, "
    "channel STRING NOT NULL, event_timestamp TIMESTAMP NOT NULL"
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
        # datetime.fromisoformat takes this; the producer once sent it (Arrow's %S has the
        # fraction, so "%S.%f" printed a literal ".%f").
        (_with(event_timestamp="2026-03-01T12:00:00.000001.%f+00:00"), v.BAD_TIMESTAMP, "ISO"),
        (_with(channel=None), v.WRONG_TYPE, "channel is null"),
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


def test_a_nullable_field_may_be_null(validator) -> None:
    event = validator.parse(_with(country=None))
    assert not isinstance(event, v.Rejected) and event["country"] is None


def _mixed_batch() -> list[bytes]:
    """Good events in several spellings and every kind of bad one, interleaved."""
    spellings = [
        _with(card_id=i, amount=i * 0.37, event_timestamp=f"2026-03-01T12:{i % 60:02d}:00+00:00")
        for i in range(40)
    ]
    spellings += [
        _with(event_timestamp="2026-03-01T12:00:00.5+00:00"),
        _with(event_timestamp="2026-03-01T13:00:00+01:00"),  # another offset: the slow path
        _with(event_timestamp="2026-03-01T12:00:00Z"),
        _with(amount=7),  # an integer amount is a number
        _with(country=None),
        json.dumps(GOOD, indent=1).encode(),  # newlines inside: the slow path
        _with(country="ü\u00e9"),
    ]
    bad = [
        b"{not json", b"\xff\xfe", b"[1, 2]", b"", b"5", _with(card_id=...), _with(extra=1),
        _with(card_id="7"), _with(card_id=True), _with(card_id=7.0), _with(card_id=2**70),
        _with(amount=None), b'{"amount": NaN}', _with(amount=float("nan")), _with(amount=-1.0),
        _with(amount=1e12), _with(event_timestamp="yesterday"),
        _with(event_timestamp="2026-02-30T12:00:00+00:00"),
        _with(event_timestamp="2026-03-01T12:00:00"), _with(channel="x" * 5000),
        json.dumps(GOOD).encode().replace(b'"DE"', b'"\xff"'),
        b'{"card_id": 1, "card_id": 2}',
    ]
    batch = []
    for i, message in enumerate(spellings):
        batch.append(message)
        if i < len(bad):
            batch.append(bad[i])
    return batch + bad[len(spellings):]


@pytest.mark.parametrize("size", [1, 3, 64])
def test_parse_batch_agrees_with_parse(validator, size) -> None:
    messages = _mixed_batch()
    for begin in range(0, len(messages), size):
        chunk = messages[begin : begin + size]
        batch = validator.parse_batch(chunk)
        one_by_one = [validator.parse(m) for m in chunk]
        assert batch.rejected == [(i, r) for i, r in enumerate(one_by_one) if isinstance(r, v.Rejected)]
        accepted = [i for i, r in enumerate(one_by_one) if not isinstance(r, v.Rejected)]
        assert batch.accepted.tolist() == accepted
        rows = batch.events.to_pylist()
        for row, i in zip(rows, accepted, strict=True):
            expected = dict(one_by_one[i])
            micros = expected.pop("event_timestamp")
            stamp = row.pop("event_timestamp")
            assert (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) == micros
            assert row == expected
