"""A test-only ride-hailing feature repo: a user's own repo, nothing of the fraud example.

Riders (string keys) take trips from drivers (integer keys). Trip events stream in on Kafka,
keyed by rider; a batch source holds daily driver profiles; trip outcomes (did the rider tip?)
are the training entities and their label. The topic is named after the Feast project so that
every test run has its own.
"""

from datetime import timedelta

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    KafkaSource,
    RequestSource,
    ValueType,
)
from feast.aggregation import Aggregation
from feast.data_format import JsonFormat
from feast.on_demand_feature_view import on_demand_feature_view
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64, String

from featurestore.aggregations import aggregated_schema
from featurestore.settings import get_settings

settings = get_settings()
TRIPS_TOPIC = f"{settings.project}-trips"
TRIP_SCHEMA = (
    "trip_id STRING NOT NULL, rider_id STRING NOT NULL, driver_id BIGINT NOT NULL, "
    "fare DOUBLE NOT NULL, distance_km DOUBLE NOT NULL, event_timestamp TIMESTAMP NOT NULL"
)

rider = Entity(name="rider", join_keys=["rider_id"], value_type=ValueType.STRING)
driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)

trips_raw = FileSource(name="trips_raw", path=str(settings.raw_dir / "trips"),
                       timestamp_field="event_timestamp")
trip_outcomes = FileSource(name="trip_outcomes", path=str(settings.raw_dir / "trip_outcomes"),
                           timestamp_field="event_timestamp")

trips_stream = KafkaSource(
    name="trips_stream",
    kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
    topic=TRIPS_TOPIC,
    timestamp_field="event_timestamp",
    message_format=JsonFormat(schema_json=TRIP_SCHEMA),
    watermark_delay_threshold=timedelta(minutes=5),
    batch_source=FileSource(name="rider_trips_offline",
                            path=str(settings.offline_dir / "rider_trips"),
                            timestamp_field="event_timestamp", created_timestamp_column="created"),
    tags={"raw_source": trips_raw.name, "message_key": "rider_id",
          "valid_range.fare": "0..10000"},
)

RIDER_AGGREGATIONS = [
    Aggregation(column="fare", function="count", time_window=timedelta(hours=24),
                name="rider_trips_24h"),
    Aggregation(column="fare", function="max", time_window=timedelta(hours=24),
                name="rider_fare_max_24h"),
    Aggregation(column="distance_km", function="mean", time_window=timedelta(hours=24),
                name="rider_distance_mean_24h"),
]

rider_trips = StreamFeatureView(
    name="rider_trips",
    entities=[rider],
    source=trips_stream,
    aggregations=RIDER_AGGREGATIONS,
    timestamp_field="event_timestamp",
    schema=[Field(name="rider_id", dtype=String), *aggregated_schema(RIDER_AGGREGATIONS)],
    ttl=timedelta(days=1),
    online=True,
    offline=True,
)

driver_profile = FeatureView(
    name="driver_profile",
    entities=[driver],
    source=FileSource(name="driver_profiles", path=str(settings.raw_dir / "driver_profiles"),
                      timestamp_field="event_timestamp"),
    schema=[
        Field(name="driver_id", dtype=Int64),
        Field(name="rating", dtype=Float64),
        Field(name="seats", dtype=Int64),
        Field(name="city", dtype=String),
    ],
    ttl=timedelta(days=7),
    online=True,
)

trip_request = RequestSource(name="trip_request",
                             schema=[Field(name="distance_km", dtype=Float64)])


@on_demand_feature_view(
    sources=[rider_trips, trip_request],
    schema=[Field(name="distance_to_rider_mean", dtype=Float64)],
    mode="python",
)
def trip_distance_ratio(inputs: dict[str, list]) -> dict[str, list]:
    return {"distance_to_rider_mean": [
        distance / mean if mean else None
        for distance, mean in zip(inputs["distance_km"], inputs["rider_distance_mean_24h"])
    ]}


tip_model_v1 = FeatureService(
    name="tip_model_v1", features=[rider_trips, driver_profile, trip_distance_ratio]
)
