"""Fast writes of feature rows into Redis in Feast's layout, never moving a key back in event time.

Each command is one EVALSHA of a Lua script over a chunk of rows: for every entity it compares
the stored `_ts:<view>` with the row's event time and writes the row's fields only when the row
is not older (an equal event time overwrites, so a corrected row with a newer created timestamp
wins). The check and the write are atomic, so concurrent writers (materializer and stream
worker) cannot reorder each other. Commands are encoded with numpy (`resp`) and pipelined on one
connection; chunks stay small so no script blocks Redis for long.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import pairwise

import pyarrow as pa
import redis

from featurestore.online import resp
from featurestore.online.feast_layout import (
    RedisLayout,
    event_micros,
    timestamp_slots,
    value_slots,
)

# Rows per EVALSHA. A script holds Redis for ~17 µs per row (measured by bench/materialize.py):
# 500 rows pause concurrent readers for ~9 ms at most, while keeping the per-command overhead small.
CHUNK_ROWS = 500

# ARGV: ttl, number of features F, the `_ts:<view>` field, the F feature fields, then per key
# its Timestamp proto and F values. Field names travel once per command, not once per row:
# Redis spends most of a write turning arguments into Lua strings.
WRITE_IF_NOT_OLDER = """
local ttl = tonumber(ARGV[1])
local features = tonumber(ARGV[2])
local head = 3 + features
local function decoded(proto)
  local seconds, nanos, i, n = 0, 0, 1, #proto
  while i <= n do
    local tag = string.byte(proto, i)
    i = i + 1
    -- A negative int64 (before 1970) is a ten-byte varint; its complement (`flipped`, the
    -- low 63 bits inverted) stays exact in a Lua number where the unsigned value would not.
    local value, flipped, scale, bytes = 0, 0, 1, 0
    while true do
      local byte = string.byte(proto, i)
      i = i + 1
      bytes = bytes + 1
      if bytes < 10 then
        value = value + (byte % 128) * scale
        flipped = flipped + (127 - byte % 128) * scale
      end
      if byte < 128 then break end
      scale = scale * 128
    end
    if bytes == 10 then value = -(flipped + 1) end
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds, nanos
end
-- Timestamps of 1978-3058 (all of Feast's real rows) are `08` + five varint bytes of seconds,
-- then, unless nanos is 0, `10` + up to five varint bytes of nanos (< 2^30). Those are read with
-- one string.byte call: the byte-by-byte loop above cost Redis ~6 µs per row for two decodes,
-- more than the HSET itself.
local byte = string.byte
local function instant(proto)
  local n = #proto
  if n == 6 or (n >= 8 and n <= 12) then
    local t, a, b, c, d, e, t2, f, g, h, i, j = byte(proto, 1, n)
    if t == 8 and a > 127 and b > 127 and c > 127 and d > 127 and e < 128 then
      local seconds = (((e * 128 + d - 128) * 128 + c - 128) * 128 + b - 128) * 128 + a - 128
      if n == 6 then return seconds, 0 end
      -- A well-formed nanos varint: continuation bits on every byte but its last.
      if t2 == 16 and byte(proto, n) < 128 and (n < 9 or f > 127) and (n < 10 or g > 127)
          and (n < 11 or h > 127) and (n < 12 or i > 127) then
        local nanos = f % 128 + (g or 0) % 128 * 128 + (h or 0) % 128 * 16384
          + (i or 0) % 128 * 2097152 + (j or 0) * 268435456
        return seconds, nanos
      end
    end
  end
  return decoded(proto)
end
local hset = {ARGV[3]}
for j = 1, features do hset[2 * j + 1] = ARGV[3 + j] end
local written = 0
for k = 1, #KEYS do
  local base = head + (k - 1) * (1 + features)
  local new = ARGV[base + 1]
  local stored = redis.call('HGET', KEYS[k], ARGV[3])
  local write = true
  if stored and stored ~= new then
    local old_s, old_n = instant(stored)
    local new_s, new_n = instant(new)
    write = new_s > old_s or (new_s == old_s and new_n >= old_n)
  end
  if write then
    hset[2] = new
    for j = 1, features do hset[2 * j + 2] = ARGV[base + 1 + j] end
    redis.call('HSET', KEYS[k], unpack(hset))
    if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
    written = written + 1
  end
end
return written
"""
SCRIPT_SHA = hashlib.sha1(WRITE_IF_NOT_OLDER.encode()).hexdigest().encode()


class ScriptCommands:
    """EVALSHA commands of the script for one feature view's rows."""

    def __init__(self, layout: RedisLayout, key_ttl_seconds: int | None) -> None:
        self.layout = layout
        self._per_row = 1 + len(layout.feature_fields)
        self._argv_head = b"".join(
            [
                resp.bulk(b"%d" % (key_ttl_seconds or 0)),
                resp.bulk(b"%d" % len(layout.feature_fields)),
                resp.bulk(layout.ts_field),
                *[resp.bulk(field) for field in layout.feature_fields.values()],
            ]
        )

    def encode(self, table: pa.Table, bounds: Sequence[int]) -> list[bytes]:
        """One command per run of rows `bounds[i]:bounds[i + 1]` of `table`."""
        rows = table.num_rows
        keys = resp.RespRows(rows)
        keys.bulk(*self.layout.key_slots(table))
        key_bytes, key_offsets = keys.build()

        args = resp.RespRows(rows)
        timestamp_field = self.layout.view.offline.timestamp_field
        args.bulk(*timestamp_slots(event_micros(table.column(timestamp_field))))
        for name in self.layout.feature_fields:
            args.bulk(*value_slots(table.column(name), self.layout.value_types[name]))
        arg_bytes, arg_offsets = args.build()

        head_args = 3 + 3 + len(self.layout.feature_fields)
        commands = []
        for start, end in pairwise(bounds):
            n = end - start
            head = b"*%d\r\n" % (head_args + n + n * self._per_row)
            head += resp.bulk(b"EVALSHA") + resp.bulk(SCRIPT_SHA) + resp.bulk(b"%d" % n)
            commands.append(
                b"".join(
                    (
                        head,
                        key_bytes[key_offsets[start] : key_offsets[end]].tobytes(),
                        self._argv_head,
                        arg_bytes[arg_offsets[start] : arg_offsets[end]].tobytes(),
                    )
                )
            )
        return commands


class RedisFeatureWriter:
    """Writes Arrow tables of feature rows (one row per entity) for one feature view."""

    def __init__(
        self, client: redis.Redis, layout: RedisLayout, key_ttl_seconds: int | None = None
    ) -> None:
        self.client = client
        self.layout = layout
        self._commands = ScriptCommands(layout, key_ttl_seconds)
        self._outstanding = 0  # replies not read yet
        self._connection: redis.Connection | None = None
        client.script_load(WRITE_IF_NOT_OLDER)

    def _encode(self, table: pa.Table) -> list[bytes]:
        """EVALSHA commands for `table`, one per chunk of rows."""
        rows = table.num_rows
        return self._commands.encode(table, [*range(0, rows, CHUNK_ROWS), rows])

    def write(self, table: pa.Table) -> int:
        """Send `table`'s rows; returns how many rows earlier calls' commands wrote.

        A batch is sent before the previous batch's replies are read, so Redis always has work
        queued while this process encodes. Call `flush()` at the end for the last replies.
        """
        if not table.num_rows:
            return 0
        commands = self._encode(table)
        earlier = self._outstanding
        self._connect().send_packed_command(commands, check_health=False)
        self._outstanding += len(commands)
        # Replies arrive in order: the earlier batches' come first.
        return self._read(earlier)

    def flush(self) -> int:
        """Wait for every reply sent so far; returns rows written (not skipped as older)."""
        return self._read(self._outstanding)

    def _read(self, replies: int) -> int:
        """Read the next `replies` replies; returns the rows they report written."""
        if not replies:
            return 0
        connection = self._connect()
        written, errors = 0, []
        try:
            for _ in range(replies):
                try:
                    written += int(connection.read_response())
                except redis.ResponseError as exc:
                    errors.append(exc)
                self._outstanding -= 1
        except BaseException:
            # Replies still in flight: this connection can't be reused.
            self._outstanding = 0
            connection.disconnect()
            self._connection = None
            raise
        if errors:
            raise errors[0]
        return written

    def _connect(self) -> redis.Connection:
        if self._connection is None:
            self._connection = self.client.connection_pool.get_connection()
        return self._connection

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._connection is not None:
                self.client.connection_pool.release(self._connection)
                self._connection = None
