"""Recreated or truncated topics: the error that stops the worker, and `stream reset`.

A partition log records how far its topic partition was applied, a digest of the last record
it applied and the broker's id of the topic. A topic deleted and created again has a new id and
restarts its offsets at 0, so the log's last offset holds another record or none; a truncated
one no longer holds it. Either way resuming would skip or re-apply events silently, so the
worker re-reads that record first and stops with `TopicRestartedError` unless it is the same.

`featurestore stream reset` starts the named source topics over: it removes their partition logs
and hand-over points (`streaming.coldstart`), keeps what they wrote to the offline store (as
batch data: the raw archive then holds those events once, and the next start hands over from
it), and deletes their internal repartition topics (the worker recreates them empty). The next
worker reads each topic from its beginning and skips the events the offline store already has.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

from featurestore import offline
from featurestore.errors import FeatureStoreError, UnknownNameError
from featurestore.settings import Settings
from streaming import kafka
from streaming.topology import Topology

NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"  # what brokers without topic ids report


class TopicRestartedError(FeatureStoreError):
    """A consumed topic partition is not the one its partition log was applied from."""


def restarted(topic: str, partition: int, source_topic: str, group: str, what: str) -> str:
    return (
        f"topic {topic!r} partition {partition}: {what}. The topic was recreated or truncated; "
        "the worker stopped rather than skip or re-apply events. To start over on the topic "
        f"as it is now, stop every worker of group {group!r} and run `featurestore stream "
        f"reset --topic {source_topic}`"
    )


def record_digest(key: bytes | None, value: bytes | None) -> str:
    """A digest of a record's key and value that tells a null key or value from an empty one."""
    digest = hashlib.sha256()
    for part in (key, value):
        digest.update(b"\x00" if part is None else b"\x01%d:" % len(part) + part)
    return digest.hexdigest()


def topic_id(described: dict) -> str | None:
    """The broker's id of a described topic; None when the broker has no topic ids."""
    value = described.get("topic_id")
    return None if value is None or str(value) == NO_TOPIC_ID else str(value)


def select(topologies: list[Topology], topics: list[str] | None) -> list[Topology]:
    if not topics:
        return topologies
    known = {t.source_topic: t for t in topologies}
    unknown = [t for t in topics if t not in known]
    if unknown:
        raise UnknownNameError(
            f"no stream source reads topic(s) {unknown}; the registry's source topics: "
            f"{sorted(known)}"
        )
    return [known[t] for t in topics]


def reset(settings: Settings, topologies: list[Topology]) -> list[str]:
    """Start `topologies` over (see the module docstring); returns what was done, line by line."""
    done = []
    mark = uuid.uuid4().hex[:8]
    for topology in topologies:
        tables = {topology.raw.path}
        tables |= {view.offline.path for stage in topology.stages.values() for view in stage.views}
        for topic in topology.topics:
            logs = Path(settings.stream_log_dir) / topic
            if logs.exists():
                shutil.rmtree(logs)
                done.append(f"removed the partition logs of {topic} ({logs})")
            kept = _keep_as_batch(tables, topic, mark)
            if kept:
                done.append(f"kept {kept} offline file(s) {topic} wrote, as batch data")
    internal = [s.topic for t in topologies for s in t.stages.values() if not s.is_source]
    if internal:
        with kafka.admin(settings) as admin:
            gone = kafka.delete_topics(admin, internal)
        if gone:
            done.append(f"deleted the repartition topic(s) {gone}")
    return done


def _keep_as_batch(tables: set[Path], topic: str, mark: str) -> int:
    """Rename the offline files `topic` wrote to batch files; returns how many."""
    kept = 0
    for table in tables:
        for path in table.glob(f"{offline.PARTITION}=*/stream-{topic}-*.parquet"):
            # Renamed, so no new partition log takes them for its own unlogged output.
            path.rename(path.with_name(f"batch-{mark}-{path.name.removeprefix('stream-')}"))
            kept += 1
    return kept
