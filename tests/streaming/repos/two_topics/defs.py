"""A test-only feature repo with two stream sources on two topics.

`clicks` (keyed by user) feeds a user view and, through a repartition stage, a page view;
`orders` (keyed by shop) feeds a shop view. The harness gives every run a unique transactions
topic name; both topics here are derived from it, so runs never share a topic.
"""

from datetime import timedelta

from feast import Entity, Field, FileSource, KafkaSource, ValueType
from feast.aggregation import Aggregation
from feast.data_format import JsonFormat
from feast.stream_feature_view import StreamFeatureView
from feast.types import Int64

from featurestore.aggregations import aggregated_schema
from featurestore.settings import get_settings

settings = get_settings()
CLICKS_TOPIC = f"{settings.transactions_topic}-clicks"
ORDERS_TOPIC = f"{settings.transactions_topic}-orders"
CLICKS_SCHEMA = "user_id BIGINT NOT NULL, page_id BIGINT NOT NULL, dwell DOUBLE NOT NULL, " \
    "event_timestamp TIMESTAMP NOT NULL"
ORDERS_SCHEMA = "shop_id BIGINT NOT NULL, total DOUBLE NOT NULL, event_timestamp TIMESTAMP NOT NULL"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
page = Entity(name="page", join_keys=["page_id"], value_type=ValueType.INT64)
shop = Entity(name="shop", join_keys=["shop_id"], value_type=ValueType.INT64)

clicks_raw = FileSource(name="clicks_raw", path=str(settings.raw_dir / "clicks"),
                        timestamp_field="event_timestamp")
orders_raw = FileSource(name="orders_raw", path=str(settings.raw_dir / "orders"),
                        timestamp_field="event_timestamp")


def _source(view: str, topic: str, schema: str, raw: FileSource, key: str) -> KafkaSource:
    return KafkaSource(
        name=f"{view}_stream",
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=topic,
        timestamp_field="event_timestamp",
        message_format=JsonFormat(schema_json=schema),
        watermark_delay_threshold=timedelta(minutes=1),
        batch_source=FileSource(name=f"{view}_offline", path=str(settings.offline_dir / view),
                                timestamp_field="event_timestamp",
                                created_timestamp_column="created"),
        tags={"raw_source": raw.name, "message_key": key},
    )


def _view(name: str, entity: Entity, key: str, source: KafkaSource, aggregations) -> StreamFeatureView:
    return StreamFeatureView(
        name=name, entities=[entity], source=source, aggregations=aggregations,
        timestamp_field="event_timestamp",
        schema=[Field(name=key, dtype=Int64), *aggregated_schema(aggregations)],
        ttl=timedelta(days=1), online=True, offline=True,
    )


USER_AGGREGATIONS = [
    Aggregation(column="dwell", function="sum", time_window=timedelta(hours=1), name="dwell_sum"),
    Aggregation(column="page_id", function="count_distinct", time_window=timedelta(hours=1),
                name="pages"),
]
PAGE_AGGREGATIONS = [
    Aggregation(column="dwell", function="count", time_window=timedelta(minutes=30), name="views"),
]
SHOP_AGGREGATIONS = [
    Aggregation(column="total", function="max", time_window=timedelta(hours=2), name="top"),
    Aggregation(column="total", function="count", time_window=timedelta(hours=2), name="orders"),
]

user_clicks = _view("user_clicks", user, "user_id",
                    _source("user_clicks", CLICKS_TOPIC, CLICKS_SCHEMA, clicks_raw, "user_id"),
                    USER_AGGREGATIONS)
page_clicks = _view("page_clicks", page, "page_id",
                    _source("page_clicks", CLICKS_TOPIC, CLICKS_SCHEMA, clicks_raw, "user_id"),
                    PAGE_AGGREGATIONS)
shop_orders = _view("shop_orders", shop, "shop_id",
                    _source("shop_orders", ORDERS_TOPIC, ORDERS_SCHEMA, orders_raw, "shop_id"),
                    SHOP_AGGREGATIONS)
