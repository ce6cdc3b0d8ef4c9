"""Redis Cluster for the serving fast path: hash slots, the slot -> node map, and a reader.

A cluster splits the key space into 16384 hash slots (CRC16 of the key, or of its `{hash tag}`,
modulo 16384), each served by one master. Feast's keys are `serialize_entity_key(entity) +
project`, binary and without a deliberate hash tag, so an entity's slot is the CRC16 of its whole
key, unless the bytes happen to hold a `{...}` pair, which the spec then hashes alone.

`ClusterPool` reads like `RedisPool` (`execute(commands)` -> replies in order), so the lookup
code does not know which it talks to: it routes each command by its key's slot, sends one
pipeline per node, all nodes at once, and follows the cluster's redirections: MOVED (the slot
has a new owner: the map is re-read) and ASK (the slot is migrating: this one command goes to
the importing node, preceded by ASKING). A node that cannot be reached, or a cluster that
answers CLUSTERDOWN, is RedisUnavailable, as a single Redis would be.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Iterable, Sequence

import hiredis

from featurestore.online.redis_pool import RedisAddress, RedisPool, RedisUnavailable
from featurestore.online.resp import pack

SLOTS = 16384
# Redirections one request may follow before it is an outage: a slot moves once per reshard
# step, so more than a few in a row means the cluster is changing faster than it can be read.
MAX_REDIRECTS = 5
Node = tuple[str, int]


def key_slot(key: bytes) -> int:
    """The hash slot of `key` (Redis Cluster spec): CRC16-CCITT (XMODEM), `crc_hqx` in C, of
    the part between the first `{` and the first `}` after it when that part is not empty,
    else of the whole key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


def command_key(packed: bytes) -> bytes:
    """The first argument (the key) of one RESP-packed command: `*N $len NAME $len KEY ...`."""
    at = packed.index(b"\r\n") + 3  # past `*N\r\n$`
    end = packed.index(b"\r\n", at)
    at = end + 2 + int(packed[at:end]) + 3  # past the command name and the next `\r\n$`
    end = packed.index(b"\r\n", at)
    start = end + 2
    return packed[start : start + int(packed[at:end])]


def slot_owners(reply: Sequence[Sequence[object]], answered_by: Node) -> list[Node | None]:
    """The master of each slot, from a CLUSTER SLOTS reply (None: no node serves it).

    A node that does not know its own address announces it as an empty host: that is the node
    that answered."""
    owners: list[Node | None] = [None] * SLOTS
    for entry in reply:
        first, last, master = entry[0], entry[1], entry[2]
        assert isinstance(first, int) and isinstance(last, int) and isinstance(master, list)
        host = master[0].decode() if master[0] else answered_by[0]
        node = (host, int(master[1]))
        owners[first : last + 1] = [node] * (last - first + 1)
    return owners


def redirection(error: BaseException) -> tuple[str, int, Node] | None:
    """("MOVED" or "ASK", slot, node) of a redirection error reply, None for any other."""
    words = str(error).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return words[0], int(words[1]), (host, int(port))


