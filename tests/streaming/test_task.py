"""One partition task without a broker: containment, the key check and event-time sanity."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import topology as topologies
from streaming import validation as v
from streaming.task import PartitionTask
from streaming.validation import EventValidator
from streaming.windows import WindowState
from tests.conftest import _SETTINGS_ENV

NOW = datetime(2026, 3, 2, tzinfo=UTC)
NOW_US = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0
    headers: tuple = ()


def event(card: int, at: datetime, **changes) -> bytes:
    return json.dumps({
        "transaction_id": f"t{card}-{at.isoformat()}", "card_id": card, "merchant_id": 3,
        "amount": 12.5, "currency": "EUR", "merchant_category": "grocery", "country": "DE",
        "channel": "pos", "event_timestamp": at.isoformat(), **changes,
    }).encode()


def records(values: list[tuple[bytes | None, bytes | None]], first: int = 0) -> list[Record]:
    return [Record(first + i, key, value) for i, (key, value) in enumerate(values)]


def good(card: int, at: datetime) -> tuple[bytes, bytes]:
    return str(card).encode(), event(card, at)


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    from featurestore.definitions import select_views
    from featurestore.feast_config import apply
    from featurestore.settings import get_settings

    root = tmp_path_factory.mktemp("task")
    with pytest.MonkeyPatch.context() as patch:
        for name in _SETTINGS_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("FEATURESTORE_CONFIG", str(root / "absent.yaml"))
        patch.setenv("FEATURESTORE_DATA_DIR", str(root / "data"))
        views = select_views(apply(get_settings()), None, aggregated_only=True)
    (only,) = topologies.build(views, "g")  # the example has one source topic
    return only


@pytest.fixture
def task(topology, tmp_path) -> PartitionTask:
    validator = EventValidator(
        topology.schema, 16_384, topology.ranges, topology.timestamp_range
    )
    return PartitionTask(topology, topology.stages[topology.source_topic], 0, tmp_path, validator)


def _card_state(task: PartitionTask) -> WindowState:
    return task.states["card_transaction_features"]


def _reasons(step) -> list[tuple[int, str]]:
    return sorted((d.record.offset, d.rejected.reason) for d in step.dead_letters)


@pytest.mark.parametrize("validated", [False, True], ids=["raw", "validated by the worker"])
def test_a_record_whose_processing_raises_is_a_dead_letter_and_the_rest_apply(
    task, monkeypatch, caplog, validated
) -> None:
    original = WindowState.apply

    def fails_on_card_13(self, keys, *args, **kwargs):
        if 13 in np.asarray(keys).tolist():
            raise RuntimeError("boom on 13")
        return original(self, keys, *args, **kwargs)

    monkeypatch.setattr(WindowState, "apply", fails_on_card_13)
    start = NOW - timedelta(hours=1)
    values = [good(card, start + timedelta(seconds=i)) for i, card in enumerate([1, 2] * 200)]
    values.insert(150, good(13, start + timedelta(seconds=150)))
    with caplog.at_level(logging.ERROR, "featurestore.stream"):
        batch = records(values)
        parsed = task.validator.parse_batch([r.value for r in batch]) if validated else None
        step = task.process(batch, now_us=NOW_US, parsed=parsed)

    assert _reasons(step) == [(150, v.INTERNAL_ERROR)]
    letter = step.dead_letters[0]
    assert letter.exception == "RuntimeError: boom on 13"
    assert "RuntimeError: boom on 13" in letter.rejected.detail
    assert "boom on 13" in caplog.text and "Traceback" in caplog.text
    assert _card_state(task).events(1) == _card_state(task).events(2) == 200
    # The checkpoint covers every record: 400 applied, one dead-lettered.
    assert task.checkpoint() == 401
    assert sum(t.num_rows for t in task.log.events()) == 400


def test_the_message_key_must_be_the_events_card(task) -> None:
    at = NOW - timedelta(minutes=30)
    step = task.process(
        records([(b"7", event(7, at)), (b"8", event(7, at)), (None, event(7, at)),
                 (b"07", event(7, at)), (b"7", event(7, at + timedelta(seconds=1)))]),
        now_us=NOW_US,
    )
    assert _reasons(step) == [(1, v.KEY_MISMATCH), (2, v.KEY_MISMATCH), (3, v.KEY_MISMATCH)]
    details = sorted(d.rejected.detail for d in step.dead_letters)
    assert "the message has no key; it must be the event's card_id, b'7'" in details
    assert "message key b'8' is not the event's card_id, b'7'" in details
    assert _card_state(task).events(7) == 2


def test_a_far_future_event_is_a_dead_letter_and_never_moves_the_watermark(task) -> None:
    """Defect: one event a year ahead moved the watermark; every later event was `late`."""
    at = NOW - timedelta(minutes=30)
    step = task.process(
        records([good(1, at), good(1, NOW + timedelta(days=365)), good(2, at + timedelta(seconds=1))]),
        now_us=NOW_US,
    )
    assert _reasons(step) == [(1, v.FUTURE_TIMESTAMP)]
    assert "more than 0:05:00 ahead of the worker's clock" in step.dead_letters[0].rejected.detail
    assert task.watermark == NOW_US - 30 * 60_000_000 + 1_000_000
    later = task.process(
        records([good(1, at + timedelta(minutes=2)), good(1, NOW + timedelta(minutes=4))], first=3),
        now_us=NOW_US,
    )
    assert later.dead_letters == [] and _card_state(task).events(1) == 3


def test_lateness_details_format_at_the_edges_of_the_timestamp_range(topology, tmp_path) -> None:
    """Defect: formatting a `late` detail raised OverflowError near years 1 and 9999."""
    wide = EventValidator(topology.schema, 16_384, topology.ranges, timestamp_range=(1, 9999))
    task = PartitionTask(topology, topology.stages[topology.source_topic], 0, tmp_path, wide)
    edge = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    far = (edge - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    step = task.process(
        records([good(1, edge - timedelta(hours=1)), good(1, datetime(1, 1, 1, tzinfo=UTC)),
                 (b"1", event(1, NOW, event_timestamp="0001-01-01T00:30:00+01:00")),
                 (b"1", event(1, NOW, event_timestamp="9999-12-31T23:30:00-01:00"))]),
        now_us=far,
    )
    assert _reasons(step) == [(1, v.LATE), (2, v.BAD_TIMESTAMP), (3, v.BAD_TIMESTAMP)]
    late = next(d for d in step.dead_letters if d.rejected.reason == v.LATE).rejected.detail
    assert "event time 0001-01-01T00:00:00+00:00 is more than 0:05:00 behind" in late
    assert "9999-12-31T22:59:59.999999+00:00" in late


def test_a_tombstone_behind_unchecked_events_loses_nothing(task) -> None:
    """Defect: a tombstone raised in validation; shutdown then checkpointed the failed batch."""
    start = NOW - timedelta(hours=1)
    first = task.process(
        records([good(1, start + timedelta(seconds=i)) for i in range(400)]), now_us=NOW_US
    )
    second = task.process(
        records([(b"1", None)] + [good(1, start + timedelta(seconds=400 + i)) for i in range(200)],
                first=400),
        now_us=NOW_US,
    )
    assert first.dead_letters == [] and _reasons(second) == [(400, v.TOMBSTONE)]
    assert task.checkpoint() == 601
    assert sum(t.num_rows for t in task.log.events()) == 600


def test_event_time_rules_are_declared_with_the_source(topology) -> None:
    assert topology.max_future_skew == timedelta(minutes=5)
    assert topology.timestamp_range == (2000, 2100)


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"max_future_skew": "5 minutes"}, "max_future_skew='5 minutes' must read"),
        ({"max_future_skew": "-5m"}, "max_future_skew='-5m' must read"),
        ({"timestamp_range": "2100..2000"}, "timestamp_range='2100..2000' must read"),
        ({"timestamp_range": "0..2000"}, "within 1..9999"),
    ],
)
def test_bad_event_time_tags_are_named(tags, message) -> None:
    from feast import FileSource, KafkaSource
    from feast.data_format import JsonFormat

    from featurestore.definitions import _max_future_skew, _timestamp_range
    from featurestore.errors import DefinitionError

    source = KafkaSource(
        name="s", kafka_bootstrap_servers="x", topic="t", timestamp_field="ts",
        message_format=JsonFormat(schema_json="a INT"),
        batch_source=FileSource(path="/tmp/x", timestamp_field="ts"), tags=tags,
    )
    with pytest.raises(DefinitionError, match=message):
        _max_future_skew(source)
        _timestamp_range(source)


def test_a_checkpoint_of_dead_letters_only_is_written(task, monkeypatch) -> None:
    """Defect: a checkpoint with no applied events raised "Must pass at least one table"."""

    def always_fails(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(WindowState, "apply", always_fails)
    step = task.process(records([good(1, NOW - timedelta(hours=1)), (b"1", None)], first=5),
                        now_us=NOW_US)
    assert _reasons(step) == [(5, v.INTERNAL_ERROR), (6, v.TOMBSTONE)]
    assert task.checkpoint() == 7
    assert task.log.high_water() == 6 and task.restore() == 7


# --- property: what a task does with a sequence does not depend on how it is batched -------

_BASE = NOW - timedelta(hours=2)
_KINDS = ("good", "good", "good", "other_key", "no_key", "tombstone", "future", "garbage")


def _message(card: int, minute: int, kind: str) -> tuple[bytes | None, bytes | None]:
    at = _BASE + timedelta(minutes=minute, microseconds=card)
    key, value = good(card, at)
    return {
        "good": (key, value),
        "other_key": (str(card + 1).encode(), value),
        "no_key": (None, value),
        "tombstone": (key, None),
        "future": good(card, NOW + timedelta(days=card)),
        "garbage": (key, value[: card * 7]),
    }[kind]


def _outcome(task: PartitionTask, sequence: list[Record], cuts: list[int]) -> tuple:
    from streaming.task import _newest_per_key_and_time

    letters, online, begin = [], {}, 0
    for size in [*cuts, len(sequence)]:
        step = task.process(sequence[begin : begin + size], now_us=NOW_US)
        begin += size
        letters += [(d.record.offset, d.rejected.reason) for d in step.dead_letters]
        for _, rows in step.online:
            for row in rows.drop_columns(["created"]).to_pylist():
                online[row["card_id"]] = row
    view = task.stage.views[0]
    rows = task._rows[view.name]
    offline = (
        _newest_per_key_and_time(pa.concat_tables(rows), view).drop_columns(["created"])
        .sort_by([("card_id", "ascending"), ("event_timestamp", "ascending")]).to_pylist()
        if rows else []
    )
    return sorted(letters), online, offline


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 40), st.sampled_from(_KINDS)),
                    max_size=30),
    cuts=st.lists(st.integers(1, 30), max_size=5),
)
def test_a_tasks_outcome_does_not_depend_on_batching(topology, tmp_path, events, cuts) -> None:
    validator = EventValidator(topology.schema, 16_384, topology.ranges, topology.timestamp_range)
    stage = topology.stages[topology.source_topic]
    sequence = records([_message(*e) for e in events])
    batched = _outcome(PartitionTask(topology, stage, 0, tmp_path, validator), sequence, cuts)
    singly = _outcome(PartitionTask(topology, stage, 0, tmp_path, validator), sequence,
                      [1] * len(sequence))
    assert batched == singly


def test_a_null_entity_key_is_rejected_even_where_the_schema_allows_it(topology, tmp_path) -> None:
    import dataclasses

    schema = pa.schema([f.with_nullable(True) for f in topology.schema])
    lenient = dataclasses.replace(topology, schema=schema)
    task = PartitionTask(lenient, lenient.stages[lenient.source_topic], 0, tmp_path,
                         EventValidator(schema, 16_384, lenient.ranges))
    at = NOW - timedelta(minutes=30)
    step = task.process(
        records([(b"None", event(1, at, card_id=None)), (b"1", event(1, at, merchant_id=None)),
                 good(1, at)]),
        now_us=NOW_US,
    )
    assert _reasons(step) == [(0, v.WRONG_TYPE), (1, v.WRONG_TYPE)]
    assert {d.rejected.detail for d in step.dead_letters} == {
        "card_id is null (an entity key)", "merchant_id is null (an entity key)"}
    assert _card_state(task).events(1) == 1
