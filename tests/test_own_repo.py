"""A user's own feature repo, driven step by step through the real `featurestore` CLI.

The ride-hailing repo (tests/repos/ride_hailing/) shares nothing with the fraud example: string
rider keys on the stream, integer driver keys in a batch view, an on-demand view, a feature
service, trip outcomes as the training entities and `tipped` as the label. Its data is written
here with a seeded RNG. Each step is a `featurestore ...` command line against real Redis, a
Kafka-protocol broker and local Spark, and the test checks the values it gets back against what it
wrote. The one-shot steps run through the CLI's own Typer app in this process (on the session's
Spark: a process each paid ~10 s of imports and a JVM start); the two long-running ones, `stream
run` (stopped by SIGTERM) and `serve`, are the installed console script in processes of their own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import traceback
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import REDIS_URL
from tests.ride_repo import ride_env
from tests.servers import free_port, wait_for
from tests.streaming.harness import FAST_WORKER, StreamRun, create_topic

HISTORY = [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]
LIVE_DAY = date(2026, 11, 5)  # replayed through the stream
TIMESTAMP = pa.timestamp("us", tz="UTC")
DRIVERS = list(range(100, 130))
RIDERS = [f"r-{i:03d}" for i in range(40)]
TRIPS_A_DAY = 250
DAY = timedelta(days=1)
# The console script installed beside this interpreter: the command a user runs.
FEATURESTORE = str(Path(sys.executable).with_name("featurestore"))


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _write_day(root: Path, table: pa.Table, day: date) -> None:
    partition = root / f"event_date={day.isoformat()}"
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, partition / "part-0.parquet")


def _profiles(rng: np.random.Generator) -> dict[date, pa.Table]:
    """One profile per driver and day, valid from midnight."""
    cities = rng.choice(["lisbon", "porto", "faro"], len(DRIVERS))
    return {
        day: pa.table({
            "driver_id": pa.array(DRIVERS, pa.int64()),
            "rating": np.round(rng.uniform(3.5, 5.0, len(DRIVERS)), 2),
            "seats": pa.array(rng.choice([4, 6], len(DRIVERS)), pa.int64()),
            "city": pa.array(cities),
            "event_timestamp": pa.array([_midnight(day)] * len(DRIVERS), TIMESTAMP),
        })
        for day in [*HISTORY, LIVE_DAY]
    }


def _trips(rng: np.random.Generator, day: date) -> pa.Table:
    """A day of trip events in event-time order (whole seconds, after the profiles' midnight)."""
    seconds = np.sort(rng.integers(60, 86_400, TRIPS_A_DAY))
    return pa.table({
        "trip_id": [f"{day:%m%d}-{i}" for i in range(TRIPS_A_DAY)],
        "rider_id": rng.choice(RIDERS, TRIPS_A_DAY),
        "driver_id": pa.array(rng.choice(DRIVERS, TRIPS_A_DAY), pa.int64()),
        "fare": np.round(rng.uniform(4.0, 60.0, TRIPS_A_DAY), 2),
        "distance_km": np.round(rng.uniform(0.5, 25.0, TRIPS_A_DAY), 1),
        "event_timestamp": pa.array(
            [_midnight(day) + timedelta(seconds=int(s)) for s in seconds], TIMESTAMP
        ),
    })


def _outcomes(rng: np.random.Generator, trips: pa.Table, ratings: dict[int, float]) -> pa.Table:
    """Whether each trip was tipped: likelier with a well-rated driver and a short trip."""
    rating = np.array([ratings[d] for d in trips.column("driver_id").to_pylist()])
    distance = trips.column("distance_km").to_numpy()
    odds = 3.0 * (rating - 4.25) - 0.15 * (distance - 12.0)
    tipped = rng.random(trips.num_rows) < 1 / (1 + np.exp(-odds))
    return trips.select(["trip_id", "rider_id", "driver_id", "distance_km", "event_timestamp"]) \
        .append_column("tipped", pa.array(tipped))


def _window(trips: pa.Table, rider: str, moment: datetime) -> pa.Table:
    """The rider's trips in the 24 h window ending at `moment`: moment - 24h < t <= moment."""
    times = trips.column("event_timestamp")
    keep = pc.and_(
        pc.equal(trips.column("rider_id"), rider),
        pc.and_(pc.greater(times, pa.scalar(moment - DAY, TIMESTAMP)),
                pc.less_equal(times, pa.scalar(moment, TIMESTAMP))),
    )
    return trips.filter(keep)


@pytest.fixture
def repo_env(tmp_path: Path, kafka_bootstrap: str, redis_client) -> dict[str, str]:
    """The settings of one run: the ride-hailing repo (a copy: `apply` renders into it)."""
    env = ride_env(tmp_path)
    uid = env["FEATURESTORE_PROJECT"].removeprefix("ride")
    return {
        **os.environ,
        **env,
        "FEATURESTORE_DATABASE_URL": f"sqlite:///{tmp_path}/featurestore.db",
        "FEATURESTORE_STREAM_GROUP": f"g-{uid}",
        "FEATURESTORE_DEAD_LETTER_TOPIC": f"dlq-{uid}",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "COLUMNS": "200",
        **FAST_WORKER,
    }


def _cli(env: dict[str, str], *args: str) -> str:
    """`featurestore ARGS` in this process, in `env`: its output (stdout and stderr)."""
    from typer.testing import CliRunner

    from featurestore.cli import build_app

    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        done = CliRunner().invoke(build_app(), list(args))
    failure = "".join(traceback.format_exception(done.exception)) if done.exception else ""
    assert done.exit_code == 0, f"featurestore {' '.join(args)}:\n{done.output}\n{failure}"
    return done.output


@pytest.mark.heavy
def test_every_cli_step_on_a_ride_hailing_repo(repo_env, spark, tmp_path: Path) -> None:
    from featurestore.client import FeatureClient
    from featurestore.entities import entity_table
    from featurestore.errors import InputDataError, UnknownNameError
    from featurestore.feast_config import feature_store
    from featurestore.settings import Settings

    rng = np.random.default_rng(13)
    data = Path(repo_env["FEATURESTORE_DATA_DIR"])
    profiles = _profiles(rng)
    for day, table in profiles.items():
        _write_day(data / "raw" / "driver_profiles", table, day)
    history = []
    for day in HISTORY:
        trips = _trips(rng, day)
        ratings = dict(zip(DRIVERS, profiles[day].column("rating").to_pylist()))
        _write_day(data / "raw" / "trips", trips, day)
        _write_day(data / "raw" / "trip_outcomes", _outcomes(rng, trips, ratings), day)
        history.append(trips)
    live = _trips(rng, LIVE_DAY)
    pq.write_table(live, tmp_path / "live-trips.parquet")
    first, end = HISTORY[0].isoformat(), LIVE_DAY.isoformat()

    assert "applied" in _cli(repo_env, "apply")
    assert "rider_trips:" in _cli(repo_env, "backfill", "--start", first, "--end", end)
    _cli(repo_env, "materialize", "--start", f"{first}T00:00:00", "--end", f"{end}T00:00:00")

    entities = tmp_path / "entities.parquet"
    _cli(repo_env, "entities", "--source", "trip_outcomes", "--start", first, "--end", end,
         "--out", str(entities), "--column", "distance_km", "--column", "tipped")
    entity_rows = pq.read_table(entities)
    assert entity_rows.column_names == [
        "driver_id", "rider_id", "event_timestamp", "distance_km", "tipped"
    ]
    assert entity_rows.num_rows == TRIPS_A_DAY * len(HISTORY)

    exported = tmp_path / "export.parquet"
    _cli(repo_env, "export", "--entities", str(entities), "--out", str(exported),
         "--feature-service", "tip_model_v1")
    export = pq.read_table(exported)
    assert export.num_rows == entity_rows.num_rows
    assert {"tipped", "rating", "city", "rider_trips_24h", "distance_to_rider_mean"} <= set(
        export.column_names
    )
    # Point in time: each row has its driver's profile of that day and its rider's 24 h window.
    all_history = pa.concat_tables(history)
    for row in export.to_pylist()[::37]:
        day = row["event_timestamp"].date()
        profile = profiles[day].filter(pc.equal(profiles[day].column("driver_id"),
                                                row["driver_id"]))
        assert row["rating"] == profile.column("rating")[0].as_py()
        assert row["rider_trips_24h"] == _window(
            all_history, row["rider_id"], row["event_timestamp"]
        ).num_rows

    trained = _cli(repo_env, "train", "--export", str(exported), "--label", "tipped",
                   "--out", str(tmp_path / "tips.pt"), "--epochs", "3")
    reported = re.search(r"ROC AUC (\d\.\d+)", trained)
    assert reported, trained
    auc = float(reported.group(1))
    assert 0.5 < auc <= 1.0, trained

    topic = f"{repo_env['FEATURESTORE_PROJECT']}-trips"
    create_topic(repo_env["KAFKA_BOOTSTRAP_SERVERS"], topic, 2)
    sent = _cli(repo_env, "stream", "produce", "--from", str(tmp_path / "live-trips.parquet"))
    assert f"sent {TRIPS_A_DAY:,} events" in sent and topic in sent

    worker = subprocess.Popen(
        [FEATURESTORE, "stream", "run"],
        env=repo_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        run = StreamRun(tmp_path, repo_env["KAFKA_BOOTSTRAP_SERVERS"], REDIS_URL, env=repo_env)
        wait_for(lambda: run.checkpointed([topic]) or worker.poll() is not None, 120,
                 "the stream worker to checkpoint every trip")
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 0, output
    assert f"applied {TRIPS_A_DAY:,} events" in output, output

    # Online: the drivers' latest profiles (materialized) and the riders' windows at their
    # latest trip (the stream, seeded from the history at its cold start).
    with pytest.MonkeyPatch.context() as patch:
        for key, value in repo_env.items():
            patch.setenv(key, value)
        store = feature_store(Settings())
    last_day = profiles[HISTORY[-1]]
    online = store.get_online_features(
        features=["driver_profile:rating", "driver_profile:seats", "driver_profile:city"],
        entity_rows=[{"driver_id": d} for d in DRIVERS],
    ).to_dict()
    assert online["rating"] == last_day.column("rating").to_pylist()
    assert online["seats"] == last_day.column("seats").to_pylist()
    assert online["city"] == last_day.column("city").to_pylist()

    every_trip = pa.concat_tables([*history, live])
    riders = sorted(set(live.column("rider_id").to_pylist()))
    online = store.get_online_features(
        features=["rider_trips:rider_trips_24h", "rider_trips:rider_fare_max_24h",
                  "rider_trips:rider_distance_mean_24h"],
        entity_rows=[{"rider_id": r} for r in riders],
    ).to_dict()
    for i, rider in enumerate(riders):
        latest = pc.max(live.filter(pc.equal(live.column("rider_id"), rider))
                        .column("event_timestamp")).as_py()
        window = _window(every_trip, rider, latest)
        assert online["rider_trips_24h"][i] == window.num_rows, rider
        assert online["rider_fare_max_24h"][i] == pc.max(window.column("fare")).as_py(), rider
        assert online["rider_distance_mean_24h"][i] == pytest.approx(
            pc.mean(window.column("distance_km")).as_py(), rel=1e-9
        ), rider

    # Serving: the real API answers the user's feature service (string and int keys, an on-demand
    # feature over a request field) exactly as Feast's own reader does.
    entities = {"driver_id": DRIVERS[:len(riders)], "rider_id": riders[:len(DRIVERS)],
                "distance_km": [float(i + 1) for i in range(min(len(riders), len(DRIVERS)))]}
    expected = store.get_online_features(
        features=store.get_feature_service("tip_model_v1"), entity_rows=[
            dict(zip(entities, row)) for row in zip(*entities.values())
        ],
    ).to_dict()
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [FEATURESTORE, "serve", "--port", str(port), "--workers", "1"],
            env={**repo_env, "FEATURESTORE_API_AUTH": "off"}, stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        with FeatureClient(f"http://127.0.0.1:{port}") as client:
            wait_for(lambda: client.ready() or server.poll() is not None, 120, "featurestore serve")
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            served = client.online_features(entities, feature_service="tip_model_v1").to_dict()
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert sorted(served) == sorted(expected)
    for name, values in expected.items():
        assert served[name] == pytest.approx(values, nan_ok=True), name
    assert None not in served["rider_trips_24h"]

    # What `entities` refuses, in the user's terms: a source the repo lacks, a column its data lacks.
    with pytest.raises(UnknownNameError, match="no file data source 'trips'.*trip_outcomes"):
        entity_table(store, "trips", HISTORY[0], LIVE_DAY)
    with pytest.raises(InputDataError, match="no column.s. tip_amount; its columns: trip_id"):
        entity_table(store, "trip_outcomes", HISTORY[0], LIVE_DAY, columns=["tip_amount"])
