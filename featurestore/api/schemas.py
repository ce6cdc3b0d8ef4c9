"""Request and response bodies of the API, with the examples shown in its OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_ENTITIES_EXAMPLE = {"card_id": [1, 2], "merchant_id": [10, 11], "amount": [42.5, 980.0]}


class OnlineFeaturesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"feature_service": "fraud_detection_v1", "entities": _ENTITIES_EXAMPLE},
            {"features": ["card_transaction_features:card_txn_count_1h",
                          "card_profile:credit_limit"],
             "entities": {"card_id": [1, 2, 3]}},
        ]},
    )

    feature_service: str | None = Field(None, description="A feature service name.")
    features: list[str] | None = Field(
        None, description="Feature references '<feature view>:<feature>' (instead of a service)."
    )
    entities: dict[str, list[Any]] = Field(
        description="Columns of entity keys (and request fields of on-demand features), "
        "one value per entity, all of one length."
    )
    full_feature_names: bool = Field(False, description="Name outputs '<view>__<feature>'.")

    @model_validator(mode="after")
    def _one_selection(self) -> OnlineFeaturesRequest:
        if (self.feature_service is None) == (self.features is None):
            raise ValueError("give exactly one of 'feature_service' and 'features'")
        return self


class FeatureColumn(BaseModel):
    values: list[Any]
    statuses: list[Literal["PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"]]
    event_timestamps: list[str | None]


class FeatureNames(BaseModel):
    feature_names: list[str]


class OnlineFeaturesResponse(BaseModel):
    """Feast's response shape: one result per output column (join keys first), aligned."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "metadata": {"feature_names": ["card_id", "card_txn_count_1h"]},
        "results": [
            {"values": [1, 2], "statuses": ["PRESENT", "PRESENT"],
             "event_timestamps": [None, None]},
            {"values": [3, None], "statuses": ["PRESENT", "NOT_FOUND"],
             "event_timestamps": ["2026-01-14T23:59:58.120000Z", None]},
        ],
    }]})

    metadata: FeatureNames
    results: list[FeatureColumn]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"entities": _ENTITIES_EXAMPLE}]}
    )

    entities: dict[str, list[Any]] = Field(
        description="Transactions as columns: the model's entity keys and request fields."
    )


class ScoreResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": {"export_id": "exp-3f2a9c41d0e7", "feature_service": "fraud_detection_v1"},
        "scores": [0.013, 0.871],
    }]})

    model: dict[str, Any]
    scores: list[float]


class DatasetRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "feature_service": "fraud_detection_v1",
            "entities": {
                "card_id": [1, 2], "merchant_id": [10, 11], "amount": [42.5, 980.0],
                "event_timestamp": ["2026-01-10T12:00:00Z", "2026-01-11T08:30:00Z"],
                "is_fraud": [False, True],
            },
        }]},
    )

    feature_service: str | None = None
    features: list[str] | None = None
    entities: dict[str, list[Any]] = Field(
        description="The entity table as columns: join keys, 'event_timestamp' (ISO-8601), "
        "request fields and any other columns (labels) to carry into the dataset."
    )

    @model_validator(mode="after")
    def _one_selection(self) -> DatasetRequest:
        if (self.feature_service is None) == (self.features is None):
            raise ValueError("give exactly one of 'feature_service' and 'features'")
        return self


class DatasetJob(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "ds-5b1e0c7a9f22", "status": "succeeded", "feature_service": "fraud_detection_v1",
        "rows": 2, "export_id": "exp-3f2a9c41d0e7", "error": None,
        "created_at": "2026-11-23T10:00:00Z", "finished_at": "2026-11-23T10:00:01Z",
        "download": "/v1/datasets/ds-5b1e0c7a9f22/download",
    }]})

    id: str
    status: Literal["running", "succeeded", "failed"]
    feature_service: str | None
    rows: int | None
    export_id: str | None
    error: str | None
    created_at: str
    finished_at: str | None
    download: str | None


class ErrorBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": {"code": "unknown_name",
                  "message": "unknown feature service 'fraud_v9'; the registry has: "
                             "['fraud_detection_v1']"},
    }]})

    error: dict[str, Any]