class ClusterPool:
    """Connections to the masters of one Redis Cluster, reused across requests of one loop."""

    def __init__(
        self, seeds: Iterable[Node], *, tls: bool, password: str | None, timeout: float
    ) -> None:
        self.seeds = list(seeds)
        self.tls = tls
        self.password = password
        self.timeout = timeout
        self.address = self._address(self.seeds[0])  # named in errors, as RedisPool's
        self._pools: dict[Node, RedisPool] = {}
        self._owners: list[Node | None] | None = None  # None: read the map before the next use

    def _address(self, node: Node) -> RedisAddress:
        return RedisAddress(node[0], node[1], 0, self.tls, self.password)

    def _pool(self, node: Node) -> RedisPool:
        pool = self._pools.get(node)
        if pool is None:
            pool = self._pools[node] = RedisPool(self._address(node), timeout=self.timeout)
        return pool

    async def _read_map(self) -> list[Node | None]:
        """The slot map, from the first node that answers: known masters first, then seeds."""
        known = dict.fromkeys([*(n for n in self._owners or () if n is not None), *self.seeds])
        failure: RedisUnavailable | None = None
        for node in known:
            try:
                [reply] = await self._pool(node).execute([pack(b"CLUSTER", b"SLOTS")])
            except RedisUnavailable as exc:
                failure = exc
                continue
            assert isinstance(reply, list)
            self._owners = slot_owners(reply, node)
            return self._owners
        assert failure is not None
        raise failure

    async def _owners_now(self) -> list[Node | None]:
        return self._owners if self._owners is not None else await self._read_map()

    async def execute(self, commands: Sequence[bytes]) -> list[object]:
        """Send packed single-key commands, one pipeline per node at once; their replies in
        order. Raises RedisUnavailable."""
        owners = await self._owners_now()
        slots = [key_slot(command_key(c)) for c in commands]
        replies: list[object] = [None] * len(commands)
        # Where each command still to answer goes, and whether ASKING must precede it.
        route: dict[int, tuple[Node | None, bool]] = {
            i: (owners[slot], False) for i, slot in enumerate(slots)
        }
        for _ in range(MAX_REDIRECTS + 1):
            groups: dict[Node, list[int]] = {}
            for i, (node, _asking) in route.items():
                if node is None:
                    self._owners = None
                    raise RedisUnavailable(self.address, f"no node serves slot {slots[i]}")
                groups.setdefault(node, []).append(i)
            answers = await asyncio.gather(
                *(self._send(node, [(commands[i], route[i][1]) for i in group])
                  for node, group in groups.items()),
                return_exceptions=True,
            )  # fmt: skip
            retry: dict[int, tuple[Node | None, bool]] = {}
            moved = False
            for (node, group), answer in zip(groups.items(), answers):
                if isinstance(answer, BaseException):
                    # An unreachable node may have been replaced: re-read the map next time.
                    self._owners = None
                    raise answer
                for i, reply in zip(group, answer):
                    if not isinstance(reply, hiredis.ReplyError):
                        replies[i] = reply
                        continue
                    redirect = redirection(reply)
                    if redirect is None:
                        word = str(reply).split(" ", 1)[0] or "an error"
                        raise RedisUnavailable(self._address(node), f"answered {word}")
                    kind, _slot, target = redirect
                    retry[i] = (target, kind == "ASK")
                    moved |= kind == "MOVED"
            if not retry:
                return replies
            if moved:
                owners = await self._read_map()
            route = retry
        raise RedisUnavailable(self.address, f"more than {MAX_REDIRECTS} redirections in a row")

    async def _send(self, node: Node, commands: list[tuple[bytes, bool]]) -> list[object]:
        """The replies of `commands` on `node`, error replies included (ASKING's OK dropped)."""
        packed: list[bytes] = []
        for command, asking in commands:
            if asking:
                packed.append(pack(b"ASKING"))
            packed.append(command)
        replies = await self._pool(node).execute(packed, error_replies=True)
        answers, at = [], 0
        for _command, asking in commands:
            at += asking
            answers.append(replies[at])
            at += 1
        return answers

    async def ping(self) -> None:
        """Every master answers, and says the cluster serves all its slots."""
        owners = await self._owners_now()
        masters = list(dict.fromkeys(n for n in owners if n is not None))
        infos = await asyncio.gather(
            *(self._pool(n).execute([pack(b"CLUSTER", b"INFO")]) for n in masters),
            return_exceptions=True,
        )
        for node, info in zip(masters, infos):
            if isinstance(info, BaseException):
                self._owners = None
                raise info
            [text] = info
            assert isinstance(text, bytes)
            if b"cluster_state:ok" not in text:
                raise RedisUnavailable(self._address(node), "answered cluster_state:fail")

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
