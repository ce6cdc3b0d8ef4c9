"""Dead letters as the broker takes them: the original key and bytes, headers saying why.

Headers: `reason`, `detail`, `source-topic`, `source-partition`, `source-offset`, and for an
`internal_error` the exception's class and message (`exception`). A dead letter the broker
would refuse as too large would fail its send, and the worker would replay the record for ever:
instead its value (and, if need be, its key) is cut to fit, and headers `original-value-bytes`
and `value-sha256` (`original-key-bytes`, `key-sha256`) identify the original. Nothing is
dropped.

The size limit is the smallest of the producer's `max_request_size` and the dead-letter topic's
`max.message.bytes` when the broker reports it (`streaming.kafka.message_bytes_limit`; real
Kafka's default is 1,048,588 bytes), minus `MARGIN` for the record batch framing.
"""

from __future__ import annotations

import hashlib

from streaming.task import DeadLetter

# Record batch header (61 bytes), record framing and varints, with room to spare.
MARGIN = 4096
# Free text in headers is capped: a detail or exception message is for people, not for replay.
_TEXT_BYTES = 2048

Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def size_limit(producer_max_request_size: int, topic_limit: int | None) -> int:
    limits = [producer_max_request_size, *([topic_limit] if topic_limit else [])]
    return min(limits) - MARGIN


def _text(value: str) -> bytes:
    return value.encode("utf-8", "backslashreplace")[:_TEXT_BYTES]


def message(letter: DeadLetter, topic: str, partition: int, limit: int) -> Message:
    """The (key, value, headers) to send for `letter`, at most `limit` bytes in all."""
    record = letter.record
    headers = [
        ("reason", letter.rejected.reason.encode()),
        ("detail", _text(letter.rejected.detail)),
        ("source-topic", topic.encode()),
        ("source-partition", b"%d" % partition),
        ("source-offset", b"%d" % record.offset),
    ]
    if letter.exception is not None:
        headers.append(("exception", _text(letter.exception)))
    key, value = record.key, record.value
    room = limit - sum(len(name) + len(data) for name, data in headers)
    if len(key or b"") + len(value or b"") <= room:
        return key, value, headers
    # Cut: the headers that identify the original take room too (names, sizes, 64 hex digits).
    room -= 2 * (len("original-value-bytes") + 20 + len("value-sha256") + 64)
    if key is not None and len(key) > room // 2:
        headers += _identity("key", key)
        key = key[: room // 2]
    if value is not None and len(value) > room - len(key or b""):
        headers += _identity("value", value)
        value = value[: max(0, room - len(key or b""))]
    return key, value, headers


def _identity(what: str, data: bytes) -> list[tuple[str, bytes]]:
    return [
        (f"original-{what}-bytes", b"%d" % len(data)),
        (f"{what}-sha256", hashlib.sha256(data).hexdigest().encode()),
    ]
