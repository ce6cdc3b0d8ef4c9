"""Fast writes of feature rows into a Redis Cluster, with the single-Redis writer's guarantee.

The never-older script reads and writes every key it is given, and a cluster runs a script only
when all its keys hash to one slot. So a batch's rows are grouped by slot and each group (split
at CHUNK_ROWS) is one EVALSHA: the check and the write stay atomic per key, as on one Redis.
The commands of all slots of a node go out as one pipeline, to every node before any reply is
read, so the masters work in parallel.

The cluster may move slots meanwhile: MOVED (re-read the slot map, resend there), ASK (resend
this command to the importing node after ASKING), TRYAGAIN (a migration is half-way through
this slot's keys: resend shortly). A node that drops the connection is asked again after the
map is re-read. Resending is safe: a command that did run left rows no older than its own, and
its second run writes the same bytes or skips them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import redis
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from featurestore.online.cluster import Node, key_slot, slot_owners
from featurestore.online.feast_layout import RedisLayout
from featurestore.online.redis_writer import CHUNK_ROWS, WRITE_IF_NOT_OLDER, ScriptCommands
from featurestore.online.resp import pack

# Rounds of resending before a write fails: a slot moves in milliseconds and a failed-over node
# is replaced within the cluster's node timeout; the waits between rounds add up to ~6 s.
ATTEMPTS = 8
_ASKING = pack(b"ASKING")


def slot_runs(slots: np.ndarray) -> list[int]:
    """Bounds of runs of rows, each of one slot and at most CHUNK_ROWS long, in sorted `slots`."""
    changes = (np.flatnonzero(np.diff(slots)) + 1).tolist()
    bounds = [0]
    for start, end in zip([0, *changes], [*changes, len(slots)]):
        bounds.extend(range(start + CHUNK_ROWS, end, CHUNK_ROWS))
        bounds.append(end)
    return bounds


class ClusterFeatureWriter:
    """Writes Arrow tables of feature rows (one row per entity) for one feature view."""

    def __init__(
        self,
        seeds: Iterable[Node],
        layout: RedisLayout,
        key_ttl_seconds: int | None = None,
        *,
        password: str | None = None,
        tls: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.seeds = list(seeds)
        self.layout = layout
        self._commands = ScriptCommands(layout, key_ttl_seconds)
        self._password, self._tls, self._timeout = password, tls, timeout
        self._clients: dict[Node, redis.Redis] = {}
        self._owners = self._read_map()
        for node in set(self._owners):
            if node is not None:
                self._client(node).script_load(WRITE_IF_NOT_OLDER)

    def _client(self, node: Node) -> redis.Redis:
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = redis.Redis(
                host=node[0],
                port=node[1],
                password=self._password,
                ssl=self._tls,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
        return client

    def _read_map(self) -> list[Node | None]:
        known = [n for n in getattr(self, "_owners", ()) if n is not None]
        failure: redis.RedisError | None = None
        for node in dict.fromkeys([*known, *self.seeds]):
            try:
                reply = self._client(node).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError as exc:
                failure = exc
                continue
            return slot_owners(reply, node)
        assert failure is not None
        raise failure

    def write(self, table: pa.Table) -> int:
        """Write `table`'s rows; returns how many were written (not skipped as older)."""
        if not table.num_rows:
            return 0
        keys = self.layout.keys_for(
            {k.name: table.column(k.name).to_pylist() for k in self.layout.view.join_keys}
        )
        slots = np.fromiter((key_slot(k) for k in keys), dtype=np.int64, count=len(keys))
        order = np.argsort(slots, kind="stable")  # stable: a key's rows keep their order
        slots = slots[order]
        bounds = slot_runs(slots)
        commands = self._commands.encode(table.take(pa.array(order)), bounds)
        return self._run(commands, [int(slots[b]) for b in bounds[:-1]])

    def _run(self, commands: list[bytes], slots: list[int]) -> int:
        written = 0
        pending = {i: (self._owners[slot], False) for i, slot in enumerate(slots)}
        last_error: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2.0))
            groups: dict[Node | None, list[int]] = {}
            for i, (node, _asking) in pending.items():
                groups.setdefault(node, []).append(i)
            retry: dict[int, tuple[Node | None, bool]] = {}
            reread = False
            sent: list[tuple[Node, list[int], redis.Connection]] = []
            for node, group in groups.items():
                if node is None:  # a slot no node serves (yet): ask the map again
                    retry.update((i, (None, False)) for i in group)
                    reread = True
                    continue
                connection = self._client(node).connection_pool.get_connection()
                try:
                    connection.send_packed_command(
                        [part for i in group
                         for part in ((_ASKING, commands[i]) if pending[i][1] else (commands[i],))],
                        check_health=False,
                    )  # fmt: skip
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self._drop(node, connection)
                    retry.update((i, (None, False)) for i in group)
                    last_error, reread = exc, True
                    continue
                sent.append((node, group, connection))
            for node, group, connection in sent:
                answered = 0
                try:
                    for i in group:
                        if pending[i][1]:
                            connection.read_response()  # ASKING's OK
                        try:
                            written += int(connection.read_response())
                        except MovedError as exc:
                            retry[i] = ((exc.host, exc.port), False)
                            last_error, reread = exc, True
                        except AskError as exc:
                            retry[i] = ((exc.host, exc.port), True)
                            last_error = exc
                        except (TryAgainError, ClusterDownError) as exc:
                            retry[i] = (pending[i][0], pending[i][1])
                            last_error = exc
                        except NoScriptError as exc:  # a node restarted empty
                            self._client(node).script_load(WRITE_IF_NOT_OLDER)
                            retry[i] = (pending[i][0], pending[i][1])
                            last_error = exc
                        answered += 1
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    self._drop(node, connection)
                    # The unanswered may have run or not: resent (a second run is harmless).
                    retry.update((i, (None, False)) for i in group[answered:])
                    last_error, reread = exc, True
                    continue
                self._client(node).connection_pool.release(connection)
            if not retry:
                return written
            if reread:
                try:
                    self._owners = self._read_map()
                except redis.RedisError as exc:
                    last_error = exc
            pending = {
                i: (self._owners[slots[i]] if node is None or (not asking and reread) else node,
                    asking)
                for i, (node, asking) in retry.items()
            }  # fmt: skip
        assert last_error is not None
        raise last_error

    def _drop(self, node: Node, connection: redis.Connection) -> None:
        # Replies may still be in flight: this connection can't be reused.
        connection.disconnect()
        self._client(node).connection_pool.release(connection)

    def flush(self) -> int:
        """Every write is answered before it returns: nothing is outstanding."""
        return 0

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
