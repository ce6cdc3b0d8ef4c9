"""The online store on a real 3-master Redis Cluster (the session's `redis_cluster`): hash slots
against a naive CRC16 and the server's own CLUSTER KEYSLOT, materialization read back by Feast's
cluster reader, the API's answers against Feast's, never-older across slots, a slot migrating
under reads and writes (ASK, TRYAGAIN, MOVED), and a node killed then restarted."""

from __future__ import annotations

import subprocess
import threading
from datetime import UTC, datetime, time

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import AskError

from featurestore.online.cluster import command_key, key_slot
from featurestore.online.resp import pack
from tests.featurestore import pipeline
from tests.servers import wait_for

pytestmark = [pytest.mark.spark, pytest.mark.redis, pytest.mark.postgres]
SERVICE = "fraud_detection_v1"
# Keys with braces in every position: the spec hashes only a non-empty `{...}`, first pair wins.
keys = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([b"{", b"}", b"a", b"\x00", b"\xff", b"{}", b"x}"]), max_size=12).map(
        b"".join
    ),
)


def naive_crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM) bit by bit, as in the Redis Cluster spec's reference code."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def naive_slot(key: bytes) -> int:
    for start, char in enumerate(key):
        if char == ord("{"):
            for end in range(start + 1, len(key)):
                if key[end] == ord("}"):
                    if end > start + 1:
                        return naive_crc16(key[start + 1 : end]) % 16384
                    return naive_crc16(key) % 16384
            break
    return naive_crc16(key) % 16384


def test_the_spec_example_slot() -> None:
    assert naive_crc16(b"123456789") == 0x31C3  # the spec's check value
    assert key_slot(b"123456789") == 0x31C3 % 16384


@given(keys)
def test_key_slot_equals_a_naive_crc16(key: bytes) -> None:
    assert key_slot(key) == naive_slot(key)


@given(keys)
def test_key_slot_equals_the_servers_keyslot(redis_cluster, key: bytes) -> None:
    node = redis_cluster.node(redis_cluster.ports[0])
    assert key_slot(key) == node.execute_command("CLUSTER", "KEYSLOT", key)


@given(keys, st.lists(st.binary(max_size=8), max_size=3))
def test_command_key_is_the_first_argument(key: bytes, fields: list[bytes]) -> None:
    assert command_key(pack(b"HMGET", key, *fields)) == key


def _moment(day) -> datetime:
    return datetime.combine(day, time(), UTC)


def _materialize(settings, engine: str = "local") -> None:
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import materialize

    store = feature_store(settings)
    start, end = _moment(pipeline.START), _moment(pipeline.END)
    ranges = [(v, start, end) for v in select_views(store, None)]
    materialize(settings, store, ranges, engine=engine)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clustered(served, redis_cluster):
    """The served dataset's settings on the cluster, materialized into it."""
    # A generous serving timeout: this machine's load can stall a first connection past the
    # default 1 s; a killed node is refused at once, whatever the timeout.
    settings = served.model_copy(update={
        "redis_url": redis_cluster.url, "redis_type": "redis_cluster", "api_auth": "off",
        "serve_redis_timeout_seconds": 10.0,
    })  # fmt: skip
    redis_cluster.flush()
    _materialize(settings)
    return settings


@pytest.fixture
def client(clustered):
    from featurestore.api.app import create_app

    with TestClient(create_app(clustered), raise_server_exceptions=False) as client:
        yield client


def _ids(settings, view: str, key: str) -> list[int]:
    table = ds.dataset(str(settings.offline_dir / view), format="parquet", partitioning="hive")
    return sorted(set(table.to_table(columns=[key]).column(key).to_pylist()))


def _entities(settings, count: int) -> dict[str, list]:
    cards = _ids(settings, "card_transaction_features", "card_id")[: count - 1] + [999_999_999]
    merchants = _ids(settings, "merchant_transaction_features", "merchant_id")
    return {
        "card_id": cards,
        "merchant_id": [merchants[i % len(merchants)] for i in range(len(cards))],
        "amount": [10.0 + i for i in range(len(cards))],
    }


def _columns(body: dict) -> dict[str, list]:
    return {
        name: column["values"]
        for name, column in zip(body["metadata"]["feature_names"], body["results"])
    }


def _feast(settings, entities: dict[str, list]) -> dict[str, list]:
    from featurestore.feast_config import feature_store

    store = feature_store(settings)
    return store.get_online_features(
        features=store.get_feature_service(SERVICE), entity_rows=entities
    ).to_dict()


def _assert_api_equals_feast(client, settings, entities: dict[str, list]) -> None:
    response = client.post(
        "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
    )
    assert response.status_code == 200, response.text
    ours, feast = _columns(response.json()), _feast(settings, entities)
    assert sorted(ours) == sorted(feast)
    for name, values in feast.items():
        assert ours[name] == pytest.approx(values, nan_ok=True), name


def test_the_rendered_config_selects_feasts_cluster_store(clustered, redis_cluster) -> None:
    from featurestore.feast_config import repo_config_dict

    online = repo_config_dict(clustered, secrets=False)["online_store"]
    assert online["redis_type"] == "redis_cluster"
    assert online["connection_string"] == ",".join(f"127.0.0.1:{p}" for p in redis_cluster.ports)


