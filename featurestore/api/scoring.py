"""`POST /v1/score`: the trained fraud model applied to online features.

The model file (written by `featurestore train`) names the feature service its training export
was built from; scoring reads that service online and encodes the values with the model's own
encoding, so a transaction scores the same online as its row in the export. The file is
reloaded when it changes on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from featurestore.api.http import ApiError, json_response
from featurestore.api.schemas import ScoreRequest, ScoreResponse, error_responses
from featurestore.api.state import ServingState
from featurestore.settings import Settings
from featurestore.training.model import FraudModel, load_model

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ModelHolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._model: FraudModel | None = None
        self._mtime: float | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> FraudModel:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            raise ApiError(
                503, "no_model",
                f"no model at {self.path}; train one with `featurestore train`",
                {"Retry-After": "60"},
            ) from None
        if self._model is None or mtime != self._mtime:
            async with self._lock:
                if self._model is None or mtime != self._mtime:
                    self._model = await asyncio.to_thread(load_model, self.path)
                    self._mtime = mtime
        return self._model


def _check_scored(
    scores: np.ndarray, features: dict[str, list], entities: dict[str, list]
) -> None:
    """Every score a number: the model encodes features as float32, so a value a request makes
    beyond its range (amount 1e308 over a mean of 50) gives no score; that is an error naming
    the entity, its request values and the features out of range, never a null score."""
    unscored = np.flatnonzero(~np.isfinite(scores))
    if not unscored.size:
        return
    row = int(unscored[0])
    out_of_range = sorted(
        name for name, values in features.items()
        if isinstance(values[row], int | float) and not abs(values[row]) <= _FLOAT32_MAX
    )
    request = {name: values[row] for name, values in entities.items()}
    culprits = (
        f"features {out_of_range} are beyond the model's float32 range (±{_FLOAT32_MAX:.3g})"
        if out_of_range
        else f"its features { {name: values[row] for name, values in features.items()} } do "
        "not fit the model's float32 encoding"
    )
    raise ApiError(400, "bad_entities", f"entity {row} ({request}) cannot be scored: {culprits}")


def router(settings: Settings) -> APIRouter:
    routes = APIRouter(tags=["scoring"])
    holder = ModelHolder(settings.model_path)

    @routes.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses=error_responses(
            400, 401, 403, 404, 413, 422, 503,
            own={409: "The model was trained on a feature list, not a feature service."},
        ),
        summary="Fraud scores of transactions, from online features",
    )
    async def score(body: ScoreRequest, request: Request) -> Response:
        model = await holder.get()
        if model.feature_service is None:
            raise ApiError(409, "model_without_service",
                           f"the model at {holder.path} was trained on an export of a feature "
                           "list; online scoring needs an export of a feature service")
        state: ServingState = request.app.state.serving
        plan = state.catalog.plan_for_service(model.feature_service)
        result = await state.lookup(plan, body.entities)
        features = {name: result.column(name) for name in model.features}
        scores = model.score(features)
        _check_scored(scores, features, body.entities)
        scores = scores.tolist()
        if state.capture is not None:
            state.capture_served(model.feature_service, plan, result, scores=scores)
        return json_response({
            "model": {"export_id": model.export_id, "feature_service": model.feature_service},
            "scores": scores,
        })

    return routes
