"""Request and response bodies of the API, with the examples shown in its OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from pydantic.json_schema import JsonDict

# JSON Schema (ECMA regex) of a string without NUL: PostgreSQL text cannot hold U+0000.
NO_NUL_PATTERN = "^[^\\u0000]*$"


def _storable(text: str) -> str:
    """A string our SQL database can store: no NUL, and UTF-8 encodable (a JSON body can carry a
    lone surrogate such as "\\ud800" that Python decodes but no database encodes)."""
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain lone surrogates (\\ud800-\\udfff)") from None
    return text


# A string parameter or body field that reaches our SQL database.
StoredText = Annotated[str, AfterValidator(_storable), Field(json_schema_extra={
    "pattern": NO_NUL_PATTERN,
})]


def _iso_text(value: object) -> object:
    # Pydantic would also take a number as seconds since 1970: the schema says an ISO string.
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic reports only a ValueError as the field's problem.
        raise ValueError("must be an ISO-8601 string with a UTC offset")  # noqa: TRY004
    return value


# A time in a body: an ISO-8601 string with its offset (Z or +hh:mm), nothing else.
IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


def exactly_one(first: tuple[str, dict], second: tuple[str, dict]) -> dict:
    """JSON Schema's `oneOf` for "give exactly one of two optional fields": a branch holds when
    its field is present and not null, as the model's own check counts them."""
    return {"oneOf": [
        {"required": [name], "properties": {name: schema}} for name, schema in (first, second)
    ]}


_ONE_SELECTION = exactly_one(
    ("feature_service", {"type": "string"}), ("features", {"type": "array"})
)
_ENTITIES_EXAMPLE: JsonDict = {"card_id": [1, 2], "merchant_id": [10, 11], "amount": [42.5, 980.0]}


class OnlineFeaturesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={**_ONE_SELECTION, "examples": [
            {"feature_service": "fraud_detection_v1", "entities": _ENTITIES_EXAMPLE},
            {"features": ["card_transaction_features:card_txn_count_1h",
                          "card_profile:credit_limit"],
             "entities": {"card_id": [1, 2, 3]}},
        ]},
    )

    feature_service: str | None = Field(None, description="A feature service name.")
    features: list[str] | None = Field(
        None, min_length=1,
        description="Feature references '<feature view>:<feature>' (instead of a service).",
    )
    entities: dict[str, list[Any]] = Field(
        description="Columns of entity keys (and request fields of on-demand features), "
        "one value per entity, all of one length."
    )
    full_feature_names: StrictBool = Field(
        False, description="Name outputs '<view>__<feature>'."
    )

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


class CompactOnlineFeaturesResponse(BaseModel):
    """`?format=compact`: the same columns as Feast's shape, names once, statuses as numbers."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "feature_names": ["card_id", "card_txn_count_1h"],
        "status_codes": {"1": "PRESENT", "2": "NULL_VALUE", "3": "NOT_FOUND",
                         "4": "OUTSIDE_MAX_AGE"},
        "values": [[1, 2], [3, None]],
        "statuses": [[1, 1], [1, 3]],
        "event_timestamps": [[None, None], ["2026-01-14T23:59:58.120000Z", None]],
    }]})

    feature_names: list[str]
    status_codes: dict[str, Literal["PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"]] = (
        Field(description="Each status number (Feast's `FieldStatus` enum) and its name.")
    )
    values: list[list[Any]] = Field(description="One array per feature name, one value per entity.")
    statuses: list[list[Literal[1, 2, 3, 4]]]
    event_timestamps: list[list[str | None]]


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
        json_schema_extra={**_ONE_SELECTION, "examples": [{
            "feature_service": "fraud_detection_v1",
            "entities": {
                "card_id": [1, 2], "merchant_id": [10, 11], "amount": [42.5, 980.0],
                "event_timestamp": ["2026-01-10T12:00:00Z", "2026-01-11T08:30:00Z"],
                "is_fraud": [False, True],
            },
        }]},
    )

    feature_service: str | None = None
    features: list[str] | None = Field(None, min_length=1)
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


class CatalogFeature(BaseModel):
    name: str
    dtype: str = Field(description="Feast's type: Int64, Float64, String, ...")


class CatalogView(BaseModel):
    name: str
    entities: list[str] = Field(description="Its join keys.")
    features: list[CatalogFeature]
    ttl_seconds: float = Field(description="Rows older than this are OUTSIDE_MAX_AGE (0: never).")
    description: str
    tags: dict[str, str]
    aggregated: bool = Field(description="Windowed aggregates of the transaction stream.")


class CatalogService(BaseModel):
    name: str
    description: str
    features: list[str] = Field(description="Its feature references '<view>:<feature>'.")


class CatalogViews(BaseModel):
    feature_views: list[CatalogView]


class CatalogServices(BaseModel):
    feature_services: list[CatalogService]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="Per dependency: 'ok', or why not.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: e.g. unknown_name, bad_entities.")
    message: str = Field(description="What is wrong, naming the field or value at fault.")
    details: list[dict[str, Any]] | None = Field(
        None, description="422 only: one entry per invalid field (type, loc, msg)."
    )


class ErrorBody(BaseModel):
    """The body of every error response, whatever raised it (our routes or the framework)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "error": {"code": "unknown_name",
                  "message": "unknown feature service 'fraud_v9'; the registry has: "
                             "['fraud_detection_v1']"},
    }]})

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Bad input, named: entity keys, request fields or values; or a body that is not JSON.",
    401: "Missing, invalid or revoked API key.",
    403: "The API key lacks the scope.",
    404: "Unknown name or id (named).",
    413: "Too large: a body over `serve_max_body_bytes` (refused before it is read), more "
         "entities than `serve_max_entities` or more feature references than "
         "`serve_max_features`.",
    422: "The body or a parameter does not match this schema (each field named).",
    429: "Too many dataset jobs running; retry after Retry-After.",
    503: "A dependency (Redis, the SQL database, the key table, the model) is unavailable; "
         "retry after Retry-After.",
}


def error_responses(
    *statuses: int, own: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` in the ErrorBody shape: `statuses` with their default descriptions,
    and a route's `own` statuses and descriptions."""
    chosen = {status: _ERROR_DESCRIPTIONS[status] for status in statuses} | (own or {})
    return {status: {"model": ErrorBody, "description": text}
            for status, text in sorted(chosen.items())}
