"""Whole-column byte assembly with numpy: the Redis protocol (RESP) and protobuf varints.

Materialization writes millions of small byte strings. Building each as a Python object costs
more than Redis takes to store it, so columns are encoded as byte matrices instead: a `Slot` is
an (n, width) uint8 matrix plus each row's used length. Slots laid side by side and compacted
with one boolean mask give the concatenated bytes of every row, in row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def bulk(part: bytes) -> bytes:
    """One argument of a command, as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(part), part)


def pack(*parts: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


@dataclass(frozen=True)
class Slot:
    """Per-row byte strings: row i is `data[i, :lengths[i]]`."""

    data: np.ndarray  # (n, width) uint8
    lengths: np.ndarray  # (n,) int64

    @property
    def rows(self) -> int:
        return self.data.shape[0]


def constant(value: bytes, rows: int) -> Slot:
    data = np.broadcast_to(np.frombuffer(value, dtype=np.uint8), (rows, len(value)))
    return Slot(data, np.full(rows, len(value), dtype=np.int64))


def fixed(data: np.ndarray, present: np.ndarray | None = None) -> Slot:
    """Fixed-width rows; rows where `present` is False are empty."""
    width = data.shape[1]
    lengths = np.full(data.shape[0], width, dtype=np.int64)
    if present is not None:
        lengths = np.where(present, lengths, 0)
    return Slot(data, lengths)


def from_bytes(values: list[bytes]) -> Slot:
    """A slot from Python byte strings (the general, slower path)."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    width = int(lengths.max(initial=0))
    data = np.zeros((len(values), width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(values), dtype=np.uint8)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    data[mask] = flat[(starts[:, None] + cols[None, :])[mask]]
    return Slot(data, lengths)


def from_utf8(offsets: np.ndarray, buffer: np.ndarray, present: np.ndarray) -> Slot:
    """A slot from an Arrow string column's offsets and data buffer."""
    starts = offsets[:-1].astype(np.int64)
    lengths = np.where(present, offsets[1:] - offsets[:-1], 0).astype(np.int64)
    width = int(lengths.max(initial=0))
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    data = np.zeros((len(lengths), width), dtype=np.uint8)
    data[mask] = buffer[(starts[:, None] + cols[None, :])[mask]]
    return Slot(data, lengths)


def varint(values: np.ndarray, present: np.ndarray | None = None) -> Slot:
    """Protobuf base-128 varints of int64 values (negatives take ten bytes, as protobuf does)."""
    rest = np.asarray(values).astype(np.int64).view(np.uint64).copy()
    rows = rest.shape[0]
    data = np.zeros((rows, 10), dtype=np.uint8)
    lengths = np.ones(rows, dtype=np.int64)
    for i in range(10):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        data[:, i] = low | (more.astype(np.uint8) << 7)
        lengths += more
    if present is not None:
        lengths = np.where(present, lengths, 0)
    return Slot(data, lengths)


def decimal(values: np.ndarray) -> Slot:
    """ASCII decimal digits of non-negative integers."""
    values = np.asarray(values, dtype=np.int64)
    digits = np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)
    width = int(digits.max(initial=1))
    data = np.zeros((len(values), width), dtype=np.uint8)
    for position in range(width):
        # Position 0 is the most significant digit of each row's own length.
        power = digits - 1 - position
        digit = (values // np.power(10, np.maximum(power, 0))) % 10
        data[:, position] = np.where(power >= 0, digit + ord("0"), 0)
    return Slot(data, digits)


class RespRows:
    """Builds, for n rows at once, each row's run of RESP arguments (bulk strings)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._slots: list[Slot] = []
        self._pending = b""

    def _flush(self) -> None:
        if self._pending:
            self._slots.append(constant(self._pending, self.rows))
            self._pending = b""

    def raw(self, value: bytes) -> None:
        """The same bytes in every row, unframed (a command's `*<count>` header)."""
        self._pending += value

    def bulk(self, *parts: Slot) -> None:
        """One bulk string per row whose content is the concatenation of `parts`."""
        length = np.sum([p.lengths for p in parts], axis=0)
        self._pending += b"$"
        self._flush()
        self._slots.append(decimal(length))
        self._pending += b"\r\n"
        self._flush()
        self._slots.extend(parts)
        self._pending += b"\r\n"

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows' bytes concatenated (uint8), and the offset where each row starts (n + 1)."""
        self._flush()
        data = np.concatenate([s.data for s in self._slots], axis=1)
        mask = np.concatenate(
            [np.arange(s.data.shape[1])[None, :] < s.lengths[:, None] for s in self._slots], axis=1
        )
        row_lengths = sum(s.lengths for s in self._slots)
        offsets = np.concatenate(([0], np.cumsum(row_lengths)))
        return data[mask], offsets