def test_feast_reads_from_the_cluster_what_a_single_redis_holds(
    clustered, served, redis_cluster, redis_client
) -> None:
    """Materialized into the cluster and into one Redis: Feast's cluster reader and its single
    Redis reader see the same rows, for every view and every entity."""
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from tests.conftest import REDIS_URL

    single = served.model_copy(update={"redis_url": REDIS_URL})
    _materialize(single)
    on_cluster, on_single = feature_store(clustered), feature_store(single)
    for port in redis_cluster.ports:  # the rows are spread over every master
        assert redis_cluster.node(port).dbsize() > 0
    for view in select_views(on_cluster, None):
        key = view.join_keys[0].name
        offline = ds.dataset(str(view.offline.path), format="parquet", partitioning="hive")
        rows = [{key: i} for i in sorted(set(offline.to_table(columns=[key])[key].to_pylist()))]
        refs = [f"{view.name}:{f.name}" for f in view.features]
        read = on_cluster.get_online_features(features=refs, entity_rows=rows).to_dict()
        assert read == on_single.get_online_features(features=refs, entity_rows=rows).to_dict()
        assert all(v is not None for v in read[view.features[0].name]), view.name


@pytest.mark.heavy  # ~29 s: the executors' Python workers import Feast
def test_the_spark_engine_writes_the_local_engines_hashes_into_the_cluster(
    clustered, redis_cluster
) -> None:
    """Spark tasks, each with its own cluster writer, leave every master holding the hashes
    the local engine left (the `clustered` fixture's), key by key and field by field."""

    def dump() -> dict[int, dict]:
        return {
            port: {key: node.hgetall(key) for key in node.scan_iter(count=10_000)}
            for port in redis_cluster.ports
            for node in [redis_cluster.node(port)]
        }

    local = dump()
    assert all(local.values())  # rows on every master
    redis_cluster.flush()
    _materialize(clustered, engine="spark")
    assert dump() == local


def test_the_apis_answers_equal_feasts_on_the_cluster(clustered, client) -> None:
    _assert_api_equals_feast(client, clustered, _entities(clustered, 100))
    _assert_api_equals_feast(client, clustered, _entities(clustered, 1))
    assert client.get("/readyz").status_code == 200


def _profile_rows(cards: list[int], micros: int, limit: float) -> pa.Table:
    return pa.table({
        "card_id": pa.array(cards, pa.int64()),
        "event_timestamp": pa.array([micros] * len(cards), pa.timestamp("us", tz="UTC")),
        "credit_limit": [limit] * len(cards),
        "card_age_days": [1] * len(cards),
        "home_country": ["FR"] * len(cards),
        "card_tier": ["gold"] * len(cards),
    })  # fmt: skip


def _writer(settings, view: str = "card_profile"):
    from featurestore.definitions import select_views
    from featurestore.feast_config import feature_store
    from featurestore.materialize import writer_for

    store = feature_store(settings)
    [definition] = select_views(store, [view])
    return writer_for(settings, store, definition), definition


def _limits(settings, cards: list[int]) -> list[float | None]:
    from featurestore.feast_config import feature_store

    return (
        feature_store(settings)
        .get_online_features(
            features=["card_profile:credit_limit"], entity_rows=[{"card_id": c} for c in cards]
        )
        .to_dict()["credit_limit"]
    )


def test_an_older_row_never_replaces_a_newer_one_across_slots(clustered) -> None:
    """One batch over hundreds of slots on all masters: its older rows are skipped, its newer
    ones written, as on one Redis."""
    from featurestore.online.cluster_writer import ClusterFeatureWriter

    writer, _ = _writer(clustered)
    assert isinstance(writer, ClusterFeatureWriter)
    cards = list(range(50_000_000, 50_000_600))
    slots = {key_slot(k) for k in writer.layout.keys_for({"card_id": cards})}
    assert len(slots) > 500
    t0 = 1_772_000_000_000_000
    try:
        assert writer.write(_profile_rows(cards, t0, 1.0)) == len(cards)
        older, newer = cards[::2], cards[1::2]
        mixed = pa.concat_tables([
            _profile_rows(older, t0 - 1, 2.0), _profile_rows(newer, t0 + 1, 3.0)
        ])  # fmt: skip
        assert writer.write(mixed) == len(newer)
        assert writer.write(_profile_rows(cards, t0 - 10**6, 4.0)) == 0
    finally:
        writer.close()
    assert _limits(clustered, older) == [1.0] * len(older)
    assert _limits(clustered, newer) == [3.0] * len(newer)


def _ids_per_slot(layout, cards: list[int]) -> dict[int, int]:
    return {key_slot(layout.keys_for({"card_id": [c]})[0]): c for c in cards}


