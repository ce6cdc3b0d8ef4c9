"""Every kind of bad event is rejected with its reason; good events come out typed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _assert_batch_agrees_with_parse(validator: v.EventValidator, chunk: list) -> None:
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


@pytest.mark.parametrize("size", [1, 3, 64])
def test_parse_batch_agrees_with_parse(validator, size) -> None:
    messages = _mixed_batch()
    for begin in range(0, len(messages), size):
        _assert_batch_agrees_with_parse(validator, messages[begin : begin + size])


def test_a_tombstone_is_rejected_not_raised(validator) -> None:
    batch = validator.parse_batch([_with(), None, _with(card_id=8)])
    assert batch.accepted.tolist() == [0, 2]
    assert [(i, r.reason) for i, r in batch.rejected] == [(1, v.TOMBSTONE)]


@pytest.mark.parametrize(
    "message",
    [
        _with(currency="\ud800"),  # json.dumps escapes it: "\\ud800"
        _with(country="\udfff"),
        # The same surrogate encoded as UTF-8 bytes (ED A0 80), which json.loads(bytes) accepts.
        json.dumps({**GOOD, "currency": "\ud800"}, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
    ],
)
def test_lone_surrogates_are_rejected(validator, message) -> None:
    result = validator.parse(message)
    assert isinstance(result, v.Rejected) and result.reason == v.MALFORMED_JSON
    batch = validator.parse_batch([_with(), message, _with()])
    assert batch.accepted.tolist() == [0, 2] and batch.events.num_rows == 2


@pytest.mark.parametrize(
    ("stamp", "accepted"),
    [
        ("0001-01-01T00:30:00+01:00", False),  # year 0 in UTC
        ("9999-12-31T23:30:00-01:00", False),  # year 10000 in UTC
        ("0001-01-01T00:00:00+00:00", False),
        ("1999-12-31T23:59:59.999999+00:00", False),
        ("2000-01-01T00:30:00+01:00", False),  # 1999 in UTC
        ("2000-01-01T00:00:00+00:00", True),
        ("2100-12-31T23:59:59.999999+00:00", True),
        ("2100-12-31T23:30:00-01:00", False),  # 2101 in UTC
        ("2101-01-01T00:00:00Z", False),
    ],
)
def test_timestamps_outside_the_plausible_years_are_bad(validator, stamp, accepted) -> None:
    message = _with(event_timestamp=stamp)
    result = validator.parse(message)
    if accepted:
        assert not isinstance(result, v.Rejected)
    else:
        assert result == v.Rejected(
            v.BAD_TIMESTAMP,
            f"event_timestamp={stamp!r} is outside the plausible years 2000..2100 (UTC)",
        )
    _assert_batch_agrees_with_parse(validator, [_with(), message, _with()])


def test_the_timestamp_range_is_configurable_within_years_1_to_9999() -> None:
    wide = v.EventValidator(SCHEMA, max_bytes=4096, timestamp_range=(1, 9999))
    assert not isinstance(wide.parse(_with(event_timestamp="0001-01-01T00:00:00+00:00")), v.Rejected)
    assert wide.parse(_with(event_timestamp="0001-01-01T00:30:00+01:00")).reason == v.BAD_TIMESTAMP
    for years in [(0, 2000), (2000, 10000), (2100, 2000)]:
        with pytest.raises(ValueError, match="timestamp range"):
            v.EventValidator(SCHEMA, max_bytes=10, timestamp_range=years)


def test_an_empty_message_cannot_shift_the_next_ones_rows(validator) -> None:
    """Defect: the fast path read `` + `{..} {..}` as two events at the wrong offsets."""
    utc = "2026-03-01T12:00:00+00:00"  # the spelling the fast path converts itself
    one, two = _with(card_id=1, event_timestamp=utc), _with(card_id=2, event_timestamp=utc)
    for chunk in ([b"", one + b" " + two], [b"", one + two, _with(event_timestamp=utc)],
                  [b" ", one + b"\t" + two]):
        _assert_batch_agrees_with_parse(validator, chunk)
        assert validator.parse_batch(chunk).accepted.tolist() == (
            [2] if len(chunk) == 3 else []
        )
    assert validator.parse_batch([b"", one + b" " + two]).rejected[1][1].reason == v.MALFORMED_JSON


def test_a_null_message_never_reaches_the_reader(validator) -> None:
    """Defect: Arrow's JSON reader crashes the process (SIGSEGV) on a batch starting `null`."""
    for chunk in ([b"null"], [b"null", _with()], [b"null {}", b"{} null {}"]):
        _assert_batch_agrees_with_parse(validator, chunk)


