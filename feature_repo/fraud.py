"""Card-payment fraud features: THE one definition every engine reads from the Feast registry.

Declarations only. Storage locations and the Kafka address come from the featurestore settings.
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

card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.INT64,
              description="A payment card")
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.INT64,
                  description="An acquiring merchant")

# The raw transaction event, as it arrives on Kafka (JSON) and as it is archived (Parquet).
# The fraud label is not part of the event: it arrives later, in `transaction_labels`.
TRANSACTION_SCHEMA = (
    "transaction_id STRING NOT NULL, card_id BIGINT NOT NULL, merchant_id BIGINT NOT NULL, "
    "amount DOUBLE NOT NULL, currency STRING NOT NULL, merchant_category STRING, country STRING, "
    "channel STRING NOT NULL, event_timestamp TIMESTAMP NOT NULL"
)
# Inclusive bounds of numeric event fields; events outside go to the dead-letter topic.
EVENT_RANGES = {"amount": "0..1000000"}

transactions_raw = FileSource(
    name="transactions_raw",
    path=str(settings.raw_dir / "transactions"),
    timestamp_field="event_timestamp",
    description="Raw transaction events, partitioned by event_date (the stream's archive).",
)

transaction_labels = FileSource(
    name="transaction_labels",
    path=str(settings.raw_dir / "labels"),
    timestamp_field="label_timestamp",
    description="Fraud labels (is_fraud) per transaction, known only at label_timestamp.",
)


def _transactions_stream(view_name: str) -> KafkaSource:
    """The transactions topic, backed offline by the feature table of `view_name`."""
    return KafkaSource(
        name=f"{view_name}_stream",
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=settings.transactions_topic,
        timestamp_field="event_timestamp",
        message_format=JsonFormat(schema_json=TRANSACTION_SCHEMA),
        watermark_delay_threshold=timedelta(minutes=5),
        batch_source=FileSource(
            name=f"{view_name}_offline",
            path=str(settings.offline_dir / view_name),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        ),
        # Producers key messages by card, so each card's events stay in order in one partition;
        # the worker checks the key. Events more than 5 minutes ahead of the worker's clock, or
        # outside the years 2000..2100, are dead letters.
        tags={"raw_source": transactions_raw.name, "message_key": "card_id",
              "max_future_skew": "5m", "timestamp_range": "2000..2100",
              **{f"valid_range.{name}": bounds for name, bounds in EVENT_RANGES.items()}},
    )


CARD_AGGREGATIONS = [
    Aggregation(column="amount", function=function, time_window=window,
                name=f"card_{label}_{suffix}")
    for suffix, window in (("10m", timedelta(minutes=10)), ("1h", timedelta(hours=1)),
                           ("24h", timedelta(hours=24)))
    for function, label in (("count", "txn_count"), ("sum", "amount_sum"),
                            ("mean", "amount_mean"), ("max", "amount_max"))
] + [
    Aggregation(column="merchant_id", function="count_distinct",
                time_window=timedelta(hours=24), name="card_distinct_merchants_24h"),
]

MERCHANT_AGGREGATIONS = [
    Aggregation(column="amount", function=function, time_window=window,
                name=f"merchant_{label}_{suffix}")
    for suffix, window in (("1h", timedelta(hours=1)), ("24h", timedelta(hours=24)))
    for function, label in (("count", "txn_count"), ("sum", "amount_sum"))
]

card_transaction_features = StreamFeatureView(
    name="card_transaction_features",
    description="Per-card spending over sliding windows ending at each transaction.",
    entities=[card],
    source=_transactions_stream("card_transaction_features"),
    aggregations=CARD_AGGREGATIONS,
    timestamp_field="event_timestamp",
    schema=[Field(name="card_id", dtype=Int64), *aggregated_schema(CARD_AGGREGATIONS)],
    ttl=timedelta(days=1),
    online=True,
    offline=True,
    tags={"team": "fraud"},
)

merchant_transaction_features = StreamFeatureView(
    name="merchant_transaction_features",
    description="Per-merchant volume over sliding windows ending at each transaction.",
    entities=[merchant],
    source=_transactions_stream("merchant_transaction_features"),
    aggregations=MERCHANT_AGGREGATIONS,
    timestamp_field="event_timestamp",
    schema=[Field(name="merchant_id", dtype=Int64), *aggregated_schema(MERCHANT_AGGREGATIONS)],
    ttl=timedelta(days=1),
    online=True,
    offline=True,
    tags={"team": "fraud"},
)

card_profile = FeatureView(
    name="card_profile",
    description="Daily snapshot of the card account from the issuing system.",
    entities=[card],
    source=FileSource(
        name="card_profiles",
        path=str(settings.raw_dir / "card_profiles"),
        timestamp_field="event_timestamp",
    ),
    schema=[
        Field(name="card_id", dtype=Int64),
        Field(name="credit_limit", dtype=Float64),
        Field(name="card_age_days", dtype=Int64),
        Field(name="home_country", dtype=String),
        Field(name="card_tier", dtype=String),
    ],
    ttl=timedelta(days=2),
    online=True,
    tags={"team": "fraud"},
)

transaction_request = RequestSource(
    name="transaction_request",
    schema=[Field(name="amount", dtype=Float64)],
)


@on_demand_feature_view(
    sources=[card_transaction_features, transaction_request],
    schema=[Field(name="amount_to_card_mean_24h", dtype=Float64)],
    # Python mode: columns as lists, no DataFrame per request (pandas would cost most of a lookup).
    mode="python",
    description="The requested amount relative to the card's 24 h mean amount.",
)
def transaction_amount_ratio(inputs: dict[str, list]) -> dict[str, list]:
    return {"amount_to_card_mean_24h": [
        amount / mean if amount is not None and mean is not None and mean > 0 else None
        for amount, mean in zip(inputs["amount"], inputs["card_amount_mean_24h"])
    ]}


fraud_detection_v1 = FeatureService(
    name="fraud_detection_v1",
    features=[
        card_transaction_features,
        merchant_transaction_features,
        card_profile,
        transaction_amount_ratio,
    ],
    description="Features of the real-time card fraud model, version 1.",
)