def test_a_slot_migrating_mid_read_and_write_gives_right_answers(
    clustered, client, redis_cluster
) -> None:
    """By hand, so each redirection is certain: slot S1's key moved to the importing node
    (reads of it get ASK), slot S2 migrating with its key still home (served there); a write to
    S1 of a moved key and a new one gets TRYAGAIN until the migration ends, then lands; after
    SETSLOT NODE the old owner answers MOVED and the reader re-reads the map."""
    from featurestore.online.redis_writer import CHUNK_ROWS

    writer, _ = _writer(clustered)
    layout = writer.layout
    cards = _ids(clustered, "card_transaction_features", "card_id")
    by_slot = _ids_per_slot(layout, cards)
    source = redis_cluster.owner(next(iter(by_slot)))
    home = [(s, c) for s, c in by_slot.items() if redis_cluster.owner(s) == source]
    (s1, c1), (s2, c2) = home[:2]
    target = next(p for p in redis_cluster.ports if p != source)
    src, dst = redis_cluster.node(source), redis_cluster.node(target)
    src_id, dst_id = redis_cluster.node_id(source), redis_cluster.node_id(target)
    entities = {"card_id": [c1, c2], "merchant_id": [1, 2], "amount": [1.0, 2.0]}
    before = client.post(
        "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
    ).json()

    [key1] = layout.keys_for({"card_id": [c1]})
    try:
        for slot in (s1, s2):
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", key1)
        with pytest.raises(AskError) as redirected:
            src.hgetall(key1)
        assert type(redirected.value) is AskError  # not its subclass MovedError
        for _ in range(3):
            during = client.post(
                "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
            )
            assert during.status_code == 200, during.text
            assert during.json() == before

        # A new card in S1: its write meets a half-moved slot (one key there, one nowhere).
        new = next(c for c in range(60_000_000, 60_000_000 + 400_000)
                   if key_slot(layout.keys_for({"card_id": [c]})[0]) == s1)  # fmt: skip
        assert CHUNK_ROWS >= 2
        dst.config_resetstat()
        written: list[int] = []
        writing = threading.Thread(
            target=lambda: written.append(
                writer.write(_profile_rows([c1, new], 1_800_000_000_000_000, 9.0))
            )
        )
        writing.start()
        try:
            wait_for(lambda: "errorstat_TRYAGAIN" in dst.info("errorstats"),
                     10, "the write to meet TRYAGAIN")  # fmt: skip
        finally:
            for port in redis_cluster.ports:  # S1 ends on the target; the writer's retry lands
                redis_cluster.node(port).execute_command("CLUSTER", "SETSLOT", s1, "NODE", dst_id)
            writing.join(timeout=30)
        writer.close()
        assert written == [2]
        assert _limits(clustered, [c1, new]) == [9.0, 9.0]

        # S2 moves too: the source answers MOVED for c2, the reader follows and re-reads the map.
        [key2] = layout.keys_for({"card_id": [c2]})
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", key2)
        for port in redis_cluster.ports:
            redis_cluster.node(port).execute_command("CLUSTER", "SETSLOT", s2, "NODE", dst_id)
        _assert_api_equals_feast(client, clustered, entities)
        assert redis_cluster.owner(s2) == target
    finally:  # whatever failed, no slot is left half-moved for the next test
        for slot in (s1, s2):
            for port in redis_cluster.ports:
                redis_cluster.node(port).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_a_reshard_under_load_gives_no_wrong_answer_and_no_500(
    clustered, client, redis_cluster
) -> None:
    entities = _entities(clustered, 100)
    expected = client.post(
        "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
    ).json()
    source, target = redis_cluster.ports[0], redis_cluster.ports[1]
    reshard = subprocess.Popen(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}",
         "--cluster-from", redis_cluster.node_id(source),
         "--cluster-to", redis_cluster.node_id(target),
         "--cluster-slots", "400", "--cluster-yes", "--cluster-pipeline", "1"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    answers = 0
    try:
        while reshard.poll() is None or answers == 0:
            response = client.post(
                "/v1/online-features", json={"feature_service": SERVICE, "entities": entities}
            )
            assert response.status_code == 200, response.text
            assert response.json() == expected
            answers += 1
    finally:
        reshard.wait(timeout=120)
    assert reshard.returncode == 0
    redis_cluster.wait_ok()
    _assert_api_equals_feast(client, clustered, entities)


def test_a_node_killed_is_503_then_answers_again_by_itself(
    clustered, client, redis_cluster
) -> None:
    """Last in this module: the restarted node comes back empty."""
    entities = _entities(clustered, 100)
    body = {"feature_service": SERVICE, "entities": entities}
    before = _columns(client.post("/v1/online-features", json=body).json())
    victim = redis_cluster.ports[2]
    redis_cluster.kill(victim)
    try:
        for _ in range(3):
            down = client.post("/v1/online-features", json=body)
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == str(clustered.serve_retry_after_seconds)
            assert str(victim) not in down.text
        assert client.get("/readyz").status_code == 503
    finally:
        redis_cluster.start(victim)
    redis_cluster.wait_ok()
    _assert_api_equals_feast(client, clustered, entities)
    assert client.get("/readyz").status_code == 200
    # Rewritten, the restarted node's rows are served again.
    _materialize(clustered)
    after = _columns(client.post("/v1/online-features", json=body).json())
    assert after["card_txn_count_24h"][:-1] == before["card_txn_count_24h"][:-1]