# --- property: the fast path and `parse` agree on any input and any batching ----------------

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_TEXT = st.text(st.one_of(st.characters(), _SURROGATES), max_size=6)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**63, 1_000_000, 1_000_000.000001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_DATETIMES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(-timedelta(hours=1)),
                               timezone(timedelta(hours=23, minutes=59))]),
)
_STAMPS = st.one_of(
    _DATETIMES.map(lambda d: d.isoformat()),
    _DATETIMES.map(lambda d: d.isoformat().replace("+00:00", "Z")),
    _DATETIMES.map(lambda d: d.replace(tzinfo=None).isoformat()),
    st.sampled_from(["2026-02-30T12:00:00+00:00", "2026-03-01T24:00:00+00:00",
                     "2026-03-01T23:59:60+00:00", "0000-03-01T12:00:00+00:00",
                     "2026-03-01 12:00:00+00:00", "2026-03-01T12:00:00.1234567+00:00"]),
)
_VALUES = st.one_of(st.none(), _TEXT, _NUMBERS, _STAMPS, st.lists(st.integers(), max_size=2))


@st.composite
def _events(draw) -> bytes | None:
    """Events near the schema: every field a plausible or odd value, some fields missing,
    extra or repeated, in several JSON spellings, some concatenated or cut."""
    event = {**GOOD, "event_timestamp": "2026-03-01T12:00:00+00:00"}
    for name in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=3, unique=True)):
        event[name] = draw(st.one_of(_VALUES, _STAMPS if name == "event_timestamp" else _VALUES))
    for name in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=1)):
        del event[name]
    if draw(st.booleans()) and draw(st.booleans()):
        event[draw(_TEXT)] = draw(_VALUES)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()), allow_nan=True,
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.integers(0, 9)) == 0:  # a repeated key: the last one counts
        name = draw(st.sampled_from(sorted(GOOD)))
        text = text[:-1] + f', "{name}": {json.dumps(draw(_VALUES), allow_nan=True)}}}'
    message = text.encode("utf-8", "surrogatepass")
    edit = draw(st.integers(0, 12))
    if edit == 0:
        message = message + draw(st.sampled_from([b" ", b"\n", b" {}", b"{}", b"//}", b",}"]))
    elif edit == 1:
        message = draw(st.sampled_from([b" ", b"\t", b"\xef\xbb\xbf", b"[", b""])) + message
    elif edit == 2:
        message = message[: draw(st.integers(0, len(message)))]
    return message


_MESSAGES = st.one_of(
    _events(),
    st.binary(max_size=40),
    st.sampled_from([None, b"", b" ", b"{}", b"null", b"{} {}", b"\n"]),
)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_MESSAGES, max_size=12), cuts=st.lists(st.integers(1, 12), max_size=6))
def test_fast_path_equals_parse_on_any_messages_and_batching(messages, cuts) -> None:
    validator = v.EventValidator(SCHEMA, max_bytes=600, bounds={"amount": (0.0, 1_000_000.0)})
    begin = 0
    for size in [*cuts, len(messages)]:
        _assert_batch_agrees_with_parse(validator, messages[begin : begin + size])
        begin += size


def _parsed_as_lists(parsed: v.ParsedBatch) -> tuple:
    return parsed.events.to_pylist(), parsed.accepted.tolist(), parsed.rejected


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(_MESSAGES, max_size=12), cuts=st.lists(st.integers(0, 12), max_size=4))
def test_a_part_of_a_parsed_batch_equals_parsing_the_part_alone(messages, cuts) -> None:
    """The worker validates all of a micro-batch's source partitions in one call and hands each
    partition its part: that must be what parsing the partition's messages alone gives."""
    validator = v.EventValidator(SCHEMA, max_bytes=600, bounds={"amount": (0.0, 1_000_000.0)})
    whole = validator.parse_batch(messages)
    bounds = sorted({0, len(messages), *(min(c, len(messages)) for c in cuts)})
    for start, stop in pairwise(bounds):
        assert _parsed_as_lists(whole.part(start, stop)) == _parsed_as_lists(
            validator.parse_batch(messages[start:stop])
        )


@pytest.mark.parametrize("depth", [1_100, 100_000])
def test_brackets_nested_past_the_recursion_limit_are_malformed_not_raised(depth) -> None:
    """Defect: 2 KB of nested brackets made json.loads raise RecursionError out of the
    validator (and, validated in one call per micro-batch, out of the worker)."""
    validator = v.EventValidator(SCHEMA, max_bytes=1_000_000)
    message = b'{"country": ' + b"[" * depth + b"]" * depth + b"}"
    verdict = validator.parse(message)
    assert isinstance(verdict, v.Rejected) and verdict.reason == v.MALFORMED_JSON
    assert "nested too deeply" in verdict.detail
    parsed = validator.parse_batch([message, _with()])
    assert [i for i, _ in parsed.rejected] == [0] and parsed.accepted.tolist() == [1]
